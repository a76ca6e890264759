"""Registries of strategies and problems by name, and the capability check between them."""

from __future__ import annotations

from bilevel._types import NotApplicable

__all__ = [
    "PREFERENCE",
    "PROBLEMS",
    "STRATEGIES",
    "VALUE_PREFERENCE",
    "VALUE_STRATEGIES",
    "applicable_strategies",
    "check_applicable",
    "check_problem",
    "get_strategy",
    "problem_variants",
    "register_base",
    "register_problem",
    "register_strategy",
    "register_value_strategy",
    "requirement_sets",
    "strategy_names",
    "why_not_applicable",
]

STRATEGIES: dict[str, type] = {}
VALUE_STRATEGIES: dict[str, type] = {}
PROBLEMS: dict[str, type] = {}
# The base class of each kind of registered object, declared by the base classes themselves.
BASES: dict[str, type] = {}

# Order in which ``strategy=None`` picks: exact and cheap first, the reference last.
PREFERENCE = ("analytic", "partial_smoothness", "implicit", "fixed_point", "unroll",
              "finite_difference")
VALUE_PREFERENCE = ("value_function", "envelope", "finite_difference")


def register_base(kind):
    """Class decorator: declare the base class of a kind ("problem", "strategy", "value")."""
    def register(cls):
        BASES[kind] = cls
        return cls
    return register


def register_strategy(cls):
    """Class decorator: make a VJP strategy available by its ``name``."""
    STRATEGIES[cls.name] = cls
    return cls


def register_value_strategy(cls):
    """Class decorator: make a value strategy (:func:`bilevel.value_gradient`) available."""
    VALUE_STRATEGIES[cls.name] = cls
    return cls


def register_problem(cls):
    """Class decorator: make a problem class available by its ``name``."""
    PROBLEMS[cls.name] = cls
    return cls


def problem_variants():
    """``[(label, problem), ...]``: one instance per registered problem and capability set.

    From each class's :meth:`~bilevel.problems.Problem.examples`; the label is the problem's
    name when its examples share one capability set, else each example's label.
    """
    out = []
    for name, cls in PROBLEMS.items():
        seen = {}
        for label, problem, _ in cls.examples():
            seen.setdefault(problem.capabilities.names, (label, problem))
        if len(seen) == 1:
            out.append((name, next(iter(seen.values()))[1]))
        else:
            out.extend(seen.values())
    return out


def strategy_names(registry=None):
    """Return the registered names (VJP strategies by default), in preference order."""
    registry = STRATEGIES if registry is None else registry
    order = VALUE_PREFERENCE if registry is VALUE_STRATEGIES else PREFERENCE
    return [n for n in order if n in registry] + sorted(n for n in registry if n not in order)


def requirement_sets(strategy):
    """Return the alternative capability sets of ``strategy`` (class or object): one suffices.

    ``requires`` is a frozenset of capability names (all needed) or a tuple of such sets
    (alternatives: implicit needs ``optimality`` or ``constraints``).
    """
    req = strategy.requires
    return (req,) if isinstance(req, frozenset) else tuple(req)


def _meets(strategy, names):
    return any(req <= names for req in requirement_sets(strategy))


def check_problem(problem):
    """Raise TypeError unless ``problem`` is a :class:`bilevel.problems.Problem`."""
    if not isinstance(problem, BASES["problem"]):
        raise TypeError(f"problem must be a bilevel problem (a bilevel.problems.Problem), "
                        f"got {type(problem).__name__}")


def applicable_strategies(problem, registry=None):
    """Names of registered strategies whose requirements ``problem`` meets, best first."""
    check_problem(problem)
    registry = STRATEGIES if registry is None else registry
    names = problem.capabilities.names
    return [n for n in strategy_names(registry) if _meets(registry[n], names)]


def why_not_applicable(strategy, problem):
    """Why ``strategy`` does not apply to ``problem``: the problem's reasons, or None.

    The missing capabilities of the strategy's first requirement set, each with the reason
    the problem gives for not offering it (``Capabilities.why_not``); None when the strategy
    applies or a reason is missing.
    """
    caps = problem.capabilities
    if _meets(strategy, caps.names):
        return None
    missing = sorted(requirement_sets(strategy)[0] - caps.names)
    reasons = [caps.reason(name) for name in missing]
    if any(r is None for r in reasons):
        return None
    return "; ".join(f"no {name}: {r}" for name, r in zip(missing, reasons))


def check_applicable(strategy, problem):
    """Raise :class:`NotApplicable` naming what is missing and what would work."""
    check_problem(problem)
    names = problem.capabilities.names
    if _meets(strategy, names):
        return
    first, *others = [req - names for req in requirement_sets(strategy)]
    missing = sorted(first)
    needs = ", ".join(missing) + "".join(f" (or {', '.join(sorted(alt))})" for alt in others)
    registry = (VALUE_STRATEGIES if isinstance(strategy, tuple(VALUE_STRATEGIES.values()))
                else STRATEGIES)
    works = applicable_strategies(problem, registry)
    why = why_not_applicable(strategy, problem)
    raise NotApplicable(
        f"strategy {strategy.name!r} needs the problem capability {needs}, which "
        f"{problem.name!r} does not offer{f' ({why})' if why else ''} (it offers: "
        f"{', '.join(sorted(names)) or 'nothing'}). "
        f"Strategies that apply: {', '.join(works) or 'none'}.", missing=missing)


def get_strategy(spec, problem=None, registry=None):
    """Resolve ``spec`` (a strategy object, a registered name, or None) to a strategy object.

    ``None`` picks the first applicable strategy in preference order for ``problem``.
    """
    registry = STRATEGIES if registry is None else registry
    value = registry is VALUE_STRATEGIES
    if spec is None:
        if problem is None:
            raise ValueError("strategy=None needs a problem to choose for")
        names = applicable_strategies(problem, registry)
        if not names:
            needs = "; ".join(f"{n} needs " + " or ".join(
                ", ".join(sorted(req)) for req in requirement_sets(registry[n]))
                for n in strategy_names(registry))
            raise NotApplicable(f"no {'value ' if value else ''}strategy applies to "
                                f"{problem.name!r} (it offers: "
                                f"{', '.join(problem.capabilities) or 'nothing'}): {needs}")
        return registry[names[0]]()
    if isinstance(spec, str):
        if spec not in registry:
            other = STRATEGIES if value else VALUE_STRATEGIES
            hint = ""
            if spec in other:
                hint = (" (it is a VJP strategy of x*: use bl.vjp or bl.hypergradient)"
                        if value else " (it is a value strategy: use bl.value_gradient, or "
                        "bl.hypergradient with the loss bl.losses.OptimalValue())")
            kind = "value strategy" if value else "strategy"
            raise ValueError(f"unknown {kind} {spec!r}{hint}; registered: "
                             f"{', '.join(sorted(registry))}")
        return registry[spec]()
    expected, other = (BASES["value"], BASES["strategy"]) if value else \
        (BASES["strategy"], BASES["value"])
    if not isinstance(spec, expected):
        if isinstance(spec, other):
            raise ValueError(f"strategy {spec.name!r} is a "
                             f"{'VJP' if value else 'value'} strategy; here a "
                             f"{'value' if value else 'VJP'} strategy is needed")
        if isinstance(spec, type) and issubclass(spec, (expected, other)):
            raise TypeError(f"strategy must be a strategy object, got the class "
                            f"{spec.__name__}: instantiate it, {spec.__name__}(), or pass "
                            "its name")
        raise TypeError(f"strategy must be a registered name, a strategy object or None, "
                        f"got {spec!r}")
    return spec
