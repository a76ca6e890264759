r"""Robust pooling: a robust mean of the last axis as an argmin.

.. math:: y^*(x) = \arg\min_y \sum_{i=1}^n \phi(y - x_i; \alpha)

over the last axis of ``x`` (every leading axis is a separate pooling problem). Penalties:
``quadratic`` :math:`z^2/2` (the mean), ``pseudo_huber``
:math:`\alpha^2(\sqrt{1 + (z/\alpha)^2} - 1)`, ``huber`` (:math:`z^2/2` inside
:math:`|z| \le \alpha`, :math:`\alpha(|z| - \alpha/2)` outside), ``welsch``
:math:`1 - \exp(-z^2/(2\alpha^2))` and ``truncated_quadratic`` :math:`\min(z^2, \alpha^2)/2`
(the definitions of the Deep Declarative Networks reference code).

``y*`` solves ``F(y, x) = sum_i phi'(y - x_i) = 0``; by the implicit function theorem
(Gould et al., Proposition 4.4)

.. math:: \frac{\partial y^*}{\partial x_i}
          = \frac{\phi''(y^* - x_i)}{\sum_j \phi''(y^* - x_j)},

a weighted mean: ``O(n)`` per pooled value.
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import Batch, BatchSolution, Optimality
from bilevel.problems.base import Capabilities, Problem, check_array

__all__ = ["RobustPooling"]

PENALTY_NAMES = ("quadratic", "pseudo_huber", "huber", "welsch", "truncated_quadratic")
# Batches with fewer entries run serially (see bilevel.solvers.serial).
_PARALLEL_MIN = 200_000


def _kernel(name, X):
    from bilevel.solvers import pooling

    return getattr(pooling, name + ("_batched" if X.size >= _PARALLEL_MIN else "_rows"))


@register_problem
class RobustPooling(Problem):
    r"""Robust pooling ``y* = argmin_y sum_i phi(y - x_i; alpha)`` over the last axis; theta ``x``.

    Parameters
    ----------
    penalty : {"pseudo_huber", "huber", "welsch", "truncated_quadratic", "quadratic"}
        The penalty :math:`\phi` (module docstring).
    alpha : float
        Its scale, > 0: roughly the largest residual treated as an inlier.
    tol : float
        Tolerance on the relative optimality residual ``min(|F| / sum_i |phi'(y - x_i)|,
        |F / F'| / (|y| + alpha))`` (:mod:`bilevel.solvers.pooling`).
    max_iter : int
        Newton iterations per pooled value.

    Notes
    -----
    ``x`` has shape ``(..., n)``, ``n >= 1``; ``y*`` has shape ``x.shape[:-1]``.
    Solvers (:mod:`bilevel.solvers.pooling`, numba, batched over the leading axes):
    safeguarded Newton in ``[min x, max x]`` (pseudo-Huber, Huber: unique solution; for
    Huber, when the minimizers form an interval, its midpoint); for ``welsch``, which is
    non-convex, a deterministic descent **started at the median** of each row (or at
    ``init``) with Newton steps where the curvature is positive and trust-region steps of
    length ``alpha`` elsewhere, then bracketed Newton/bisection: the result is a local
    minimizer, the one the median's basin leads to, not necessarily the global one; for
    ``truncated_quadratic`` the exact global minimizer, by enumerating the intervals on
    which the inlier set is constant. All are exact to round-off.

    Capabilities: ``analytic_vjp`` (the weighted mean above), ``optimality`` (``F`` in
    torch, so that :class:`~bilevel.strategies.Implicit` applies and cross-checks it) and
    ``energy``. :class:`bilevel.torch.Layer` pools batches through the numba kernels with
    the ``analytic`` strategy.

    Huber and the truncated quadratic are not twice differentiable at ``|y - x_i| = alpha``:
    there the VJP is one one-sided derivative, and the layer warns
    (:class:`~bilevel.DegeneracyWarning`) when a residual is within ``1e-6 alpha`` of a
    kink (or, truncated quadratic, when two local minima tie).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.RobustPooling("welsch", alpha=1.0)
    >>> x = np.array([0.0, 0.1, -0.1, 0.2, 10.0])       # one outlier
    >>> round(float(prob.solve(x).x), 6), round(float(x.mean()), 6)
    (0.05, 2.04)

    References
    ----------
    S. Gould, R. Hartley, D. Campbell, "Deep Declarative Networks", IEEE TPAMI 2021,
    section 5.1 and Proposition 4.4.
    """

    name = "robust_pooling"

    def __init__(self, penalty="pseudo_huber", alpha=1.0, tol=1e-10, max_iter=100):
        if penalty not in PENALTY_NAMES:
            raise ValueError(f"penalty must be one of {', '.join(PENALTY_NAMES)}, "
                             f"got {penalty!r}")
        try:
            alpha = float(alpha)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}") from exc
        if not (np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be finite and > 0, got {alpha}; it is the scale "
                             "of the inlier residuals")
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        self.penalty, self.alpha = penalty, alpha
        self.tol, self.max_iter = float(tol), int(max_iter)
        self._code = PENALTY_NAMES.index(penalty)

    def __repr__(self):
        return f"RobustPooling(penalty={self.penalty!r}, alpha={self.alpha})"

    def offers(self):
        """Return the weighted-mean closed form, ``F = sum phi'`` as optimality, the energy."""
        return Capabilities(analytic_vjp=self.analytic_vjp,
                            optimality=Optimality(self.optimality), energy=self.energy,
                            batch=Batch(theta_ndim=(1,), solve=self._solve_batch,
                                        analytic_vjp=self._vjp_batch))

    @classmethod
    def examples(cls):
        """Rows with an outlier, residuals away from the kinks: convex and non-convex."""
        x = np.array([[0.0, 0.4, 3.0], [1.0, -0.5, 0.2]])
        return [("robust_pooling-pseudo_huber", cls("pseudo_huber", 1.0), x),
                ("robust_pooling-welsch", cls("welsch", 1.0), x)]

    def check_theta(self, theta):
        """``x`` of shape ``(..., n)`` with ``n >= 1``, finite."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError("RobustPooling takes theta = x, one array (pooled over its "
                                 "last axis)")
            theta = theta[0]
        x = check_array(theta, "x")
        if x.ndim < 1 or x.shape[-1] < 1:
            raise ValueError(f"x must have at least one dimension with >= 1 entries (the "
                             f"pooled axis is the last), got shape {x.shape}")
        return (x,)

    def init(self, parts):
        """Return NaN starts, which the solver reads as each row's median (or mean).

        Welsch starts at the median; the other penalties' minimizer does not depend on
        the start, and their Newton iteration starts at the mean.
        """
        return np.full(parts[0].shape[:-1], np.nan)

    def _solve(self, theta, x0):
        x = theta[0] if isinstance(theta, tuple) else theta
        X = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        Y0 = np.ascontiguousarray(np.asarray(x0, dtype=np.float64).reshape(-1))
        Y, iters, res = _kernel("pool_solve", X)(X, self._code, self.alpha, Y0, self.max_iter)
        return Y.reshape(x.shape[:-1]), int(iters.max()), float(res.max()), {}

    # torch maps ---------------------------------------------------------------------
    def _phi(self, z):
        a = self.alpha
        if self.penalty == "quadratic":
            return 0.5 * z * z
        if self.penalty == "pseudo_huber":
            return a * a * (torch.sqrt(1.0 + (z / a) ** 2) - 1.0)
        if self.penalty == "huber":
            return torch.where(z.abs() <= a, 0.5 * z * z, a * (z.abs() - 0.5 * a))
        if self.penalty == "welsch":
            return 1.0 - torch.exp(-0.5 * (z / a) ** 2)
        return 0.5 * torch.clamp(z * z, max=a * a)

    def _dphi(self, z):
        a = self.alpha
        if self.penalty == "quadratic":
            return z
        if self.penalty == "pseudo_huber":
            return z / torch.sqrt(1.0 + (z / a) ** 2)
        if self.penalty == "huber":
            return torch.clamp(z, -a, a)
        if self.penalty == "welsch":
            return z / (a * a) * torch.exp(-0.5 * (z / a) ** 2)
        return torch.where(z.abs() < a, z, torch.zeros_like(z))

    def energy(self, y, theta):
        """``sum phi(y - x_i)`` over the last axis, summed over the leading ones."""
        x = theta[0] if isinstance(theta, tuple) else theta
        return torch.sum(self._phi(y[..., None] - x))

    def optimality(self, y, theta):
        """``F(y, x) = sum_i phi'(y - x_i)`` over the last axis (shape of ``y``)."""
        x = theta[0] if isinstance(theta, tuple) else theta
        return torch.sum(self._dphi(y[..., None] - x), dim=-1)

    # structure ------------------------------------------------------------------------
    def analytic_vjp(self, solution, v):
        """``v_r phi''(y_r - x_ri) / sum_j phi''(y_r - x_rj)`` for every pooled value ``r``."""
        x = solution.theta[0] if isinstance(solution.theta, tuple) else solution.theta
        G, _ = self._vjp(np.asarray(x, dtype=np.float64), solution.x, v)
        return (G,)

    def _vjp(self, x, y, v):
        X = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        Y = np.ascontiguousarray(np.asarray(y, dtype=np.float64).reshape(-1))
        V = np.ascontiguousarray(np.asarray(v, dtype=np.float64).reshape(-1))
        if V.shape != Y.shape:
            raise ValueError(f"v must have the shape of y* {np.shape(y)}, got {np.shape(v)}")
        G, margins = _kernel("pool_vjp", X)(X, self._code, self.alpha, Y, V)
        return G.reshape(x.shape), margins

    # batched kernels for bl.torch.Layer ------------------------------------------------
    def _solve_batch(self, X):
        """Pool every row of ``X`` (b, n), starting at the row medians: ``Y`` (b,)."""
        import warnings

        from bilevel._types import ConvergenceWarning

        Y0 = np.full(X.shape[0], np.nan)         # the kernel starts at each row's median
        Y, _, res = _kernel("pool_solve", X)(X, self._code, self.alpha, Y0, self.max_iter)
        if np.any(res > self.tol):
            warnings.warn(f"RobustPooling: {int(np.sum(res > self.tol))} of {X.shape[0]} rows "
                          f"stopped at relative residual up to {res.max():.1e} > "
                          f"tol={self.tol:.0e}; raise max_iter", ConvergenceWarning,
                          stacklevel=4)
        return BatchSolution(x=Y, parts=(X,))

    def _vjp_batch(self, batch, V):
        """Exact VJPs of every row: ``((G (b, n),), margins (b,))``."""
        X = batch.parts[0]
        G, margins = _kernel("pool_vjp", X)(X, self._code, self.alpha, batch.x, V)
        return (G,), margins
