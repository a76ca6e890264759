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
from bilevel._types import Batch, BatchSolution, Optimality, StepMap
from bilevel.problems.base import Capabilities, Problem, check_array, pick_kernel

__all__ = ["RobustPooling"]

PENALTY_NAMES = ("quadratic", "pseudo_huber", "huber", "welsch", "truncated_quadratic")
STARTS = ("median", "mean", "best")
# Batches with fewer entries run serially (see bilevel.solvers.serial).
_PARALLEL_MIN = 200_000


def _kernel(name, X):
    from bilevel.solvers import pooling

    return pick_kernel(pooling, name, X.size >= _PARALLEL_MIN)


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
    start : {"median", "mean", "best"}
        Where the non-convex Welsch descent starts in each row (the other penalties'
        solution does not depend on it: unique, an interval's midpoint, or the global
        minimum): ``"median"`` (default), ``"mean"``, or ``"best"``, which descends from
        both and keeps per row the local minimum of lower energy (the median's on a tie),
        as the Deep Declarative Networks experiments do (section 7). A start passed to
        ``solve(x, init=y0)`` replaces the median (``"median"``, ``"best"``) or the mean
        (``"mean"``).

    Notes
    -----
    ``x`` has shape ``(..., n)``, ``n >= 1``; ``y*`` has shape ``x.shape[:-1]``.
    Solvers (:mod:`bilevel.solvers.pooling`, numba, batched over the leading axes):
    safeguarded Newton in ``[min x, max x]`` (pseudo-Huber, Huber: unique solution; for
    Huber, when the minimizers form an interval, its midpoint); for ``welsch``, which is
    non-convex, a deterministic descent **started at the median** of each row (or at
    ``init``) with Newton steps where the curvature is positive and trust-region steps of
    length ``alpha`` elsewhere, then bracketed Newton/bisection: the result is a local
    minimizer, the one the median's basin leads to, not necessarily the global one
    (``start="best"``: the lower of the minima the median's and the mean's basins lead
    to, at twice the cost); for
    ``truncated_quadratic`` the exact global minimizer, by enumerating the intervals on
    which the inlier set is constant. All are exact to round-off.

    Capabilities: ``analytic_vjp`` (the weighted mean above), ``optimality`` (``F`` in
    torch, so that :class:`~bilevel.strategies.Implicit` applies and cross-checks it) and
    ``energy``. :class:`bilevel.torch.Layer` pools batches through the numba kernels with
    the ``analytic`` strategy.

    Huber and the truncated quadratic are not twice differentiable at ``|y - x_i| = alpha``:
    there the VJP is one one-sided derivative, and the layer warns
    (:class:`~bilevel.DegeneracyWarning`) when a residual is within ``1e-6 alpha`` of a
    kink (or, truncated quadratic, when two local minima tie). With ``start="best"`` the
    Welsch pooled value jumps where the two starts' minima tie; the layer also warns
    when their energies differ by ``1e-6`` or less (``info["gap"]`` of a single solve).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.RobustPooling("welsch", alpha=1.0)
    >>> x = np.array([0.0, 0.1, -0.1, 0.2, 10.0])       # one outlier
    >>> round(float(prob.solve(x).x), 6), round(float(x.mean()), 6)
    (0.05, 2.04)
    >>> x = np.array([-100.0, 0.0, 0.1, 0.2, 10.0, 10.5, 11.0, 30.0, 40.0])
    >>> [round(float(bl.problems.RobustPooling("welsch", 1.0, start=s).solve(x).x), 3)
    ...  for s in ("median", "mean", "best")]        # the mean's basin is lower here
    [10.5, 0.1, 0.1]

    References
    ----------
    S. Gould, R. Hartley, D. Campbell, "Deep Declarative Networks", IEEE TPAMI 2021,
    section 5.1 and Proposition 4.4.
    """

    name = "robust_pooling"

    def __init__(self, penalty="pseudo_huber", alpha=1.0, tol=1e-10, max_iter=100,
                 start="median"):
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
        if not (isinstance(start, str) and start in STARTS):
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}; it "
                             "is where the welsch descent starts in each row")
        self.penalty, self.alpha = penalty, alpha
        self.tol, self.max_iter = float(tol), int(max_iter)
        self.start = start
        self._code = PENALTY_NAMES.index(penalty)

    def __repr__(self):
        start = "" if self.start == "median" else f", start={self.start!r}"
        return f"RobustPooling(penalty={self.penalty!r}, alpha={self.alpha}{start})"

    def offers(self):
        """Offer the weighted-mean closed form, ``F = sum phi'``, the energy, a step map."""
        why_not = {
            "constraints": "the pooled value y is unconstrained: its optimality condition is "
                           "F(y, x) = sum_i phi'(y - x_i) = 0 (optimality)",
            "manifold": "y is a smooth function of x away from the penalty's kinks, with the "
                        "closed-form derivative phi''(y - x_i) / sum_j phi''(y - x_j) "
                        "(analytic); there is no non-smooth term whose manifold to follow",
            "mirror": "y ranges over the whole real line: no constraint set for a Legendre "
                      "function's domain; the Euclidean gradient step is the step map (step)",
            "dual": "the pooled value is an energy minimizer with no constraint to dualize; "
                    "its optimal value is differentiated by the envelope theorem (energy)",
            "straight_through": "y* is continuous in x with its exact derivative (analytic): "
                                "no discontinuity for an identity backward to bridge"}
        step = None
        if self.penalty == "truncated_quadratic":
            why_not["step"] = (
                "the truncated quadratic's global minimizer is found by enumerating the "
                "intervals with a constant inlier set, not by a descent: a gradient step map "
                "from any start may stop at another local minimum, and phi' jumps at "
                "|y - x_i| = alpha (analytic and implicit differentiate the minimizer)")
        else:
            step = StepMap(self.step, start=self._step_start)
        return Capabilities(analytic_vjp=self.analytic_vjp,
                            optimality=Optimality(self.optimality), energy=self.energy,
                            step=step, why_not=why_not,
                            batch=Batch(theta_ndim=(1,), solve=self._solve_batch,
                                        analytic_vjp=self._vjp_batch))

    @classmethod
    def examples(cls):
        """Rows with an outlier, residuals away from the kinks: convex, non-convex, non-smooth."""
        x = np.array([[0.0, 0.4, 3.0], [1.0, -0.5, 0.2]])
        return [("robust_pooling-pseudo_huber", cls("pseudo_huber", 1.0), x),
                ("robust_pooling-welsch", cls("welsch", 1.0), x),
                ("robust_pooling-truncated_quadratic", cls("truncated_quadratic", 1.0), x)]

    check_batch = Problem.check_batch_finite    # check_theta: shapes and finiteness only

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
        """Return the starts: NaN, which the solver reads as each row's median (or mean).

        Welsch starts at the median (``start="median"``, ``"best"``) or at the row means
        (``start="mean"``); the other penalties' minimizer does not depend on the start,
        and their Newton iteration starts at the mean.
        """
        x = parts[0]
        if self.start == "mean" and self.penalty == "welsch":
            return x.mean(axis=-1)
        return np.full(x.shape[:-1], np.nan)

    def _sorted(self, X):
        """Return the rows of ``X`` sorted for the truncated quadratic, else ``X``."""
        return np.sort(X, axis=1) if self.penalty == "truncated_quadratic" else X

    def _pool(self, X, sorted_X, Y0):
        """Pool the rows of ``X`` (b, n) from ``Y0`` (b,): ``(Y, iters, res, gap, from_mean)``.

        ``sorted_X`` is :meth:`_sorted`'s ``X``.

        ``start="best"`` (Welsch): a second descent from the row means, keeping per row the
        minimum of lower energy (``from_mean`` (b,) where it is the mean's); ``gap`` (b,)
        is the energy difference of the two minima where they differ (``inf`` where both
        starts reach the same one, and for every other start or penalty).
        """
        kernel = _kernel("pool_solve", X)
        Y, iters, res = kernel(X, sorted_X, self._code, self.alpha, Y0, self.max_iter)
        gap, take = np.full(Y.shape, np.inf), np.zeros(Y.shape, dtype=bool)
        if self.start == "best" and self.penalty == "welsch":
            Ym, iters_m, res_m = kernel(X, sorted_X, self._code, self.alpha,
                                        np.ascontiguousarray(X.mean(axis=1)), self.max_iter)
            e, e_m = _welsch_energy(X, Y, self.alpha), _welsch_energy(X, Ym, self.alpha)
            take = e_m < e                          # the median's minimum on a tie
            differ = np.abs(Ym - Y) > 1e-6 * (np.abs(Y) + self.alpha)
            gap = np.where(differ, np.abs(e_m - e), np.inf)
            Y = np.where(take, Ym, Y)
            iters = iters + iters_m
            res = np.where(take, res_m, res)
        return Y, iters, res, gap, take

    def _solve(self, theta, x0):
        x = theta[0] if isinstance(theta, tuple) else theta
        X = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        Y0 = np.ascontiguousarray(np.asarray(x0, dtype=np.float64).reshape(-1))
        Y, iters, res, gap, _ = self._pool(X, self._sorted(X), Y0)
        info = {"gap": gap.reshape(x.shape[:-1])} if self.start == "best" else {}
        return Y.reshape(x.shape[:-1]), int(iters.max()), float(res.max()), info

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

    def step(self, y, theta):
        r"""Gradient step ``y+ = y - F(y, x) / L`` with ``L = n max phi''`` (torch).

        ``L`` bounds ``F' = sum_i phi''(y - x_i)`` (``max phi''``: 1, or ``1 / alpha^2``
        for Welsch), so each step moves towards the nearest zero of ``F`` in the descent
        direction without passing it: from the solver's start the iteration stays in the
        basin of the minimum the solver finds. Its derivative at ``y*`` gives the VJP through
        :class:`~bilevel.strategies.FixedPoint` and ``Unroll``, independently of
        :meth:`analytic_vjp`; it contracts by ``1 - F'(y*) / L`` per step.
        """
        x = theta[0] if isinstance(theta, tuple) else theta
        curvature = 1.0 / self.alpha ** 2 if self.penalty == "welsch" else 1.0
        return y - self.optimality(y, theta) / (x.shape[-1] * curvature)

    def _step_start(self, parts):
        """Start every row where the solver starts: the mean, or for Welsch the median.

        Welsch with ``start="mean"``: the mean; ``start="best"``: per row the start whose
        minimum the solver keeps.
        """
        x = parts[0]
        median, mean = np.median(x, axis=-1), x.mean(axis=-1)
        if self.penalty != "welsch" or self.start == "mean":
            return mean
        if self.start == "median":
            return median
        X = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        *_, from_mean = self._pool(X, self._sorted(X), np.full(X.shape[0], np.nan))
        return np.where(from_mean.reshape(median.shape), mean, median)

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
        G, margins = _kernel("pool_vjp", X)(X, self._sorted(X), self._code, self.alpha, Y, V)
        return G.reshape(x.shape), margins

    # batched kernels for bl.torch.Layer ------------------------------------------------
    def _solve_batch(self, X):
        """Pool every row of ``X`` (b, n) from the starts of :meth:`init`: ``Y`` (b,)."""
        import warnings

        from bilevel._types import ConvergenceWarning

        Y0 = np.ascontiguousarray(self.init((X,)))    # NaN: the kernel takes the median
        sorted_X = self._sorted(X)
        Y, _, res, gap, _ = self._pool(X, sorted_X, Y0)
        if np.any(res > self.tol):
            warnings.warn(f"RobustPooling: {int(np.sum(res > self.tol))} of {X.shape[0]} rows "
                          f"stopped at relative residual up to {res.max():.1e} > "
                          f"tol={self.tol:.0e}; raise max_iter", ConvergenceWarning,
                          stacklevel=4)
        certificate = {"gap": gap} if self.start == "best" else {}
        if sorted_X is not X:               # kept for the VJP, which reads them again
            certificate["sorted_rows"] = sorted_X
        return BatchSolution(x=Y, parts=(X,), certificate=certificate)

    def _vjp_batch(self, batch, V):
        """Exact VJPs of every row: ``((G (b, n),), margins (b,))``.

        With ``start="best"`` a row's margin is also at most the energy gap between the two
        starts' minima (a tie: the pooled value jumps there).
        """
        X = batch.parts[0]
        sorted_X = batch.certificate.get("sorted_rows", X)     # X itself: no sort needed
        G, margins = _kernel("pool_vjp", X)(X, sorted_X, self._code, self.alpha, batch.x, V)
        if "gap" in batch.certificate:
            margins = np.minimum(margins, batch.certificate["gap"])
        return (G,), margins


def _welsch_energy(X, Y, a):
    """``sum_i 1 - exp(-(y - x_i)^2 / (2 a^2))`` of every row of ``X`` (b, n) at ``Y`` (b,)."""
    z = (Y[:, None] - X) / a
    return np.sum(-np.expm1(-0.5 * z * z), axis=1)
