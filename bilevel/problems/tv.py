r"""1-D total-variation denoising of orders 1-3.

.. math:: y^*(s, \lambda) = \arg\min_y \tfrac12\|y - s\|^2 + \lambda\|D^k y\|_1
          \quad(\text{norm="l1"}), \qquad
          \tfrac12\|y - s\|^2 + \tfrac{\lambda}{2}\|D^k y\|^2 \quad(\text{norm="l2"})

l1: the penalty is partly smooth relative to ``M_Z = {y : (D^k y)_Z = 0}``, ``Z`` the rows
where ``D^k y*`` vanishes (for order 1: ``y*`` is constant on segments). On a
non-degenerate solution ``y* = P (s - lam D_J^T sigma_J)`` with ``P`` the orthogonal
projector onto ``null(D_Z)`` and ``sigma_J`` the signs of ``D^k y*`` off ``Z``, so

.. math:: \partial y^*/\partial s = P, \qquad
          \partial y^*/\partial\lambda = -P D_J^\top \sigma_J,

each applied in O(n) by a banded solve (order 1: averaging over the constant segments):
the closed form (``analytic_vjp``) of every order, and the manifold's ``H_M^{-1}``.
l2: ``y* = (I + lam D^T D)^{-1} s``, differentiated by the same banded solve.
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import Batch, BatchSolution, Manifold, Optimality, StepMap
from bilevel.problems.base import (
    Capabilities,
    Problem,
    check_array,
    check_nonnegative,
    no_kinks,
    pick_kernel,
)

__all__ = ["TV1D"]

# |D^k y*|_i below this (relative to max(1, max|s|)) counts as zero: the manifold.
_ZERO_TOL = 1e-9
# Longest signal for the dense dual map of the l1 step (Unroll, FixedPoint).
_DENSE_MAX = 4000
# Batches with fewer entries run serially (see bilevel.solvers.serial).
_PARALLEL_MIN = 200_000

# Why a variant lacks a capability (Capabilities.why_not).
_NOT_JOINTLY_CONVEX = ("lam multiplies {penalty}: E is not jointly convex in (y, lam), so p "
                       "has no convex-dual gradient in lam; the envelope theorem gives it "
                       "(envelope)")
_LIPSCHITZ = ("y* is the prox of a convex penalty, 1-Lipschitz in s, with its exact Jacobian "
              "{where} (analytic): the identity backward is a baseline for discontinuous maps "
              "(partitions, quantizers)")
_WHY_NOT = {
    "l1": {"optimality": "the penalty lam ||D^k y||_1 is not smooth: no optimality residual "
                         "(partial_smoothness differentiates its jump set)",
           "straight_through": _LIPSCHITZ.format(where="almost everywhere"),
           "dual": _NOT_JOINTLY_CONVEX.format(penalty="||D^k y||_1")},
    "l2": {"manifold": "the quadratic penalty is smooth: y* = (I + lam D^T D)^{-1} s has no "
                       "active manifold but the whole space, on which partial smoothness is "
                       "implicit differentiation (implicit)",
           "mirror": "y is unconstrained and E smooth: there is no constraint set for a "
                     "Legendre function, and the Euclidean Bregman step is the gradient step "
                     "(step)",
           "straight_through": _LIPSCHITZ.format(where="(I + lam D^T D)^{-1}"),
           "dual": _NOT_JOINTLY_CONVEX.format(penalty="||D^k y||^2 / 2")},
}


def _kernel(name, S):
    """Pick the ``prange`` kernel for large batches, its serial twin for small ones."""
    from bilevel.solvers import tv

    return pick_kernel(tv, name, S.size >= _PARALLEL_MIN)


# cond(D D^T) above which an unconverged order-2/3 solve is the banded LDL^T's breakdown
# (seen from 4.5e19 on), and the size the error recommends (cond <= 1e18).
_COND_BREAKDOWN = 1e19
_COND_SAFE = 1e18


def _dual(info):
    """Return the solver's dual ``u`` a solution carries (orders 2-3), else an empty array."""
    return info.get("dual", np.empty(0))


def torch_diff(y, order):
    """``D^k y`` along the last axis, in torch."""
    return torch.diff(y, n=order, dim=-1)


@register_problem
class TV1D(Problem):
    """1-D TV denoising ``1/2||y - s||^2 + lam ||D^k y||_1`` (or l2); theta ``(s, lam)``.

    Parameters
    ----------
    order : {1, 2, 3}
        Order ``k`` of the differences: 1 favours piecewise constant, 2 piecewise linear, 3
        piecewise quadratic signals.
    norm : {"l1", "l2"}
        ``lam ||D^k y||_1`` or ``(lam/2) ||D^k y||^2``.
    tol : float
        Duality-gap tolerance (relative to ``||s||^2/2``, net of the gap's rounding error)
        of the order-2/3 l1 solver; ``(c s, c lam)`` stops where ``(s, lam)`` does.
    max_iter : int
        Projected-Newton iterations of the order-2/3 l1 solver.

    Notes
    -----
    ``s`` has shape (n,) with ``n > order``; ``lam`` is a scalar >= 0. Solvers
    (:mod:`bilevel.solvers.tv`): order 1 l1 by Condat's exact direct algorithm; orders 2-3
    l1 by projected Newton on the dual (exact once the active set is identified); l2 by a
    banded LDL^T solve. ``Solution.info`` holds ``gap`` and, for l1, ``jumps`` (indices
    ``i`` with ``(D^k y*)_i != 0``) and, for orders 2-3, ``dual`` (the solver's ``u``,
    ``y* = s - (D^k)^T u``, ``|u| <= lam``). Capabilities: ``manifold``, ``mirror`` (a Bregman
    primal-dual method) and the exact ``analytic_vjp``, the manifold's projector
    ``P = I - D_Z^T (D_Z D_Z^T)^{-1} D_Z`` by a banded solve (order 1: segment means) (l1);
    ``optimality`` and ``analytic_vjp`` (l2); ``step`` and ``energy`` for both.
    :class:`bilevel.torch.Layer` batches over leading dimensions with numba kernels
    (``analytic`` and ``partial_smoothness``).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.TV1D(order=1)
    >>> prob.solve((np.array([0.0, 0.0, 3.0, 3.0]), 0.5)).x   # the jump shrinks by 2 lam / 2
    array([0.25, 0.25, 2.75, 2.75])
    """

    name = "tv1d"

    def __init__(self, order=1, norm="l1", tol=1e-13, max_iter=500):
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) \
                or order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3 (an int), got {order!r}")
        if norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        self.order, self.norm, self.tol, self.max_iter = order, norm, float(tol), int(max_iter)
        self._dual_maps = {}

    def __repr__(self):
        return f"TV1D(order={self.order}, norm={self.norm!r})"

    def offers(self):
        """l1: the manifold, a mirror, the projector's closed form; l2: optimality, closed form."""
        l1 = self.norm == "l1"
        return Capabilities(
            optimality=None if l1 else Optimality(self.optimality),
            manifold=self.manifold if l1 else None, mirror=self.mirror if l1 else None,
            analytic_vjp=self.analytic_vjp,
            step=StepMap(self.step, start=self.init), energy=self.energy,
            batch=Batch(theta_ndim=(1, 0), solve=self._solve_batch,
                        analytic_vjp=self._vjp_batch,
                        manifold_vjp=self._manifold_vjp_batch if l1 else None),
            why_not=_WHY_NOT[self.norm])

    @classmethod
    def examples(cls):
        """l1 of orders 1, 2 and 3 (the same capabilities), and l2 of order 2."""
        return [("tv1d-l1", cls(1), (np.array([0.0, 2.0, 3.0]), np.asarray(0.2))),
                ("tv1d-order2", cls(2), (np.array([0.0, 2.0, 3.0, 1.0, 0.5]),
                                         np.asarray(0.2))),
                ("tv1d-order3", cls(3), (np.array([0.8, -1.4, -2.8, -2.9, 1.9, 2.5, 0.6]),
                                         np.asarray(0.5))),       # 3 of 4 in the zero set
                ("tv1d-l2", cls(2, "l2"), (np.array([0.0, 2.0, 2.3]), np.asarray(0.3)))]

    def check_theta(self, theta):
        """``(s, lam)``: s of shape (n,) with n > order, finite; lam a scalar >= 0."""
        if not isinstance(theta, (tuple, list)) or len(theta) != 2:
            raise ValueError("TV1D takes theta = (s, lam): the signal and the weight")
        s = check_array(theta[0], "s", ndim=1)
        if s.shape[0] <= self.order:
            raise ValueError(f"s must have more than order={self.order} samples, "
                             f"got {s.shape[0]}")
        return s, check_nonnegative(theta[1], "lam", shapes=((),))

    def check_batch(self, parts):
        """:meth:`Problem.check_batch`, vectorized: ``S`` (B, n) and ``lam`` (B,)."""
        if (len(parts) != 2 or np.ndim(parts[0]) != 2 or np.shape(parts[1]) != parts[0].shape[:1]
                or parts[0].shape[1] <= self.order):
            return super().check_batch(parts)       # the row-by-row errors
        S, lam = parts
        if np.isfinite(S).all() and np.isfinite(lam).all() and (lam >= 0).all():
            return S.shape[0]                       # every row passes check_theta
        bad = ~np.isfinite(S).all(axis=1) | ~np.isfinite(lam) | (lam < 0)
        self._check_rows(parts, np.flatnonzero(bad)[:1])   # raises, naming the first bad row
        return S.shape[0]

    def init(self, parts):
        """Start from the signal itself (dual 0)."""
        return parts[0].copy()

    def _solve(self, theta, x0):
        from bilevel.solvers.tv import tv1d_condat, tv_dual_from_primal, tv_dual_newton, tv_l2

        s, lam = theta[0], float(theta[1])
        if self.norm == "l2":
            return tv_l2(s, lam, self.order), 1, 0.0, {"gap": 0.0}
        dual = {}
        if self.order == 1:
            y, n_iter, gap = tv1d_condat(s, lam), 1, 0.0
        else:
            try:
                # The default start y0 = s is the dual 0: no banded solve for it.
                u0 = (np.zeros(s.size - self.order) if np.array_equal(x0, s)
                      else tv_dual_from_primal(s, x0, self.order))
                y, dual["dual"], n_iter, gap = tv_dual_newton(s, lam, self.order, u0, self.tol,
                                                              self.max_iter)
            except np.linalg.LinAlgError:       # a pivot <= 0 of the banded LDL^T
                raise self._conditioning_error(s.shape[0]) from None
            if gap > self.tol and self._condition(s.shape[0]) > _COND_BREAKDOWN:
                raise self._conditioning_error(s.shape[0])
        jumps = np.flatnonzero(np.abs(np.diff(y, self.order)) > self._zero_tol(s))
        return y, n_iter, gap, {"gap": gap, "jumps": jumps, **dual}

    def _condition(self, n):
        """Condition number of ``D D^T`` for the order-k differences of n samples.

        Its eigenvalues are ``(2 - 2 cos(j pi / n))^k``: from about ``(pi / n)^(2k)`` to
        ``4^k``, a ratio of about ``(2n / pi)^(2k)``.
        """
        return (2.0 * n / np.pi) ** (2 * self.order)

    def _conditioning_error(self, n):
        """Return the ValueError of a banded LDL^T of ``D D^T`` that broke down."""
        n_max = int(np.pi / 2 * _COND_SAFE ** (1 / (2 * self.order)))
        return ValueError(
            f"TV1D(order={self.order}) on s of n={n} samples: the banded system D D^T of the "
            f"order-{self.order} differences has condition number about (2n/pi)^"
            f"{2 * self.order} = {self._condition(n):.1e}, beyond float64 (its factorization "
            f"breaks down); denoise s in overlapping windows of at most {n_max} samples, or "
            "use a lower order")

    def _require(self, norm, what):
        if self.norm != norm:
            raise ValueError(f"TV1D(norm={self.norm!r}) has no {what}: it is a capability of "
                             f"norm={norm!r} (see problem.capabilities)")

    @staticmethod
    def _zero_tol(s):
        return _ZERO_TOL * (float(np.max(np.abs(s))) or 1.0)    # relative to the data

    # torch maps -----------------------------------------------------------------------
    def energy(self, y, theta):
        """``1/2||y - s||^2 + lam ||D^k y||_1`` (or ``lam/2 ||D^k y||^2``)."""
        s, lam = theta
        Dy = torch_diff(y, self.order)
        penalty = torch.sum(torch.abs(Dy)) if self.norm == "l1" else 0.5 * torch.sum(Dy * Dy)
        return 0.5 * torch.sum((y - s) ** 2) + lam * penalty

    def optimality(self, y, theta):
        """``y - s + lam D^T D y`` (l2 only)."""
        self._require("l2", "optimality residual")
        s, lam = theta
        return y - s + lam * self._adjoint(torch_diff(y, self.order))

    def _adjoint(self, u):
        """``(D^k)^T u`` along the last axis."""
        out = u
        for _ in range(self.order):
            out = torch.nn.functional.pad(out, (1, 0)) - torch.nn.functional.pad(out, (0, 1))
        return out

    def step(self, y, theta):
        """Map ``y`` to a point closer to ``y*`` (its fixed point); smooth almost everywhere.

        l2: the gradient step ``y - F(y) / L``, ``L = 1 + lam 4^k``. l1: one projected
        gradient step on the dual, ``T(y) = s - D^T clip(u(y) + D y / 4^k, -lam, lam)``
        with ``u(y) = (D D^T)^{-1} D (s - y)`` the dual that ``y`` determines.
        """
        s, lam = theta
        if self.norm == "l2":
            return y - self.optimality(y, theta) / (1.0 + float(lam.detach()) * 4.0**self.order)
        n = y.shape[-1]
        dual_map = self._dual_map(n)
        u = dual_map @ (s - y)
        u = u + torch_diff(y, self.order) / 4.0**self.order
        u = torch.minimum(torch.maximum(u, -lam), lam)
        return s - self._adjoint(u)

    def _dual_map(self, n):
        """Dense ``(D D^T)^{-1} D`` for signals of length n (cached)."""
        if n > _DENSE_MAX:
            raise ValueError(f"the l1 step map of TV1D is dense (n x n): n = {n} > {_DENSE_MAX}; "
                             "differentiate long signals with partial_smoothness or analytic")
        if n not in self._dual_maps:
            D = np.diff(np.eye(n), self.order, axis=0)
            self._dual_maps[n] = torch.from_numpy(np.linalg.solve(D @ D.T, D))
        return self._dual_maps[n]

    def mirror(self, solution):
        """l1: the Bregman primal-dual method on ``max_{|z|<=1} lam <D^k y, z>`` (box mirror).

        ``y+ = y - tau (y - s + lam D^T z)``, ``z+ = tanh(atanh(z) + sigma lam D^k(2y+ - y))``
        from ``(0, 0)``, ``tau = 1/(1 + 3 kappa)``, ``sigma = 3/kappa``, ``kappa = lam 2^k``
        (``>= ||lam D^k||``; ``(1/tau - 1)/sigma = kappa^2`` is Chambolle and Pock's step
        condition), for :class:`~bilevel.strategies.BregmanUnroll`.
        """
        from bilevel._types import Mirror
        from bilevel.solvers.bregman import bregman_pd_tv1d

        self._require("l1", "Bregman primal-dual method")
        s, lam = (np.asarray(p, dtype=np.float64) for p in solution.theta)
        k, kappa = self.order, max(float(lam) * 2.0**self.order, 1e-12)
        z0 = np.zeros(s.size - k)

        def forward(n_steps, tol, tau, sigma):
            y, z, n, r = bregman_pd_tv1d(s, float(lam), k, np.zeros(s.size), z0, tau, sigma,
                                         n_steps, tol)
            return (y, z), n, r

        return Mirror(kind="euclidean", scheme="primal_dual", start=(np.zeros(s.size), z0),
                      step_size=1.0 / (1.0 + 3.0 * kappa), dual_kind="box",
                      dual_step_size=3.0 / kappa,
                      gradient=lambda y, theta: y - theta[0],
                      operator=lambda y, theta: theta[1] * torch_diff(y, k),
                      adjoint=lambda z, theta: theta[1] * self._adjoint(z),
                      forward=forward, info={"method": "Bregman primal-dual method"})

    # structure ------------------------------------------------------------------------
    def manifold(self, solution):
        """Return the manifold ``(D^k y)_Z = 0`` in full coordinates (``solve`` projects)."""
        from bilevel.solvers.tv import diff_adjoint, diff_forward, tv_manifold, tv_project

        self._require("l1", "active manifold")
        s, lam = (np.asarray(p, dtype=np.float64) for p in solution.theta)
        y, k = solution.x, self.order
        zero, sigma, margin = tv_manifold(s, y, float(lam), k, self._zero_tol(s),
                                          _dual(solution.info))

        def theta_vjp(u):  # (d_theta grad_M E)^T u, grad_M E = P(y - s + lam D^T sigma)
            return -u, np.asarray(np.dot(sigma, diff_forward(u, k)))

        def theta_jvp(dtheta):
            ds, dlam = dtheta
            return -ds + float(dlam) * diff_adjoint(sigma, k)

        return Manifold(kind="jump set", dim=y.size - zero.size, margin=float(margin),
                        restrict=lambda v: np.asarray(v, dtype=np.float64),
                        lift=lambda z: z,
                        solve=lambda b, pinv=False: tv_project(np.ascontiguousarray(b), zero, k),
                        theta_vjp=theta_vjp, theta_jvp=theta_jvp,
                        info={"zero_set": zero, "signs": sigma[sigma != 0]})

    def analytic_vjp(self, solution, v):
        """l1: ``P v`` and ``-sigma^T D^k P v`` (order 1: segment means); l2: banded solve."""
        from bilevel.solvers.tv import tv1d_segments_vjp, tv_l2_vjp, tv_manifold_vjp

        s, lam = (np.asarray(p, dtype=np.float64) for p in solution.theta)
        v = np.ascontiguousarray(v, dtype=np.float64)
        if self.norm == "l2":
            g_s, g_lam = tv_l2_vjp(solution.x, float(lam), self.order, v)
        elif self.order == 1:           # its own kernel: compiles no banded solve
            g_s, g_lam, _ = tv1d_segments_vjp(s, solution.x, float(lam), v, self._zero_tol(s))
        else:
            g_s, g_lam, _ = tv_manifold_vjp(s, solution.x, float(lam), self.order, v,
                                            self._zero_tol(s), _dual(solution.info))
        return g_s, np.asarray(g_lam)

    # batched kernels for bl.torch.Layer ------------------------------------------------
    def _solve_batch(self, S, lam):
        """Solve every row of ``S`` (b, n) with ``lam`` (b,): a :class:`~bilevel.BatchSolution`."""
        if self.norm == "l2":
            Y = _kernel("tv_l2", S)(S, lam, self.order)
        elif self.order == 1:
            Y = _kernel("tv1d_condat", S)(S, lam)
        else:
            U0 = np.zeros((S.shape[0], S.shape[1] - self.order))
            Y, U, _, gaps = _kernel("tv_dual_newton", S)(S, lam, self.order, U0, self.tol,
                                                         self.max_iter)
            if np.any(gaps > self.tol) and self._condition(S.shape[1]) > _COND_BREAKDOWN:
                raise self._conditioning_error(S.shape[1])
            if np.any(gaps > self.tol):
                import warnings

                from bilevel._types import ConvergenceWarning

                warnings.warn(f"TV1D: {int(np.sum(gaps > self.tol))} of {S.shape[0]} rows "
                              f"stopped at relative gap up to {gaps.max():.1e} > "
                              f"tol={self.tol:.0e}; raise max_iter", ConvergenceWarning,
                              stacklevel=4)
            return BatchSolution(x=Y, parts=(S, lam), certificate={"dual": U})
        return BatchSolution(x=Y, parts=(S, lam))

    def _vjp_batch(self, batch, V):
        """Exact VJPs of every row: ``((G_s (b, n), g_lam (b,)), margins (b,))``."""
        S, lam = batch.parts
        Y = batch.x
        if self.norm == "l2":
            G, g_lam = _kernel("tv_l2_vjp", S)(Y, lam, self.order, V)
            return (G, g_lam), no_kinks(S.shape[0])
        smax = np.abs(S).max(axis=1)
        tol = _ZERO_TOL * np.where(smax > 0, smax, 1.0)
        if self.order == 1:
            G, g_lam, margins = _kernel("tv1d_segments_vjp", S)(S, Y, lam, V, tol)
        else:
            U = batch.certificate.get("dual", np.empty((S.shape[0], 0)))
            G, g_lam, margins = _kernel("tv_manifold_vjp", S)(S, Y, lam, self.order, V, tol, U)
        return (G, g_lam), margins

    def _manifold_vjp_batch(self, batch, V, pinv=False):
        """Return the manifold's projector VJP of every row (never singular: ``pinv`` is moot)."""
        return self._vjp_batch(batch, V)
