"""The problem interface: a lower-level energy and the capabilities strategies may use.

A problem solves ``x*(theta) = argmin_x E(x, theta)`` and offers torch-side maps, each a
capability named in ``capabilities``:

- ``optimality(x, theta)``: a residual ``F`` with ``F(x*, theta) = 0`` (here ``grad_x E``);
- ``step(x, theta)``: a contraction ``T`` with fixed point ``x*`` (a gradient step);
- ``energy(x, theta)``: ``E`` itself (value-function gradients, user energies);
- ``analytic_vjp(solution, v)``: the exact structured ``(dx*/dtheta)^T v``;
- ``constraints``: ``x* = argmin f`` s.t. ``h = 0``, ``g <= 0``, through the maps
  ``objective(x, theta)`` (``f``, a scalar), ``eq(x, theta)`` and ``ineq(x, theta)`` (1-D
  tensors ``h`` and ``g``, or None); ``Solution.info`` carries the multipliers ``nu`` (of
  ``h``) and ``lam`` (of ``g``, ``>= 0``) when the solver has them, and an attribute
  ``constraints_affine = True`` declares ``h``, ``g`` affine in ``x`` with Jacobians
  independent of theta (see :mod:`bilevel.problems.constrained`).

Optional NumPy fast paths that strategies use when present: ``hessian(solution)`` (dense
``d F / d x`` at ``x*``) and ``optimality_theta_vjp(solution, u)`` (``(dF/dtheta)^T u``).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from bilevel._types import ConvergenceWarning, Solution, like_structure

__all__ = ["Problem", "check_array", "check_design", "check_nonnegative"]


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


class Problem:
    """Base class of lower-level problems.

    Subclasses set ``name`` and ``capabilities``, implement ``check_theta`` (validation,
    returning a tuple of float64 arrays), ``init`` (default starting point) and
    ``_solve(theta, x0) -> (x, n_iter, residual[, info])`` (theta validated, in the
    caller's structure; the optional dict joins ``Solution.info``), and the torch maps they
    declare. Torch maps take ``theta`` in the caller's structure too: a tensor, or a tuple
    of tensors.
    ``tol`` is the tolerance on ``residual`` (the inf-norm of the optimality residual).
    """

    name = "problem"
    capabilities = frozenset()
    tol = 1e-10

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
