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

import os
import sys
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

__all__ = ["CAPABILITY_NAMES", "KKT", "Capabilities", "Problem", "all_finite", "check_array",
           "check_design", "check_nonnegative", "check_scalar", "no_kinks", "parallel_kernels",
           "pick_kernel"]


def check_array(value, name, *, ndim=None, shape=None):
    """Return ``value`` as a finite float64 array, or raise ValueError naming ``name``.

    The array is C-contiguous (a strided view, a column of a matrix, is copied): the kernels
    are compiled for that one layout, and another layout would compile them again.
    """
    try:
        arr = np.asarray(value, dtype=np.float64, order="C")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real array, got {type(value).__name__}") from exc
    if ndim is not None and arr.ndim not in np.atleast_1d(ndim):
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf; clean or impute the data first")
    return arr


def check_scalar(value, name, *, lower=None, upper=None):
    """Return ``value`` as a finite float in the open interval ``(lower, upper)``.

    Raises a ValueError naming ``name`` for a non-number (a string, an array), a NaN or
    Inf, or a value outside the interval (either bound may be None).
    """
    if isinstance(value, (str, bytes, bool)) or np.ndim(value) != 0:
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real number, got {value!r}") from exc
    interval = f"({'-inf' if lower is None else lower}, {'inf' if upper is None else upper})"
    if not (np.isfinite(out) and (lower is None or out > lower)
            and (upper is None or out < upper)):
        raise ValueError(f"{name} must be finite and in {interval}, got {value!r}")
    return out


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


_FORK = {"omp_inherited": False}


def _after_fork_in_child():
    """Record whether this forked child inherited numba's initialized OpenMP layer."""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is None:
        return
    try:
        _FORK["omp_inherited"] = parallel.threading_layer() == "omp"
    except ValueError:          # no parallel kernel ran before the fork
        pass


os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_kernels():
    """Whether ``prange`` kernels may run in this process.

    After a ``prange`` kernel ran on numba's OpenMP layer (GNU libgomp, the layer numba
    picks here: TBB is not installed, and ``workqueue`` is not threadsafe, per numba's
    "Threading Layers" guide), a ``fork`` child that launches one is killed by libgomp
    ("fork() called from a process already using GNU OpenMP"), which hangs a ``fork``
    multiprocessing pool. Such
    a child runs the serial twins instead (the same code, ``prange`` as ``range``); with
    ``spawn`` or ``forkserver`` pools, or threads, the parallel kernels run as usual.
    """
    return not _FORK["omp_inherited"]


def pick_kernel(module, name, parallel):
    """``module.<name>_batched`` (prange) when ``parallel`` and allowed, else ``_rows``."""
    return getattr(module, name + ("_batched" if parallel and parallel_kernels() else "_rows"))


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

    @cached_property
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
    caller's structure; the optional dict joins ``Solution.info``; its ``failure``, a
    sentence saying why ``x`` is no minimizer and what to do, makes the solve unconverged
    and is the warning's text) and :meth:`offers`, the
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

    def in_domain(self, theta):
        """Whether ``theta`` lies in the problem's parameter domain (bool).

        The domain is what :meth:`check_theta` accepts (a weight ``lam >= 0``, ...);
        :class:`~bilevel.strategies.FiniteDifference` asks it before stepping, and takes a
        one-sided stencil at the domain's edge. Override only for a cheaper test.
        """
        try:
            self.check_theta(theta)
        except ValueError:
            return False
        return True

    def check_batch(self, parts):
        """Validate a batch: theta's parts stacked along a first axis ``B``; return ``B``.

        The one validation path of batched solves (:func:`bilevel.api.solve_batch`, the
        torch layer): every row passes :meth:`check_theta`, and a bad row raises the
        ValueError a single solve would, prefixed with ``batch row b``. A problem may
        override it with a vectorized equivalent for large batches.
        """
        size = _batch_size(parts)
        self._check_rows(parts, range(size))
        return size

    def check_batch_finite(self, parts):
        """:meth:`check_batch` for a :meth:`check_theta` that tests only shapes and finiteness.

        Row 0 passes :meth:`check_theta` (the shapes, which all rows share), and the first
        row with a NaN or Inf, if any, raises its named error: vectorized, for the large
        batches of the layers. A problem opts in with ``check_batch = Problem.check_batch_finite``.
        """
        size = _batch_size(parts)
        shapes = tuple(p.shape[1:] for p in parts)
        if shapes in self._valid_row_shapes and all(map(all_finite, parts)):
            return size                 # row 0's shapes passed check_theta before
        bad = np.zeros(size, dtype=bool)
        for p in parts:
            bad |= ~np.isfinite(np.reshape(p, (size, -1))).all(axis=1)
        self._check_rows(parts, [0, *np.flatnonzero(bad)[:1]])
        self._valid_row_shapes.add(shapes)
        return size

    @cached_property
    def _valid_row_shapes(self):
        """Row shapes of batches that passed :meth:`check_batch_finite` (what a layer reuses)."""
        return set()

    def _check_rows(self, parts, rows):
        """:meth:`check_theta` on the given ``rows`` of a batch; the error names the row."""
        template = tuple(parts) if len(parts) > 1 else parts[0]
        for b in rows:
            try:
                self.check_theta(like_structure(tuple(p[b] for p in parts), template))
            except ValueError as exc:
                raise ValueError(f"batch row {b}: {exc}") from exc

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
        extra = (extra or [{}])[0]
        failure = extra.get("failure")        # a diagnosis: the point is not a minimizer
        converged = bool(residual <= self.tol) and failure is None
        if failure is not None:
            warnings.warn(f"{type(self).__name__}.solve: {failure}", ConvergenceWarning,
                          stacklevel=2)
        elif not converged:
            warnings.warn(
                f"{type(self).__name__}.solve stopped at optimality residual {residual:.2e} "
                f"> tol={self.tol:.0e} after {n_iter} iterations; raise max_iter, loosen tol, "
                "or check the data scaling", ConvergenceWarning, stacklevel=2)
        return Solution(x=x, theta=theta, n_iter=int(n_iter),
                        converged=converged,
                        info={"residual": float(residual), "time": elapsed, **extra})

    def __repr__(self):
        return f"{type(self).__name__}()"


def no_kinks(rows):
    """Return the margins of ``rows`` batch rows whose solution map has no kink: ``inf`` each.

    By ``fill``: ``np.full``'s Python-level cast costs a few microseconds inside a layer's
    call.
    """
    margins = np.empty(rows)
    margins.fill(np.inf)
    return margins


def all_finite(array):
    """Whether every entry of ``array`` is finite: ``np.isfinite(array).all()`` unreduced.

    Inside a torch layer's call a NumPy reduction's set-up costs several microseconds, more
    than the whole test on a small batch; looking for a 0 (False) in the bytes of the
    boolean array does not reduce.
    """
    return 0 not in np.isfinite(array).tobytes()


def _batch_size(parts):
    """Return the common first-axis length ``B`` of a batch's parts, or raise ValueError."""
    sizes = {shape[0] if shape else None for shape in map(np.shape, parts)}
    if not parts or None in sizes or len(sizes) != 1:
        raise ValueError("theta's parts must be stacked along a common first batch axis, "
                         f"got shapes {[np.shape(p) for p in parts]}")
    return sizes.pop()


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
