r"""Problems with linear constraints and closed-form derivatives: moment layers, QPs, NNLS.

.. math:: x^*(\theta) = \arg\min_x f(x, \theta) \quad\text{s.t.}\quad
          D x = \beta \ \text{ or } \ G x \le h \ \text{ or } \ x \ge 0

Each class offers the ``constraints`` capability (a :class:`~bilevel.problems.kkt.KKT`
with affine constraints) and puts the multipliers ``nu`` (equalities) and ``lam``
(inequalities, ``>= 0``) in ``Solution.info``, so that :class:`~bilevel.strategies.Implicit`
differentiates the KKT system on the active set (Gould, Hartley, Campbell, "Deep Declarative
Networks", TPAMI 2021, Propositions 4.5-4.6); each also has its closed-form VJP
(``analytic_vjp``) and batched kernels for :class:`bilevel.torch.Layer`:

- :class:`EqualityConstrainedLS`: the Euclidean projection onto ``{z : D z = beta}``, the
  moment layer of Maddu et al.'s stencils (:func:`moment_matrix`);
- :class:`QP`: ``1/2 x^T Q x + c^T x`` s.t. ``G x <= h`` (OptNet's layer without
  equalities), Goldfarb-Idnani's dual active-set method;
- :class:`NNLS`: ``1/2 ||A x - b||^2`` s.t. ``x >= 0``, Lawson-Hanson.

:class:`QP` with a fixed ``h`` and :class:`NNLS` also offer their active face as the
``manifold`` of :class:`~bilevel.strategies.PartialSmoothness` (``{x : G_A x = h_A}``,
``{x : x_A = 0}``), restricted Hessians ``B^T Q B`` and ``A_F^T A_F``.

References
----------
Gould, Hartley, Campbell, "Deep Declarative Networks", TPAMI 2021.
Amos, Kolter, "OptNet: Differentiable Optimization as a Layer in Neural Networks", ICML 2017.
Maddu, Sturm, Cheeseman, Mueller, Sbalzarini, "STENCIL-NET: Data-driven solution-adaptive
discretization of partial differential equations", arXiv:2101.06182, 2021.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import (
    Batch,
    BatchSolution,
    ConvergenceWarning,
    Manifold,
    SingularSystemError,
    StepMap,
)
from bilevel.problems.base import Capabilities, Problem, check_array, no_kinks, pick_kernel
from bilevel.problems.kkt import KKT
from bilevel.problems.manifold import restricted_solver

__all__ = ["NNLS", "QP", "EqualityConstrainedLS", "moment_matrix"]

# A constraint with slack <= _ACTIVE_TOL max(1, ||x||_inf) is active (the default of
# Implicit's active_tol, so that the closed forms and the generic KKT solve agree).
_ACTIVE_TOL = 1e-9
# Batches with more work (rows x n x m) than this run the prange kernels.
_PARALLEL_MIN = 100_000
# EqualityConstrainedLS warns below this singular-value ratio of D (D^+ keeps < 8 digits).
_ECLS_COND_WARN = 1e-8

# Why a problem lacks a capability (Capabilities.why_not).
_KKT_OPTIMALITY = ("the {what} carry multipliers: x*'s optimality conditions are the KKT system "
                   "of constraints (implicit), not a residual in x alone")


def _bare(theta):
    """Return the one theta part of a single-parameter problem (bare, or a 1-tuple)."""
    return theta[0] if isinstance(theta, (tuple, list)) and len(theta) == 1 else theta


def moment_matrix(stencil, derivative_order, accuracy):
    r"""Vandermonde moment conditions ``D xi = beta`` of a finite-difference stencil.

    For an ``r``-th order approximation of the ``l``-th derivative at ``x_i`` from the
    values at ``x_j = x_i + offset_j``,
    ``d^l f / dx^l (x_i) = sum_j xi_j f(x_j) + O(dx^r)``, the weights must satisfy
    (Maddu et al. 2021; Proposition 3.2.1 of the moment-layer paper)

    .. math:: \sum_j \xi_j (\Delta x_j)^k =
              \begin{cases} (-1)^k k! & k = l \\ 0 & \alpha_{min} \le k \le l + r - 1,
              k \ne l \end{cases}, \qquad \Delta x_j = x_i - x_j,

    with ``alpha_min = 1`` for even ``l`` and 0 for odd ``l`` (the row ``k = l`` is always
    included, so ``l = 0`` starts at ``k = 0``). ``0^0 = 1``.

    Parameters
    ----------
    stencil : array_like, shape (s,)
        Offsets ``x_j - x_i`` of the stencil points (distinct, physical units).
    derivative_order : int
        ``l >= 0``.
    accuracy : int
        ``r >= 1``.

    Returns
    -------
    D : ndarray, shape (k, s)
        ``D[row, j] = (x_i - x_j)^{k_row}``.
    beta : ndarray, shape (k,)

    Raises
    ------
    ValueError
        More conditions than stencil points (``k > s``: no weights satisfy them), or
        repeated offsets.

    Examples
    --------
    The paper's stencil of size 2 for ``l = 0, r = 2`` (its Eq. 9), offsets ``(+dx, -dx)``:

    >>> import bilevel as bl
    >>> D, beta = bl.problems.moment_matrix([0.1, -0.1], 0, 2)
    >>> D.tolist(), beta.tolist()
    ([[1.0, 1.0], [-0.1, 0.1]], [1.0, 0.0])
    """
    offsets = check_array(stencil, "stencil", ndim=1)
    if offsets.size == 0 or np.unique(offsets).size != offsets.size:
        raise ValueError(f"stencil must hold distinct offsets, got {offsets.tolist()}")
    if int(derivative_order) != derivative_order or derivative_order < 0:
        raise ValueError(f"derivative_order must be an integer >= 0, got {derivative_order!r}")
    if int(accuracy) != accuracy or accuracy < 1:
        raise ValueError(f"accuracy must be an integer >= 1, got {accuracy!r}")
    order, r = int(derivative_order), int(accuracy)
    alpha_min = 1 if order % 2 == 0 else 0
    rows = sorted(set(range(alpha_min, order + r)) | {order})
    if len(rows) > offsets.size:
        raise ValueError(f"{len(rows)} moment conditions (derivative_order={order}, "
                         f"accuracy={r}) need at least {len(rows)} stencil points, got "
                         f"{offsets.size}; enlarge the stencil or lower the accuracy")
    dx = -offsets
    D = np.array([dx**k if k else np.ones_like(dx) for k in rows])
    beta = np.array([(-1.0) ** k * math.factorial(k) if k == order else 0.0 for k in rows])
    return D, beta


@register_problem
class EqualityConstrainedLS(Problem):
    r"""Projection onto an affine set: ``||z - xi||^2`` s.t. ``D z = beta``; theta ``xi``.

    .. math:: z^*(\xi) = \arg\min_z \|z - \xi\|^2 \ \text{ s.t. } D z = \beta
              = P\xi + D^+\beta, \qquad P = I - D^\top (D D^\top)^{-1} D,

    so that ``(dz*/dxi)^T v = P v`` (Gould et al. 2021, Corollary 4.9: fixed linear
    equalities), and the multiplier is ``nu = 2 (D D^T)^{-1} (D xi - beta)``.
    With :func:`moment_matrix` it is the moment layer that makes the weights ``xi`` a
    network predicts satisfy a stencil's moment conditions. When ``D`` is square
    (as many conditions as stencil points) the set is a single point: ``z* = D^{-1} beta``
    and the gradient is zero.

    Parameters
    ----------
    D : array_like, shape (k, n)
        Full row rank (``k <= n``).
    beta : array_like, shape (k,)

    Notes
    -----
    Capabilities: ``constraints`` (affine), ``analytic_vjp``, ``dual`` (the multipliers),
    ``step`` (the projected gradient step ``P (z + xi) / 2 + D^+ beta``, a contraction of
    rate 1/2); the batched kernels of :class:`bilevel.torch.Layer` are two matrix products.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.EqualityConstrainedLS(np.ones((1, 3)), np.array([1.0]))
    >>> prob.solve(np.array([1.0, 1.0, 1.0])).x.round(12)      # onto sum(z) = 1
    array([0.33333333, 0.33333333, 0.33333333])
    """

    name = "equality_constrained_ls"
    tol = 1e-10

    def __init__(self, D, beta):
        D = check_array(D, "D", ndim=2)
        beta = check_array(beta, "beta", ndim=1)
        if beta.shape[0] != D.shape[0]:
            raise ValueError(f"D has {D.shape[0]} rows but beta has {beta.shape[0]} entries")
        k, n = D.shape
        U, sv, Vt = np.linalg.svd(D, full_matrices=False)
        if k > n or sv.size == 0 or sv.min() <= 1e-12 * sv.max():
            ratio = sv.min() / sv.max() if sv.size and sv.max() > 0 else 0.0
            raise ValueError(f"D (shape {D.shape}) must have full row rank (singular-value "
                             f"ratio {ratio:.1e}): remove linearly dependent constraints (or "
                             "ones beyond the number of unknowns)")
        if sv.min() < _ECLS_COND_WARN * sv.max():
            warnings.warn(
                f"EqualityConstrainedLS: D is nearly rank-deficient (condition number "
                f"{sv.max() / sv.min():.1e}): D^+ beta and the multipliers are accurate to "
                f"about {np.finfo(float).eps * sv.max() / sv.min():.0e} relative; remove "
                "nearly dependent rows of D, or rescale them", ConvergenceWarning, stacklevel=2)
        self.D, self.beta = np.ascontiguousarray(D), beta
        # From the SVD D = U S V^T (cond(D), not cond(D D^T) = cond(D)^2 of normal equations):
        self._Dpinv = Vt.T @ (U.T / sv[:, None])             # D^T (D D^T)^{-1} = V S^-1 U^T
        self.P = np.eye(n) - Vt.T @ Vt
        self._z0 = self._Dpinv @ beta
        self._kkt = KKT(self.objective, eq=self.eq, affine=True)

    def __repr__(self):
        return f"EqualityConstrainedLS(D of shape {self.D.shape})"

    def offers(self):
        """Affine KKT, the projector ``P`` as the closed form, batched products."""
        return Capabilities(
            constraints=self._kkt, analytic_vjp=self.analytic_vjp, dual=self._kkt.dual,
            step=StepMap(self.step, start=self.init),
            batch=Batch(theta_ndim=(1,), solve=self._solve_batch, analytic_vjp=self._vjp_batch),
            why_not={
                "optimality": _KKT_OPTIMALITY.format(what="equalities D z = beta"),
                "manifold": "the affine set {D z = beta} is the active manifold at every xi "
                            "(no inequality can switch): partial smoothness on it is the "
                            "affine KKT solve (implicit), and its derivative the projector P "
                            "(analytic)",
                "mirror": "the affine set {D z = beta} has an empty interior: no Legendre "
                          "function has it as its domain; on it the Euclidean Bregman step is "
                          "the projected gradient step (step)",
                "straight_through": "z* = P xi + D^+ beta is affine in xi with the exact "
                                    "Jacobian P (analytic): no discontinuity for an identity "
                                    "backward to bridge"})

    @classmethod
    def examples(cls):
        """Return the moment layer of a 3-point stencil (l = 0, r = 2)."""
        return [("equality_constrained_ls-moment",
                 cls(*moment_matrix([-0.1, 0.1, 0.2], 0, 2)), np.array([0.3, 0.5, 0.1]))]

    check_batch = Problem.check_batch_finite    # check_theta: shapes and finiteness only

    def check_theta(self, theta):
        """``xi`` of shape (n,)."""
        return (check_array(_bare(theta), "xi", shape=(self.D.shape[1],)),)

    def init(self, parts):
        """Start from the particular solution ``D^+ beta``."""
        return self._z0.copy()

    def _solve(self, theta, x0):
        xi = np.asarray(_bare(theta), dtype=np.float64)
        z = self.P @ xi + self._z0
        nu = 2.0 * (self._Dpinv.T @ (xi - z))    # 2 (D D^T)^{-1} D (xi - z)
        residual = float(np.abs(self.D @ z - self.beta).max()) / max(1.0, np.abs(self.beta).max())
        return z, 1, residual, {"nu": nu, "lam": np.zeros(0)}

    def objective(self, z, theta):
        """``||z - xi||^2``."""
        return ((z - _bare(theta)) ** 2).sum()

    def eq(self, z, theta):
        """``D z - beta``."""
        return torch.from_numpy(self.D) @ z - torch.from_numpy(self.beta)

    def step(self, z, theta):
        """Projected gradient step on ``||z - xi||^2`` (step 1/4): ``P (z + xi)/2 + D^+ beta``.

        Its fixed point is ``z*`` (``P D^+ beta = 0``), its Jacobian in ``z`` is ``P / 2``.
        """
        P, z0 = torch.from_numpy(self.P), torch.from_numpy(self._z0)
        return P @ (0.5 * (z + _bare(theta))) + z0

    def analytic_vjp(self, solution, v):
        """``P v``: the projector onto ``null(D)``."""
        return (self.P @ np.asarray(v, dtype=np.float64),)

    def _solve_batch(self, Xi):
        """Rows of ``Xi`` (b, n) projected: ``Xi P + 1 (D^+ beta)^T``."""
        x = Xi.dot(self.P)          # (ndarray.dot: a few us less than @ inside a layer)
        x += self._z0
        return BatchSolution(x=x, parts=(Xi,))

    def _vjp_batch(self, batch, V):
        """``((V P,), margins)``; no kinks, margins are infinite."""
        return (V.dot(self.P),), no_kinks(V.shape[0])


# --------------------------------------------------------------------------------------
def _kernel(name, rows, work):
    """Pick the ``prange`` kernel for large batches, its serial twin for small ones."""
    from bilevel.solvers import qp

    return pick_kernel(qp, name, rows * work >= _PARALLEL_MIN)


@register_problem
class QP(Problem):
    r"""A strictly convex QP ``1/2 x^T Q x + c^T x`` s.t. ``G x <= h``.

    .. math:: x^*(c, h) = \arg\min_x \tfrac12 x^\top Q x + c^\top x
              \ \text{ s.t. } G x \le h

    theta is ``c`` when ``h`` is given to the constructor (DESIGN's convention), and
    ``(c, h)`` when ``h`` is None: both differentiable, as in OptNet. On the active set
    ``S`` (strict complementarity, linearly independent ``G_S``), with
    ``M = G_S Q^{-1} G_S^T`` and ``w = M^{-1} G_S Q^{-1} v``:

    .. math:: \nabla_c = -Q^{-1}(v - G_S^\top w), \qquad (\nabla_h)_S = w,
              \quad (\nabla_h)_{\bar S} = 0.

    Parameters
    ----------
    Q : array_like, shape (n, n)
        Symmetric positive definite.
    G : array_like, shape (m, n)
    h : array_like, shape (m,), optional
        Fixed right-hand side; None makes ``h`` part of theta.
    tol : float
        Tolerance of the KKT residual (relative) and of the solver's feasibility test.
    max_iter : int, optional
        Cap on active-set changes (default ``10 (n + m)``).

    Notes
    -----
    Solver: Goldfarb-Idnani's dual active-set method in numba
    (:func:`bilevel.solvers.qp.qp_goldfarb_idnani`), exact active set and multipliers
    ``lam`` (``Solution.info["lam"]``, with ``active``); infeasible ``G x <= h`` raises
    ``ValueError``. Capabilities: ``constraints`` (affine), ``analytic_vjp``, ``dual`` (the
    value ``p(c, h)`` has ``grad_c p = x*``, ``grad_h p = -lam``), and with a fixed ``h``
    ``manifold``: the active face ``{x : G_A x = h_A}``, tangent space ``null(G_A)`` with
    an orthonormal basis ``B``, ``H_M = B^T Q B`` (``dx*/dc = -B H_M^{-1} B^T``, defined
    even where ``G_A`` is rank-deficient);
    :class:`bilevel.torch.Layer` batches rows of ``c`` (and ``h``) through the ``prange``
    kernels. Weakly active constraints (zero multiplier) are kept in ``S``: the gradient is
    then one-sided (``Implicit`` reports ``one_sided``).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.QP(np.eye(2), np.array([[1.0, 1.0]]), np.array([1.0]))
    >>> sol = prob.solve(np.array([-2.0, -2.0]))     # unconstrained (2, 2), projected
    >>> sol.x, sol.info["lam"]
    (array([0.5, 0.5]), array([1.5]))
    """

    name = "qp"

    def __init__(self, Q, G, h=None, tol=1e-10, max_iter=None):
        Q = check_array(Q, "Q", ndim=2)
        n = Q.shape[0]
        if Q.shape != (n, n) or n == 0:
            raise ValueError(f"Q must be square and non-empty, got shape {Q.shape}")
        if not np.allclose(Q, Q.T, rtol=1e-12, atol=1e-12 * np.abs(Q).max()):
            raise ValueError("Q must be symmetric; pass (Q + Q.T) / 2")
        try:
            np.linalg.cholesky(Q)
        except np.linalg.LinAlgError as exc:
            raise ValueError("Q must be positive definite (strictly convex QP); add a small "
                             "multiple of the identity") from exc
        G = check_array(G, "G", ndim=2)
        if G.shape[1] != n:
            raise ValueError(f"G must have {n} columns (Q is {n} x {n}), got shape {G.shape}")
        if h is not None:
            h = check_array(h, "h", shape=(G.shape[0],))
        if not (tol > 0):
            raise ValueError(f"tol must be > 0, got {tol}")
        self.Q, self.G = np.ascontiguousarray(Q), np.ascontiguousarray(G)
        self._Qinv = np.linalg.inv(self.Q)      # the dual active-set kernels work on Q^{-1}
        self.h = h
        self.tol = float(tol)
        self.max_iter = int(max_iter) if max_iter is not None else 10 * (n + G.shape[0]) + 10
        self._kkt = KKT(self.objective, ineq=self.ineq, affine=True)

    def __repr__(self):
        n, m = self.G.shape[1], self.G.shape[0]
        return f"QP(n={n}, m={m}, theta={'c' if self.h is not None else '(c, h)'})"

    def offers(self):
        """Affine KKT, the active-set closed form, the dual, batches; fixed h: the face."""
        why_not = {
            "optimality": _KKT_OPTIMALITY.format(what="inequalities G x <= h"),
            "step": "the projection onto a polyhedron {G x <= h} is itself a QP: no "
                    "closed-form projected-gradient step (and the dual active-set method's "
                    "pivots are not a smooth map)",
            "mirror": "no Legendre function with a closed-form mirror step has a general "
                      "polyhedron {G x <= h} as its domain",
            "straight_through": "theta (c, h) is not a surrogate of x*: x* is piecewise affine "
                                "in theta with its exact Jacobian on the active set (analytic)"}
        if self.h is None:
            why_not["manifold"] = (
                "h moves the active face {x : G_A x = h_A}: an affine manifold whose offset "
                "depends on theta, which Manifold does not describe (implicit and analytic "
                "differentiate it; QP(Q, G, h) with theta c offers the face)")
        return Capabilities(constraints=self._kkt, analytic_vjp=self.analytic_vjp,
                            dual=self._kkt.dual,
                            manifold=self.manifold if self.h is not None else None,
                            batch=Batch(theta_ndim=(1,) if self.h is not None else (1, 1),
                                        solve=self._solve_batch, analytic_vjp=self._vjp_batch),
                            why_not=why_not)

    @classmethod
    def examples(cls):
        """Theta = c with a fixed h, and theta = (c, h); both constraints active."""
        Q, G = np.diag([2.0, 1.0, 1.5]), np.array([[1.0, 1.0, 0.0], [0.0, -1.0, 1.0]])
        c, h = np.array([-2.0, -1.0, 0.5]), np.array([0.5, 0.2])
        return [("qp-c", cls(Q, G, h), c), ("qp-tuple", cls(Q, G), (c, h))]

    check_batch = Problem.check_batch_finite    # check_theta: shapes and finiteness only

    def check_theta(self, theta):
        """``c`` (n,), or ``(c, h)`` with h (m,) when the constructor had no ``h``."""
        n, m = self.G.shape[1], self.G.shape[0]
        if self.h is not None:
            theta = _bare(theta)
            if isinstance(theta, (tuple, list)):
                raise ValueError("this QP has a fixed h: theta is c alone; build QP(Q, G) "
                                 "to differentiate with respect to h too")
            return (check_array(theta, "c", shape=(n,)),)
        if not isinstance(theta, (tuple, list)) or len(theta) != 2:
            raise ValueError("QP(Q, G) takes theta = (c, h); pass h to the constructor to "
                             "make theta = c")
        return check_array(theta[0], "c", shape=(n,)), check_array(theta[1], "h", shape=(m,))

    def init(self, parts):
        """Unused (the dual method starts from the unconstrained minimizer)."""
        return np.zeros(self.G.shape[1])

    def _split(self, theta):
        if self.h is not None:
            return np.asarray(_bare(theta), dtype=np.float64), self.h
        return np.asarray(theta[0], dtype=np.float64), np.asarray(theta[1], dtype=np.float64)

    def _solve(self, theta, x0):
        from bilevel.solvers.qp import qp_goldfarb_idnani

        c, h = (np.ascontiguousarray(t) for t in self._split(theta))
        x, lam, n_iter, status = qp_goldfarb_idnani(self._Qinv, c, self.G, h, 1e-13,
                                                     self.max_iter)
        if status == 1:
            raise ValueError("QP: the constraints G x <= h are infeasible (h has no feasible "
                             "point); check h, or relax the constraints")
        residual = self._residual(x, lam, c, h)
        if status == 0 and residual > 1e-14:
            polished = self._polish(x, lam, c, h)
            if polished is not None:
                r = self._residual(*polished, c, h)
                if r < residual:
                    (x, lam), residual = polished, r
        slack = h - self.G @ x
        active = np.flatnonzero(
            slack <= _ACTIVE_TOL * (max(np.abs(x).max(), np.abs(h).max(initial=0.0)) or 1.0))
        return x, n_iter, residual, {"lam": lam, "nu": np.zeros(0), "active": active,
                                     "status": int(status)}

    def _residual(self, x, lam, c, h):
        """KKT residual, each part relative to its own terms' scale (see :func:`_kkt_residual`)."""
        Q, G = self.Q, self.G
        gx = np.abs(G) @ np.abs(x)
        return _kkt_residual(Q @ x + c + G.T @ lam, h - G @ x, lam,
                             np.abs(c) + np.abs(Q) @ np.abs(x) + np.abs(G.T) @ np.abs(lam),
                             np.abs(h) + gx)

    def _polish(self, x, lam, c, h):
        """Re-solve on the dual method's active set by the null-space method; None if it fails.

        The dual method moves from ``-Q^{-1} c`` and carries its rounding, ``eps |Q^{-1} c|``:
        with ``|c| >> |h|`` that is the whole answer. On the active set ``A`` the minimizer is
        ``x = x_p + B z`` with ``G_A x_p = h_A`` (least squares, the scale of ``h``), ``B`` a
        basis of ``null(G_A)`` and ``(B^T Q B) z = -B^T (Q x_p + c)``: exact where the active
        constraints pin ``x``. A primal-dual active-set pass (drop a negative multiplier, add a
        violated constraint) repairs a set that round-off had wrong.
        """
        import scipy.linalg

        Q, G = self.Q, self.G
        m, n = G.shape
        active = set(np.flatnonzero(lam > 0).tolist())
        for _ in range(m + n + 1):
            idx = np.array(sorted(active), dtype=np.int64)
            GA = G[idx]
            if idx.size:
                x_p = np.linalg.lstsq(GA, h[idx], rcond=None)[0]
                B = scipy.linalg.null_space(GA)
            else:
                x_p, B = np.zeros(n), np.eye(n)
            xn = x_p
            if B.shape[1]:
                try:
                    z = np.linalg.solve(B.T @ Q @ B, -(B.T @ (Q @ x_p + c)))
                except np.linalg.LinAlgError:
                    return None
                xn = x_p + B @ z
            lam_n = np.zeros(m)
            if idx.size:
                lam_n[idx] = np.linalg.lstsq(GA.T, -(Q @ xn + c), rcond=None)[0]
            scale_lam = np.abs(c).max() + np.abs(Q @ xn).max()
            if idx.size and lam_n[idx].min() < -1e-12 * scale_lam:
                active.discard(int(idx[np.argmin(lam_n[idx])]))
                continue
            slack = h - G @ xn
            scale_h = np.abs(h) + np.abs(G) @ np.abs(xn)
            violated = slack < -1e-13 * scale_h
            if violated.any():
                active.add(int(np.argmin(np.where(violated, slack / np.maximum(scale_h, 1e-300),
                                                  np.inf))))
                continue
            return xn, np.maximum(lam_n, 0.0)
        return None

    # torch maps -----------------------------------------------------------------------
    def objective(self, x, theta):
        """``1/2 x^T Q x + c^T x``."""
        c = _bare(theta) if self.h is not None else theta[0]
        return 0.5 * x @ (torch.from_numpy(self.Q) @ x) + c @ x

    def ineq(self, x, theta):
        """``G x - h``."""
        h = torch.from_numpy(self.h) if self.h is not None else theta[1]
        return torch.from_numpy(self.G) @ x - h

    def manifold(self, solution):
        """Return the active face ``{x : G_A x = h_A}`` (fixed ``h``): ``H_M = B^T Q B``.

        ``E_M(z, c) = f(x* + B z)`` with ``B`` an orthonormal basis of ``null(G_A)``, so
        ``grad_z E_M = B^T (Q x + c)``, ``d_c grad_z E_M = B^T``. The margin is the smallest
        of the active multipliers (relative to ``|x + Q^{-1} c|_inf``) and the inactive
        slacks (relative to ``max(|x|_inf, |h|_inf)``), as the closed form's: scale-free.
        """
        import scipy.linalg

        if self.h is None:
            raise ValueError("QP(Q, G) (theta = (c, h)) has no manifold: h moves the active "
                             "face; use implicit or analytic (see capabilities.why_not)")
        c = np.asarray(_bare(solution.theta), dtype=np.float64)
        x = solution.x
        n = x.size
        slack = self.h - self.G @ x
        xnorm = max(float(np.abs(x).max()), float(np.abs(self.h).max())) or 1.0
        active = np.flatnonzero(slack <= _ACTIVE_TOL * xnorm)
        inactive = np.setdiff1d(np.arange(slack.size), active)
        lam = solution.info.get("lam")
        if lam is None or np.size(lam) != slack.size:
            lam = np.zeros(slack.size)
            if active.size:
                lam[active] = np.linalg.lstsq(self.G[active].T, -(self.Q @ x + c),
                                              rcond=None)[0]
        B = scipy.linalg.null_space(self.G[active]) if active.size else np.eye(n)
        gscale = float(np.abs(x + np.linalg.solve(self.Q, c)).max()) or 1.0
        margin = min(float((lam[active] / gscale).min(initial=np.inf)),
                     float((slack[inactive] / xnorm).min(initial=np.inf)))
        solve = restricted_solver(B.T @ self.Q @ B, f"the active face ({B.shape[1]} "
                                  "dimensions)", "Q must be positive definite.")
        return Manifold(kind="active face", dim=B.shape[1], margin=margin,
                        restrict=lambda v: B.T @ np.asarray(v, dtype=np.float64).ravel(),
                        lift=lambda z: B @ z, solve=solve,
                        theta_vjp=lambda u: (B @ u,),
                        theta_jvp=lambda dtheta: B.T @ np.asarray(dtheta[0], np.float64),
                        info={"active": active, "lam": lam[active]})

    # closed forms ---------------------------------------------------------------------
    def analytic_vjp(self, solution, v):
        """Apply the active-set formula of the class docstring (the one-problem kernel)."""
        from bilevel.solvers.qp import qp_active_vjp

        c, h, x, v = (np.ascontiguousarray(a, dtype=np.float64)
                      for a in (*self._split(solution.theta), solution.x, v))
        gc, gh, _, ok = qp_active_vjp(self._Qinv, self.G, h, c, x, v, _ACTIVE_TOL)
        _require_licq(np.array([ok]))
        return (gc,) if self.h is not None else (gc, gh)

    def _solve_batch(self, C, H=None):
        """Solve every row of ``C`` (b, n) (with ``H`` (b, m) when theta is ``(c, h)``)."""
        parts = (C,) if H is None else (C, H)
        H = np.broadcast_to(self.h, (C.shape[0], self.G.shape[0])) if H is None else H
        H = np.ascontiguousarray(H, dtype=np.float64)
        kernel = _kernel("qp_goldfarb_idnani", C.shape[0], self.G.size)
        X, Lam, _, status = kernel(self._Qinv, np.ascontiguousarray(C), self.G, H, 1e-13,
                                   self.max_iter)
        if np.any(status == 1):
            raise ValueError(f"QP: {int(np.sum(status == 1))} of {C.shape[0]} rows have "
                             "infeasible constraints G x <= h")
        # rows whose relative KKT residual shows the dual method's rounding (|c| >> |h|):
        # the null-space polish of :meth:`_solve`, row by row (rare)
        Q, G = self.Q, self.G
        stat = np.abs(X @ Q + C + Lam @ G).max(axis=1) / np.maximum(
            (np.abs(C) + np.abs(X) @ np.abs(Q) + np.abs(Lam) @ np.abs(G)).max(axis=1), 1e-300)
        hs = np.maximum(np.abs(H) + np.abs(X) @ np.abs(G.T), 1e-300)
        slack = H - X @ G.T
        infeasible = (np.maximum(-slack, 0.0) / hs).max(axis=1, initial=0.0)
        complementarity = (np.abs(Lam * slack) / hs).max(axis=1, initial=0.0) / np.maximum(
            np.abs(Lam).max(axis=1, initial=0.0), 1e-300)
        worst = np.maximum(stat, np.maximum(infeasible, complementarity))
        for r in np.flatnonzero((status == 0) & (worst > 1e-14)):
            polished = self._polish(X[r], Lam[r], C[r], H[r])
            if polished is not None and (self._residual(*polished, C[r], H[r])
                                         < self._residual(X[r], Lam[r], C[r], H[r])):
                X[r] = polished[0]
        if np.any(status == 2):
            warnings.warn(f"QP: {int(np.sum(status == 2))} rows hit max_iter={self.max_iter}; "
                          "raise max_iter", ConvergenceWarning, stacklevel=3)
        return BatchSolution(x=X, parts=parts)

    def _vjp_batch(self, batch, V):
        """``((grad_C[, grad_H]), margins)`` of every row."""
        C = batch.parts[0]
        H = (np.broadcast_to(self.h, (C.shape[0], self.G.shape[0])) if self.h is not None
             else batch.parts[1])
        return self._active_vjp(C, H, batch.x, V)

    def _active_vjp(self, C, H, X, V):
        """Return the active-set closed form on rows ``(C, H, X, V)``: ``(grads, margins)``."""
        kernel = _kernel("qp_active_vjp", C.shape[0], self.G.size)
        GC, GH, margins, ok = kernel(self._Qinv, self.G, np.ascontiguousarray(C),
                                     np.ascontiguousarray(H), np.ascontiguousarray(X),
                                     np.ascontiguousarray(V), _ACTIVE_TOL)
        _require_licq(ok)
        return ((GC,) if self.h is not None else (GC, GH)), margins


def _require_licq(ok):
    """Raise where a row's active normals are linearly dependent (``ok`` False)."""
    if not np.all(ok):
        raise SingularSystemError(
            f"QP: the active constraints are linearly dependent in {int(np.sum(~ok))} "
            "row(s) (degenerate vertex: LICQ fails), so the closed form is singular; use "
            "Implicit(pinv=True) for the minimum-norm gradient or Implicit(damping=1e-8)")


def _kkt_residual(stationarity, slack, lam, grad_scale, slack_scale):
    """Largest of stationarity, infeasibility and complementarity, each relative to its terms.

    ``grad_scale`` (n,) bounds the terms of ``Q x + c + G^T lam`` (``|c| + |Q||x| +
    |G^T||lam|``), ``slack_scale`` (m,) those of ``h - G x`` (``|h| + |G||x|``): rescaling the
    data rescales both, so the residual (and ``tol``) are scale-free.
    """
    gs = float(np.max(grad_scale, initial=0.0)) or 1.0
    hs = np.where(slack_scale > 0, slack_scale, 1.0)
    lam_scale = float(np.abs(lam).max(initial=0.0)) or 1.0
    return max(float(np.abs(stationarity).max(initial=0.0)) / gs,
               float((np.maximum(-slack, 0.0) / hs).max(initial=0.0)),
               float((np.abs(lam * slack) / hs).max(initial=0.0)) / lam_scale)


@register_problem
class NNLS(Problem):
    r"""Non-negative least squares ``1/2 ||A x - b||^2`` s.t. ``x >= 0``; theta ``b``.

    .. math:: x^*(b) = \arg\min_{x \ge 0} \tfrac12 \|A x - b\|^2, \qquad
              \Big(\frac{\partial x^*}{\partial b}\Big)^\top v
              = A_F (A_F^\top A_F)^{-1} v_F

    on the free set ``F = {i : x*_i > 0}`` (strict complementarity, ``A_F`` of full
    column rank); the multipliers of ``-x <= 0`` are ``lam = A^T (A x* - b) >= 0``.

    Parameters
    ----------
    A : array_like, shape (m, n)
    tol : float, optional
        Dual tolerance of Lawson-Hanson, relative to ``max |b_i|`` (default
        ``10 eps ||A||_1 max(m, n)`` as SciPy, times ``max |b_i|``: rescaling ``b``
        rescales ``x*`` and nothing else).
    max_iter : int, optional
        Cap on inner iterations (default ``3 n + 10``).

    Notes
    -----
    Solver: Lawson-Hanson in numba (:func:`bilevel.solvers.qp.nnls_lawson_hanson`), the
    algorithm of ``scipy.optimize.nnls``. ``Solution.info`` has ``lam`` and ``active`` (the
    zero set). Capabilities: ``constraints`` (affine), ``analytic_vjp``, ``dual`` (the
    value's gradient ``b - A x*``); batched for :class:`bilevel.torch.Layer`; ``mirror``:
    entropic mirror descent on the orthant, for :class:`~bilevel.strategies.BregmanUnroll`;
    ``manifold``: the free set's face ``{x : x_A = 0}``, ``H_M = A_F^T A_F``, for
    :class:`~bilevel.strategies.PartialSmoothness`; ``step``: the projected gradient step
    ``max(x - A^T(Ax - b)/L, 0)``, ``L = ||A||_2^2``.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.NNLS(np.eye(2))
    >>> prob.solve(np.array([1.0, -2.0])).x          # the projection onto the orthant
    array([1., 0.])
    """

    name = "nnls"
    tol = 1e-10

    def __init__(self, A, tol=None, max_iter=None):
        A = check_array(A, "A", ndim=2)
        if A.size == 0:
            raise ValueError(f"A must be non-empty, got shape {A.shape}")
        self.A = np.ascontiguousarray(A)
        m, n = A.shape
        eps = np.finfo(np.float64).eps
        self.dual_tol = (10 * eps * np.abs(A).sum(axis=0).max() * max(m, n)
                         if tol is None else float(tol))
        if not (self.dual_tol > 0):
            raise ValueError(f"tol must be > 0, got {tol}")
        self.max_iter = int(max_iter) if max_iter is not None else 3 * n + 10
        self._kkt = KKT(self.objective, ineq=self.ineq, affine=True)
        self._At = torch.from_numpy(self.A)
        self.lipschitz = max(float(np.linalg.norm(self.A, 2)) ** 2, 1e-300)

    def __repr__(self):
        return f"NNLS(A of shape {self.A.shape})"

    def offers(self):
        """Affine KKT, the free-set closed form and face, the dual, mirror, a step, batches."""
        return Capabilities(
            constraints=self._kkt, analytic_vjp=self.analytic_vjp, dual=self._kkt.dual,
            mirror=self.mirror, manifold=self.manifold,
            step=StepMap(self.step, start=self.init),
            batch=Batch(theta_ndim=(1,), solve=self._solve_batch, analytic_vjp=self._vjp_batch),
            why_not={"optimality": _KKT_OPTIMALITY.format(what="bounds x >= 0"),
                     "straight_through": "theta is b (m,) and x* the coefficients (n,): x* does "
                                         "not approximate b, and is piecewise affine in it with "
                                         "its exact Jacobian on the free set (analytic)"})

    @classmethod
    def examples(cls):
        """Return a 4 x 3 design whose solution has one zero (an active bound)."""
        A = np.array([[1.0, 0.2, 0.1], [0.3, 1.0, -0.2], [0.1, 0.4, 1.0], [0.5, 0.0, 0.3]])
        return [("nnls-b", cls(A), np.array([1.0, -1.0, 0.5, 0.2]))]

    check_batch = Problem.check_batch_finite    # check_theta: shapes and finiteness only

    def check_theta(self, theta):
        """``b`` of shape (m,)."""
        return (check_array(_bare(theta), "b", shape=(self.A.shape[0],)),)

    def init(self, parts):
        """Zero (Lawson-Hanson starts from the empty passive set)."""
        return np.zeros(self.A.shape[1])

    def _solve(self, theta, x0):
        from bilevel.solvers.qp import nnls_lawson_hanson

        b = np.ascontiguousarray(_bare(theta), dtype=np.float64)
        x, lam, n_iter, ok = nnls_lawson_hanson(self.A, b, self.dual_tol, self.max_iter)
        grad = self.A.T @ (self.A @ x - b)
        free = x > 0
        # relative to the data's own scale ||A||_max ||b||_inf (1 when b = 0, x* = 0)
        scale = float(np.abs(self.A).max() * np.abs(b).max()) or 1.0
        residual = max(float(np.abs(grad[free]).max(initial=0.0)),
                       float(np.maximum(-grad[~free], 0.0).max(initial=0.0))) / scale
        active = np.flatnonzero(x <= _ACTIVE_TOL * (np.abs(x).max() or 1.0))
        return x, n_iter, residual, {"lam": lam, "nu": np.zeros(0), "active": active}

    # torch maps -----------------------------------------------------------------------
    def objective(self, x, theta):
        """``1/2 ||A x - b||^2``."""
        r = torch.from_numpy(self.A) @ x - _bare(theta)
        return 0.5 * (r * r).sum()

    def ineq(self, x, theta):
        """``-x`` (``x >= 0``)."""
        return -x

    def step(self, x, theta):
        """Projected gradient step ``max(x - A^T(Ax - b)/L, 0)``; fixed point ``x*``."""
        At = self._At
        return torch.relu(x - At.T @ (At @ x - _bare(theta)) / self.lipschitz)

    def manifold(self, solution):
        """Return the face ``{x : x_A = 0}`` of the free set ``F``, ``H_M = A_F^T A_F``.

        ``E_M(z, b) = 1/2 ||A_F z - b||^2``: ``d_b grad_z E_M = -A_F^T``. The margin is the
        smallest of the active set's multipliers ``(A^T(Ax* - b))_A`` (relative to
        ``||A^T(Ax* - b)||_inf``) and the free entries (relative to ``||x*||_inf``), as the
        closed form's: scale-free, like the solve.
        """
        b = np.asarray(_bare(solution.theta), dtype=np.float64)
        x = solution.x
        xnorm = float(np.abs(x).max()) or 1.0
        free = np.flatnonzero(x > _ACTIVE_TOL * xnorm)
        bound = np.setdiff1d(np.arange(x.size), free)
        grad = self.A.T @ (self.A @ x - b)
        gscale = float(np.abs(grad).max()) or 1.0
        margin = min(float((x[free] / xnorm).min(initial=np.inf)),
                     float((grad[bound] / gscale).min(initial=np.inf)))
        AF = self.A[:, free]
        solve = restricted_solver(AF.T @ AF, f"the free set ({free.size} entries: A_F has "
                                  "dependent columns)", "Or use Implicit(pinv=True).")

        def lift(z):
            out = np.zeros(x.size)
            out[free] = z
            return out

        return Manifold(kind="free set", dim=free.size, margin=margin,
                        restrict=lambda v: np.asarray(v, dtype=np.float64).ravel()[free],
                        lift=lift, solve=solve, theta_vjp=lambda u: (-(AF @ u),),
                        theta_jvp=lambda dtheta: -(AF.T @ np.asarray(dtheta[0], np.float64)),
                        info={"free": free, "active": bound, "lam": grad[bound]},
                        coordinates=free)

    def mirror(self, solution):
        """Entropic mirror descent ``x+ = x exp(-tau A^T(Ax - b))``, for ``bregman``.

        From ``x0 = 1`` (independent of theta), ``tau = 1/(||A||_2^2 R)`` with
        ``R = max(1, 2 max x*)`` (without ``x*``: ``2||b|| / sigma_min(A)``, a bound on
        ``||x*||``), so that ``f`` is smooth relative to the entropy on the box ``x <= R``
        where the iterates live (Bauschke, Bolte, Teboulle 2017).
        """
        from bilevel._types import Mirror
        from bilevel.solvers import bregman as kernels

        b = np.asarray(_bare(solution.theta), dtype=np.float64)
        H = self.A.T @ self.A
        eig = np.linalg.eigvalsh(H)
        scale = (2.0 * float(np.linalg.norm(b)) / np.sqrt(max(eig[0], 1e-300))
                 if solution.x is None else 2.0 * float(np.max(solution.x, initial=0.0)))
        radius = max(scale, 1.0)
        x0 = np.ones(self.A.shape[1])
        c = -self.A.T @ b
        At = torch.from_numpy(self.A)

        def forward(n_steps, tol, tau, sigma):
            x, n, r = kernels.bregman_quadratic(H, c, x0.reshape(1, -1), kernels.ENTROPY, tau,
                                                n_steps, tol)
            return (x.ravel(),), n, r

        return Mirror(kind="entropy", scheme="gradient", start=(x0,),
                      step_size=1.0 / (max(eig[-1], 1e-300) * radius),
                      gradient=lambda x, b: At.T @ (At @ x - _bare(b)), forward=forward,
                      info={"method": "entropic mirror descent"})

    # closed forms ---------------------------------------------------------------------
    def analytic_vjp(self, solution, v):
        """``A_F (A_F^T A_F)^{-1} v_F`` (the one-problem kernel)."""
        from bilevel.solvers.qp import nnls_active_vjp

        b, x, v = (np.ascontiguousarray(a, dtype=np.float64)
                   for a in (_bare(solution.theta), solution.x, v))
        g, _, ok = nnls_active_vjp(self.A, b, x, v, _ACTIVE_TOL)
        _require_full_rank(np.array([ok]))
        return (g,)

    def _solve_batch(self, B):
        """Solve every row of ``B`` (r, m); return ``X`` (r, n)."""
        kernel = _kernel("nnls_lawson_hanson", B.shape[0], self.A.size)
        X, _, _, ok = kernel(self.A, np.ascontiguousarray(B), self.dual_tol, self.max_iter)
        if not np.all(ok):
            warnings.warn(f"NNLS: {int(np.sum(~ok))} rows hit max_iter={self.max_iter}; "
                          "raise max_iter", ConvergenceWarning, stacklevel=3)
        return BatchSolution(x=X, parts=(B,))

    def _vjp_batch(self, batch, V):
        """``((grad_B,), margins)`` of every row."""
        return self._free_vjp(batch.parts[0], batch.x, V)

    def _free_vjp(self, B, X, V):
        """``A_F (A_F^T A_F)^{-1} v_F`` on rows ``(B, X, V)``: ``((grad_B,), margins)``."""
        kernel = _kernel("nnls_active_vjp", B.shape[0], self.A.size)
        G, margins, ok = kernel(self.A, np.ascontiguousarray(B), np.ascontiguousarray(X),
                                np.ascontiguousarray(V), _ACTIVE_TOL)
        _require_full_rank(ok)
        return (G,), margins


def _require_full_rank(ok):
    """Raise where a row's free columns of ``A`` are rank-deficient (``ok`` False)."""
    if not np.all(ok):
        raise SingularSystemError(
            f"NNLS: A restricted to the positive entries is rank-deficient in "
            f"{int(np.sum(~ok))} row(s) (x* not unique); use Implicit(pinv=True) for the "
            "minimum-norm gradient or Implicit(damping=1e-8)")
