"""Registries of strategies and problems by name, and the capability check between them."""

from __future__ import annotations

from bilevel._types import NotApplicable

__all__ = [
    "PREFERENCE",
    "PROBLEMS",
    "STRATEGIES",
    "applicable_strategies",
    "check_applicable",
    "get_strategy",
    "register_problem",
    "register_strategy",
    "requirement_sets",
    "strategy_names",
]

STRATEGIES: dict[str, type] = {}
PROBLEMS: dict[str, type] = {}

# Order in which ``strategy=None`` picks: exact and cheap first, the reference last.
PREFERENCE = ("analytic", "partial_smoothness", "implicit", "fixed_point", "unroll",
              "finite_difference")


def register_strategy(cls):
    """Class decorator: make a strategy available by its ``name``."""
    STRATEGIES[cls.name] = cls
    return cls


def register_problem(cls):
    """Class decorator: make a problem class available by its ``name``."""
    PROBLEMS[cls.name] = cls
    return cls


def _capabilities(problem):
    return frozenset(getattr(problem, "capabilities", ()))


def strategy_names():
    """Return the registered strategy names, in :data:`PREFERENCE` order, then alphabetically."""
    return [n for n in PREFERENCE if n in STRATEGIES] + sorted(
        n for n in STRATEGIES if n not in PREFERENCE)


def requirement_sets(strategy):
    """Return the alternative capability sets of ``strategy`` (class or object): one suffices.

    ``requires_any`` (an optional class attribute, a tuple of frozensets) when the strategy
    has it, else the single set ``requires``.
    """
    return tuple(getattr(strategy, "requires_any", None) or (strategy.requires,))


def _meets(strategy, caps):
    return any(req <= caps for req in requirement_sets(strategy))


def applicable_strategies(problem):
    """Names of registered strategies whose requirements ``problem`` meets, best first."""
    caps = _capabilities(problem)
    return [n for n in strategy_names() if _meets(STRATEGIES[n], caps)]


def check_applicable(strategy, problem):
    """Raise :class:`NotApplicable` naming what is missing and what would work."""
    caps = _capabilities(problem)
    if not _meets(strategy, caps):
        missing = strategy.requires - caps
        alternatives = [req - caps for req in requirement_sets(strategy)
                        if req != strategy.requires]
        extra = "".join(f" (or {', '.join(sorted(alt))})" for alt in alternatives)
        pname = getattr(problem, "name", type(problem).__name__)
        works = applicable_strategies(problem)
        raise NotApplicable(
            f"strategy {strategy.name!r} needs the problem capability "
            f"{', '.join(sorted(missing))}{extra}, which {pname!r} does not offer "
            f"(it offers: {', '.join(sorted(caps)) or 'nothing'}). "
            f"Strategies that apply: {', '.join(works) or 'none'}.", missing=sorted(missing))


def get_strategy(spec, problem=None):
    """Resolve ``spec`` (a strategy object, a registered name, or None) to a strategy object.

    ``None`` picks the first applicable strategy in :data:`PREFERENCE` for ``problem``.
    """
    if spec is None:
        if problem is None:
            raise ValueError("strategy=None needs a problem to choose for")
        names = applicable_strategies(problem)
        return STRATEGIES[names[0]]()
    if isinstance(spec, str):
        if spec not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {spec!r}; registered: {', '.join(sorted(STRATEGIES))}")
        return STRATEGIES[spec]()
    if not (hasattr(spec, "vjp") and hasattr(spec, "requires")):
        raise TypeError(
            f"strategy must be a registered name, a strategy object or None, got {spec!r}")
    return spec
