"""The problem interface: a lower-level energy and the typed capabilities strategies use.

A problem solves ``x*(theta) = argmin_x E(x, theta)`` and declares, in :meth:`Problem.offers`,
what it offers strategies as one :class:`Capabilities` value, one typed field per capability:

- ``optimality``: an :class:`~bilevel.Optimality` residual ``F(x*, theta) = 0`` (with
  optional dense-Hessian fast paths), for ``implicit``;
- ``step``: a :class:`~bilevel.StepMap`, the solver's fixed-point map with its state, start
  and read-out, for ``unroll`` and ``fixed_point``;
- ``energy``: ``(x, theta) -> E`` in torch, differentiable in theta at ``x*`` (the
  envelope theorem's value gradient, user energies);
- ``constraints``: a :class:`~bilevel.problems.kkt.KKT` description (objective,
  equalities, inequalities, affinity, the KKT system), for ``implicit``;
- ``manifold``, ``mirror``, ``dual``: ``solution -> Manifold / Mirror / Dual``, for
  ``partial_smoothness``, ``bregman`` and the value strategy ``value_function``;
- ``analytic_vjp``: ``(solution, v) -> (dx*/dtheta)^T v``, a tuple over theta, for
  ``analytic``;
- ``straight_through``: the problem opts in to the identity-backward baseline;
- ``batch``: a :class:`~bilevel.Batch`, instance dimensions and batched kernels, for
  :class:`bilevel.torch.Layer`.

Strategies read only these values: nothing probes a problem by attribute name.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Set
from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np
import torch

from bilevel._registry import register_base
from bilevel._types import (
    Batch,
    ConvergenceWarning,
    Optimality,
    Solution,
    StepMap,
    like_structure,
)
from bilevel.problems.kkt import KKT

__all__ = ["CAPABILITY_NAMES", "KKT", "Capabilities", "Problem", "check_array", "check_design",
           "check_nonnegative"]


def check_array(value, name, *, ndim=None, shape=None):
    """Return ``value`` as a finite float64 array, or raise ValueError naming ``name``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real array, got {type(value).__name__}") from exc
    if ndim is not None and arr.ndim not in np.atleast_1d(ndim):
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf; clean or impute the data first")
    return arr


def check_nonnegative(value, name, *, shapes):
    """Return a finite, non-negative hyperparameter of one of the allowed ``shapes``."""
    arr = check_array(value, name)
    if arr.shape not in shapes:
        allowed = " or ".join(str(s) for s in shapes)
        raise ValueError(f"{name} must have shape {allowed}, got {arr.shape}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got min {arr.min():.3g}; "
                         "optimize log(lam) (log_scale=True) to keep it positive")
    return arr


_TYPES = {"optimality": Optimality, "step": StepMap, "constraints": KKT, "batch": Batch}


@dataclass(frozen=True)
class Capabilities(Set):
    """What a problem instance offers strategies: one typed value per capability.

    Each field is None (not offered) or a value of its declared type (module docstring);
    ``straight_through`` is a flag. As a set it holds the offered capabilities' names
    (``"manifold" in caps``, ``sorted(caps)``, ``caps <= {...}``); ``names`` is that set as a
    frozenset. ``why_not`` maps capabilities the instance does not offer to the mathematical
    reason (``"optimality": "the l1 penalty is not smooth"``), which ``bilevel list`` and
    docs/matrix.md print in the cells of the strategies that need them.
    """

    optimality: Optimality | None = None
    step: StepMap | None = None
    energy: Callable | None = None
    constraints: KKT | None = None
    manifold: Callable | None = None
    mirror: Callable | None = None
    dual: Callable | None = None
    analytic_vjp: Callable | None = None
    straight_through: bool = False
    batch: Batch | None = None
    why_not: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name in ("straight_through", "why_not"):
                continue
            expected = _TYPES.get(f.name)
            if expected is not None and not isinstance(value, expected):
                raise TypeError(f"capability {f.name!r} must be a {expected.__name__}, "
                                f"got {type(value).__name__}")
            if expected is None and not callable(value):
                raise TypeError(f"capability {f.name!r} must be callable, got {value!r}")
        if not isinstance(self.straight_through, bool):
            raise TypeError("capability 'straight_through' is a bool")
        unknown = set(self.why_not) - set(CAPABILITY_NAMES)
        offered = set(self.why_not) & self.names
        if unknown or offered:
            raise ValueError(f"why_not explains capabilities not offered; got unknown "
                             f"{sorted(unknown)} and offered {sorted(offered)}")

    @property
    def names(self):
        """The offered capabilities' names (a frozenset)."""
        return frozenset(name for name in CAPABILITY_NAMES
                         if getattr(self, name) not in (None, False))

    def reason(self, name):
        """Why capability ``name`` is not offered (its ``why_not`` entry), or None."""
        return self.why_not.get(name)

    @classmethod
    def _from_iterable(cls, names):
        return frozenset(names)

    def __contains__(self, name):
        return name in self.names

    def __iter__(self):
        return iter(sorted(self.names))

    def __len__(self):
        return len(self.names)


CAPABILITY_NAMES = ("optimality", "step", "energy", "constraints", "manifold", "mirror",
                    "dual", "analytic_vjp", "straight_through", "batch")


@register_base("problem")
class Problem:
    """Base class of lower-level problems.

    Subclasses set ``name``, implement ``check_theta`` (validation, returning a tuple of
    float64 arrays), ``init`` (default starting point),
    ``_solve(theta, x0) -> (x, n_iter, residual[, info])`` (theta validated, in the
    caller's structure; the optional dict joins ``Solution.info``) and :meth:`offers`, the
    typed capabilities of the instance. Torch maps take ``theta`` in the caller's structure:
    a tensor, or a tuple of tensors. ``tol`` is the tolerance on ``residual``.
    """

    name = "problem"
    tol = 1e-10

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "capabilities" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: declare capabilities by overriding offers() "
                            "and returning a bilevel.problems.Capabilities of typed values "
                            "(see docs/extending.md), not a 'capabilities' attribute")

    def offers(self):
        """Return the :class:`Capabilities` of this instance (override; default: none)."""
        return Capabilities()

    @cached_property
    def capabilities(self):
        """The :class:`Capabilities` :meth:`offers` returns, computed once per instance."""
        caps = self.offers()
        if not isinstance(caps, Capabilities):
            raise TypeError(f"{type(self).__name__}.offers() must return a Capabilities, got "
                            f"{type(caps).__name__}")
        return caps

    @classmethod
    def examples(cls):
        """Return representative small instances: ``[(label, problem, theta), ...]``.

        One per variant whose capabilities differ (``bilevel list``, docs/matrix.md and the
        contract tests walk them). Default: none.
        """
        return []

    def check_theta(self, theta):
        """Validate theta; return it as a tuple of float64 arrays."""
        raise NotImplementedError

    def init(self, parts):
        """Default starting point for ``parts`` (a tuple of theta arrays)."""
        raise NotImplementedError

    def _solve(self, theta, x0):
        raise NotImplementedError

    def solve(self, theta, init=None):
        """Solve the lower-level problem at ``theta``, starting from ``init``.

        Returns
        -------
        Solution
            ``converged`` is False, with a :class:`ConvergenceWarning`, when the optimality
            residual is above ``tol``.
        """
        parts = self.check_theta(theta)
        theta = like_structure(parts, theta)
        x0 = self.init(parts)
        if init is not None:
            x0 = check_array(init, "init", shape=x0.shape).copy()
        start = time.perf_counter()
        with torch.enable_grad():       # solvers may differentiate torch maps, in any context
            x, n_iter, residual, *extra = self._solve(theta, x0)
        elapsed = time.perf_counter() - start
        converged = bool(residual <= self.tol)
        if not converged:
            warnings.warn(
                f"{type(self).__name__}.solve stopped at optimality residual {residual:.2e} "
                f"> tol={self.tol:.0e} after {n_iter} iterations; raise max_iter, loosen tol, "
                "or check the data scaling", ConvergenceWarning, stacklevel=2)
        return Solution(x=x, theta=theta, n_iter=int(n_iter),
                        converged=converged,
                        info={"residual": float(residual), "time": elapsed, **(extra or [{}])[0]})

    def __repr__(self):
        return f"{type(self).__name__}()"


def check_design(X, y):
    """Validate a design matrix ``X`` (n, p) and targets ``y`` (n,); return C-contiguous copies."""
    X = check_array(X, "X", ndim=2)
    y = check_array(y, "y", ndim=1)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} entries; "
                         "they must describe the same samples")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must have at least one row and one column, got shape {X.shape}")
    return np.ascontiguousarray(X), np.ascontiguousarray(y)
