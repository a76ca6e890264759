r"""Problems over (products of) simplices: quadratics, a matrix game, and the softmax.

.. math:: x^*(b) = \arg\min_{x \in \Delta} \tfrac12\|Ax - b\|^2, \qquad
          X^*(C) = \arg\min_{X_p \in \Delta_K} \langle C, X\rangle + \tfrac\alpha2\|X\|^2
          + \tfrac\mu2 \sum_{p\sim q}\|X_p - X_q\|^2,

.. math:: (x^*, y^*)(A) = \arg\min_{x\in\Delta_m}\max_{y\in\Delta_n} x^\top A y, \qquad
          x^*(z) = \arg\min_{x \in \Delta} -\langle z, x\rangle + \sum_i x_i \log x_i
          = \mathrm{softmax}(z).

The quadratics and the game offer a smooth Bregman method (the softmax update of the
entropy on the simplex; a primal-dual method for the game) as the ``mirror`` capability,
for :class:`~bilevel.strategies.BregmanUnroll`, and the exact derivative on the support of
the solution as ``analytic_vjp``: with ``S`` the support and ``E`` the rows' indicator,
the KKT system ``H_SS x_S + c_S = E nu``, ``E^T x_S = 1`` is linear, so
``dx_S = -[M^{-1} (dc_S, 0)]_x`` with ``M = [[H_SS, -E], [-E^T, 0]]``. The entropy keeps
the softmax in the interior of the simplex: its Jacobian is ``diag(x*) - x* x*^T``.

The quadratics also offer the support's face ``{x_{S^c} = 0, E^T x_S = 1}`` as their active
manifold (``partial_smoothness``: the same system ``M``), the KKT description of the
simplices (``implicit``) and the projected gradient step (``fixed_point``, ``unroll``); the
game offers its value's gradient ``x* y*^T`` (``value_function``).
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import (
    Batch,
    BatchSolution,
    Dual,
    Manifold,
    Mirror,
    Optimality,
    SingularSystemError,
    StepMap,
    as_tuple,
)
from bilevel.problems.base import (
    Capabilities,
    Problem,
    check_array,
    check_scalar,
    no_kinks,
    pick_kernel,
)
from bilevel.problems.kkt import KKT
from bilevel.problems.projections import _torch_simplex

__all__ = ["EntropicSimplex", "MatrixGame", "MultiLabelSegmentation", "SimplexLeastSquares"]

# Entries of an iterate below this (relative to the row's largest) leave the support.
_SUPPORT_TOL = 1e-9
# Largest number of variables for which the support's KKT system is solved densely.
_DENSE_MAX = 3000
# Batches with fewer entries run serially (see bilevel.solvers.serial).
_PARALLEL_MIN = 200_000
# Condition number above which the support's KKT matrix counts as singular.
_COND_MAX = 1e13

# Why a problem lacks a capability (Capabilities.why_not), shared by the quadratics.
_FACE_OPTIMALITY = ("x* lies on a face of the simplex (zero coordinates, a multiplier for "
                    "sum x = 1): its optimality conditions are the KKT system of constraints "
                    "(implicit), not a residual in x alone")
_NOT_A_SURROGATE = ("x* is a Lipschitz map of {theta} with its exact Jacobian on the support "
                    "(analytic), and does not approximate {theta}: the identity backward is a "
                    "baseline for discontinuous maps of a signal to its own shape (partitions, "
                    "quantizers)")


def _kernel(name, Z):
    """Pick the ``prange`` kernel for large batches, its serial twin for small ones."""
    from bilevel.solvers import projections

    return pick_kernel(projections, name, Z.size >= _PARALLEL_MIN)


def _support_kkt(H, X):
    """Dense KKT matrix ``M`` on the support of ``X`` (m, d) for ``x^T H x/2 + c^T x``.

    Returns ``(M, support mask (m, d), row index of each support entry)``.
    """
    m, d = X.shape
    mask = X > _SUPPORT_TOL * X.max(axis=1, keepdims=True)
    flat = np.flatnonzero(mask.ravel())
    rows = flat // d
    k = flat.size
    M = np.zeros((k + m, k + m))
    M[:k, :k] = H[np.ix_(flat, flat)]
    M[np.arange(k), k + rows] = -1.0
    M[k + rows, np.arange(k)] = -1.0
    return M, mask, flat


def _polish(H, c, X):
    """Solve the KKT system on ``X``'s support exactly; keep it if it stays feasible."""
    from bilevel.solvers import bregman as kernels

    if X.size > _DENSE_MAX:
        return X
    m, d = X.shape
    M, _, flat = _support_kkt(H, X)
    rhs = np.concatenate([-c[flat], -np.ones(m)])
    try:
        sol = np.linalg.solve(M, rhs)
    except np.linalg.LinAlgError:
        return X
    xs = sol[:flat.size]
    if np.any(xs <= 0):
        return X
    Y = np.zeros(X.size)
    Y[flat] = xs
    Y = Y.reshape(m, d)
    g = lambda Z: (H @ Z.ravel() + c).reshape(m, d)  # noqa: E731
    before = kernels.natural_residual(X, g(X), kernels.SIMPLEX)
    after = kernels.natural_residual(Y, g(Y), kernels.SIMPLEX)
    return Y if after < before else X


def _support_vjp(H, X, v):
    """``(dX*/dc)^T v`` for ``min x^T H x/2 + c^T x`` over rows of simplices, on the support."""
    m, d = X.shape
    M, _, flat = _support_kkt(H, X)
    rhs = np.concatenate([np.ravel(v)[flat], np.zeros(m)])
    try:
        u = np.linalg.solve(M, rhs)[:flat.size]
    except np.linalg.LinAlgError:
        raise SingularSystemError(
            "the KKT system on the support of x* is singular: the quadratic is not strictly "
            "convex there (duplicated or collinear columns of A make the minimizer non-unique "
            "and x* not differentiable); remove duplicated or collinear columns, or add a "
            "small ridge term") from None
    g = np.zeros(X.size)
    g[flat] = -u
    return g


def _support_manifold(H, X, grad, theta_vjp, theta_jvp, remedy):
    """Return the face of rows of simplices that ``X`` (m, d) lies on (Hessian ``H``).

    ``{x : x_{S^c} = 0, each row of x_S sums to 1}``, in the coordinates ``x_S``:
    ``solve(b)`` is the x-part of ``M^{-1} (b, 0)`` with the support's KKT matrix ``M``, which
    is ``B (B^T H_SS B)^{-1} B^T b`` for a basis ``B`` of the face's tangent space.
    ``grad`` (m d,) is ``grad f(X)``; the margin is the smallest of the off-support
    multipliers ``g_j - g_S`` (relative to ``max(1, ||g||_inf)``) and the support entries
    (relative to their row's largest). ``theta_vjp(flat, u)``, ``theta_jvp(flat, dtheta)``
    on the support's flat indices.
    """
    m, d = X.shape
    M, mask, flat = _support_kkt(H, X)
    k = flat.size
    G = np.asarray(grad, dtype=np.float64).reshape(m, d)
    g_support = (np.where(mask, G, 0.0).sum(axis=1) / mask.sum(axis=1))[:, None]
    scale = max(1.0, float(np.abs(G).max()))
    off = ((G - g_support) / scale)[~mask]
    on = (X / X.max(axis=1, keepdims=True))[mask]
    margin = float(min(off.min(initial=np.inf), on.min(initial=np.inf)))
    singular = bool(np.linalg.cond(M) > _COND_MAX)

    def solve(b, pinv=False):
        rhs = np.concatenate([np.asarray(b, dtype=np.float64), np.zeros(m)])
        if singular and not pinv:
            raise SingularSystemError(
                f"the Hessian restricted to the support's face ({k} entries) is singular: x* "
                "is not unique on it. PartialSmoothness(pinv=True) gives the minimum-norm "
                "derivative. " + remedy)
        if singular:
            return np.linalg.lstsq(M, rhs, rcond=1.0 / _COND_MAX)[0][:k]
        return np.linalg.solve(M, rhs)[:k]

    def lift(z):
        out = np.zeros(m * d)
        out[flat] = z
        return out.reshape(X.shape)

    return Manifold(kind="support", dim=k - m, margin=margin,
                    restrict=lambda v: np.asarray(v, dtype=np.float64).ravel()[flat],
                    lift=lift, solve=solve,
                    theta_vjp=lambda u: theta_vjp(flat, u),
                    theta_jvp=lambda dtheta: theta_jvp(flat, dtheta),
                    info={"support": mask}, coordinates=flat)


def _simplex_multipliers(G, X):
    """Exact multipliers of ``sum x = 1`` (``nu``, per row) and ``x >= 0`` (``lam``).

    From ``g + nu 1 - lam = 0`` with ``lam = 0`` on the support: ``nu = -mean_S g``,
    ``lam = g + nu`` (zero on the support, in the order of ``-x``).
    """
    mask = X > _SUPPORT_TOL * X.max(axis=1, keepdims=True)
    nu = -(np.where(mask, G, 0.0).sum(axis=1) / mask.sum(axis=1))
    lam = np.where(mask, 0.0, G + nu[:, None])
    return {"nu": nu, "lam": lam.ravel()}


def _solve_simplices(H, c, X0, kind_tau, tol, max_iter):
    """Bregman iterations, then an exact solve on the identified support."""
    from bilevel.solvers import bregman as kernels

    X, n_iter, residual = kernels.bregman_quadratic(H, c, X0, kernels.SIMPLEX, kind_tau,
                                                    max_iter, tol)
    if residual > tol:
        X = _polish(H, c, X)
        residual = kernels.natural_residual(X, (H @ X.ravel() + c).reshape(X.shape),
                                            kernels.SIMPLEX)
    return X, n_iter, residual


@register_problem
class SimplexLeastSquares(Problem):
    r"""Least squares over the unit simplex, ``min_{x in Delta} ||Ax - b||^2/2``; theta ``b``.

    Parameters
    ----------
    A : ndarray, shape (m, n)
        Design; with full column rank the minimizer is unique.
    tol : float
        Tolerance on the natural residual ``||x - P_Delta(x - grad f(x) / L)||_inf``,
        ``L = ||A||_2^2`` (scale-free: ``(c A, c b)`` has the solution of ``(A, b)``).
    max_iter : int
        Iterations of the entropic mirror descent before the exact polish on the support.

    Notes
    -----
    Solver: entropic mirror descent ``x+ = softmax(log x - A^T(Ax - b)/L)``,
    ``L = ||A||_2^2``, from the barycentre, then the KKT system on the identified support.
    Capabilities: ``mirror`` (that method), ``analytic_vjp`` (the derivative on the
    support: ``dx_S/db = [M^{-1}(A_S^T, 0)]_x``), ``manifold`` (the support's face, the same
    system), ``constraints`` (``sum x = 1``, ``x >= 0``; exact multipliers in
    ``Solution.info``), ``step`` (the projected gradient step
    ``P_Delta(x - A^T(Ax - b)/L)``), ``energy``, ``dual``: the value
    ``p(b) = min ||Ax - b||^2/2`` has ``grad p(b) = b - A x*``, the dual solution, unique
    even where ``x*`` is not (``A`` without full column rank).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.SimplexLeastSquares(np.eye(3))
    >>> np.round(prob.solve(np.array([1.0, 0.5, -1.0])).x, 6)   # projection onto the simplex
    array([0.75, 0.25, 0.  ])
    """

    name = "simplex_ls"

    def __init__(self, A, tol=1e-12, max_iter=20000):
        self.A = np.ascontiguousarray(check_array(A, "A", ndim=2))
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        self.tol, self.max_iter = float(tol), int(max_iter)
        self.H = self.A.T @ self.A
        self._At = torch.from_numpy(self.A)
        self.lipschitz = max(float(np.linalg.eigvalsh(self.H)[-1]), 1e-300)

    def __repr__(self):
        return f"SimplexLeastSquares(A of shape {self.A.shape})"

    def offers(self):
        """Mirror descent, the support's closed form and face, KKT, a step, E, the dual."""
        return Capabilities(
            mirror=self.mirror, analytic_vjp=self.analytic_vjp, manifold=self.manifold,
            constraints=KKT(self.energy, eq=_row_sums, ineq=_negative, affine=True),
            step=StepMap(self.step, start=self.init), energy=self.energy, dual=self.dual,
            batch=Batch(theta_ndim=(1,)),
            why_not={"optimality": _FACE_OPTIMALITY,
                     "straight_through": _NOT_A_SURROGATE.format(theta="b")})

    @classmethod
    def examples(cls):
        """Return a support with clear margins."""
        A = np.array([[1.0, 0.2, 0.1], [0.3, 1.0, -0.2], [0.1, 0.4, 1.0], [0.5, 0.0, 0.3]])
        return [("simplex_ls-b", cls(A), np.array([1.0, 0.6, -0.5, 0.2]))]

    check_batch = Problem.check_batch_finite    # check_theta: shapes and finiteness only

    def check_theta(self, theta):
        """``b`` of shape (m,), finite."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError("SimplexLeastSquares takes theta = b, one array of shape (m,)")
            theta = theta[0]
        return (check_array(theta, "b", shape=(self.A.shape[0],)),)

    def init(self, parts):
        """Start from the barycentre ``1/n``."""
        return np.full(self.A.shape[1], 1.0 / self.A.shape[1])

    def _solve(self, theta, x0):
        x0 = np.maximum(x0, 1e-12)
        x0 = (x0 / x0.sum()).reshape(1, -1)
        c = -self.A.T @ as_tuple(theta)[0]
        # f / L has the same minimizer and a gradient in the units of x (on the simplex):
        # the natural residual of f / L, and so tol, are scale-free, x*(cA, cb) = x*(A, b).
        X, n_iter, residual = _solve_simplices(self.H / self.lipschitz, c / self.lipschitz, x0,
                                               1.0, self.tol, self.max_iter)
        return X.ravel(), n_iter, residual, _simplex_multipliers(
            (self.H @ X.ravel() + c).reshape(X.shape), X)

    # torch maps -----------------------------------------------------------------------
    def energy(self, x, theta):
        """``||Ax - b||^2 / 2`` (the constraint is implicit)."""
        r = self._At @ x - as_tuple(theta)[0]
        return 0.5 * (r @ r)

    def step(self, x, theta):
        """Projected gradient step ``P_Delta(x - A^T(Ax - b) / L)``; fixed point ``x*``."""
        b = as_tuple(theta)[0]
        return _torch_simplex(x - self._At.T @ (self._At @ x - b) / self.lipschitz, 1.0)

    def manifold(self, solution):
        """Return the support's face, ``H_M`` the Gram matrix on it (the KKT matrix ``M``)."""
        b = np.asarray(as_tuple(solution.theta)[0], dtype=np.float64)
        X = solution.x.reshape(1, -1)
        return _support_manifold(
            self.H, X, self.H @ solution.x - self.A.T @ b,
            lambda flat, u: (-(self.A[:, flat] @ u),),
            lambda flat, dtheta: -(self.A[:, flat].T @ np.asarray(dtheta[0], np.float64)),
            "A restricted to the support has dependent columns.")

    def mirror(self, solution):
        """Entropic mirror descent from the barycentre, step ``1/L``."""
        from bilevel.solvers import bregman as kernels

        b = np.asarray(as_tuple(solution.theta)[0], dtype=np.float64)
        c = -self.A.T @ b
        x0 = self.init(None)

        def forward(n_steps, tol, tau, sigma):
            x, n, r = kernels.bregman_quadratic(self.H, c, x0.reshape(1, -1), kernels.SIMPLEX,
                                                tau, n_steps, tol)
            return (x.ravel(),), n, r

        return Mirror(kind="simplex", scheme="gradient", start=(x0,),
                      step_size=1.0 / self.lipschitz,
                      gradient=lambda x, b: self._At.T @ (self._At @ x - as_tuple(b)[0]),
                      forward=forward, info={"method": "entropic mirror descent"})

    def dual(self, solution):
        """``grad p(b) = b - A x*``: the residual, the same for every minimizer."""
        b = np.asarray(as_tuple(solution.theta)[0], dtype=np.float64)
        y = b - self.A @ solution.x
        return Dual(value=0.5 * float(y @ y), gradient=y.copy(), y=y,
                    gap=solution.info.get("residual", 0.0), info={"method": "residual"})

    def analytic_vjp(self, solution, v):
        """``A_S u`` with ``u`` from the KKT system on the support."""
        g_c = _support_vjp(self.H, solution.x.reshape(1, -1), v)
        return (-self.A @ g_c,)


@register_problem
class MultiLabelSegmentation(Problem):
    r"""Multi-label segmentation of a pixel grid, relaxed to per-pixel label simplices.

    .. math:: X^*(C) = \arg\min_{X_p\in\Delta_K}\ \langle C, X\rangle
              + \tfrac\alpha2\|X\|^2 + \tfrac\mu2\sum_{p\sim q}\|X_p - X_q\|^2

    over the 4-neighbour grid; theta is the cost ``C`` of shape (h, w, K) (for instance
    ``(I_p - c_k)^2`` for an image ``I`` and label colours ``c_k``).

    Parameters
    ----------
    mu : float
        Smoothness weight (> 0).
    alpha : float
        Strong-convexity weight (> 0): makes the minimizer unique.
    tol : float
        Tolerance on the natural residual of ``E / (alpha + 8 mu)`` (scale-free:
        ``(c C, c mu, c alpha)`` has the solution of ``(C, mu, alpha)``).
    max_iter : int
        Iterations of the entropic mirror descent.

    Notes
    -----
    Solver: ``log X+ = log X - tau grad E(X)`` normalized per pixel (softmax update),
    ``tau = 1/(alpha + 8 mu)``, then, for up to 3000 variables, the KKT system on the
    identified support. Capabilities: ``mirror``, ``analytic_vjp`` (the support's KKT
    system), ``manifold`` (every pixel's support face, the same system), ``constraints``
    (the pixel simplices; exact multipliers in ``Solution.info``), ``step`` (the projected
    gradient step), ``energy``.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> C = np.zeros((2, 2, 2)); C[..., 1] = 1.0    # label 0 is cheaper everywhere
    >>> X = bl.problems.MultiLabelSegmentation(mu=0.5).solve(C).x
    >>> bool(np.allclose(X[..., 0], 1.0))
    True
    """

    name = "segmentation"

    def __init__(self, mu=1.0, alpha=0.1, tol=1e-11, max_iter=50000):
        mu, alpha = check_scalar(mu, "mu"), check_scalar(alpha, "alpha")
        if not (mu > 0 and alpha > 0):
            raise ValueError(f"mu and alpha must be finite and > 0, got mu={mu}, alpha={alpha}")
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        self.mu, self.alpha, self.tol, self.max_iter = float(mu), float(alpha), float(tol), \
            int(max_iter)
        self._hessians = {}

    def __repr__(self):
        return f"MultiLabelSegmentation(mu={self.mu}, alpha={self.alpha})"

    def offers(self):
        """Softmax updates, the supports' closed form and face, KKT, a step, the energy."""
        return Capabilities(
            mirror=self.mirror, analytic_vjp=self.analytic_vjp, manifold=self.manifold,
            constraints=KKT(self.energy, eq=_row_sums, ineq=_negative, affine=True),
            step=StepMap(self.step, start=self.init), energy=self.energy,
            batch=Batch(theta_ndim=(3,)),
            why_not={"optimality": _FACE_OPTIMALITY,
                     "straight_through": _NOT_A_SURROGATE.format(theta="the cost C"),
                     "dual": "<C, X> is bilinear, not jointly convex in (X, C): p(C) has no "
                             "convex dual; its gradient X* is the envelope theorem's "
                             "grad_C E(X*, C) (envelope)"})

    @classmethod
    def examples(cls):
        """Two pixels, three labels, a clear winner each."""
        return [("segmentation-pixels", cls(mu=0.2, alpha=0.5),
                 np.array([[[0.0, 0.3, 2.0], [0.2, 0.1, 2.0]]]))]

    check_batch = Problem.check_batch_finite    # check_theta: shapes and finiteness only

    def check_theta(self, theta):
        """``C`` of shape (h, w, K) with K >= 2, finite."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError("MultiLabelSegmentation takes theta = C of shape (h, w, K)")
            theta = theta[0]
        C = check_array(theta, "C", ndim=3)
        if C.shape[2] < 2:
            raise ValueError(f"C must have at least 2 labels (last axis), got shape {C.shape}")
        return (np.ascontiguousarray(C),)

    def init(self, parts):
        """Uniform label probabilities."""
        C = parts[0]
        return np.full(C.shape, 1.0 / C.shape[2])

    @property
    def step_size(self):
        """``1 / (alpha + 8 mu)``: the inverse Lipschitz constant (the grid Laplacian <= 8)."""
        return 1.0 / (self.alpha + 8.0 * self.mu)

    def _hessian(self, shape):
        """Dense ``alpha I + mu L (x) I_K`` for small grids (cached)."""
        if shape not in self._hessians:
            h, w, k = shape
            P = h * w
            L = np.zeros((P, P))
            for i in range(h):
                for j in range(w):
                    p = i * w + j
                    for di, dj in ((1, 0), (0, 1)):
                        if i + di < h and j + dj < w:
                            q = (i + di) * w + j + dj
                            L[p, p] += 1
                            L[q, q] += 1
                            L[p, q] -= 1
                            L[q, p] -= 1
            self._hessians[shape] = self.alpha * np.eye(P * k) + self.mu * np.kron(L, np.eye(k))
        return self._hessians[shape]

    def _solve(self, theta, x0):
        from bilevel.solvers import bregman as kernels

        C = np.asarray(as_tuple(theta)[0], dtype=np.float64)
        X0 = np.maximum(x0, 1e-12)
        X0 = np.ascontiguousarray(X0 / X0.sum(axis=2, keepdims=True))
        # E / L (L = alpha + 8 mu) has the same minimizer and a gradient in the units of X:
        # its natural residual, and so tol, are scale-free ((c C, c mu, c alpha) ~ (C, mu,
        # alpha)), and the step 1 / L becomes 1.
        L = 1.0 / self.step_size
        X, n_iter, residual = kernels.bregman_segmentation(
            np.ascontiguousarray(C / L), self.mu / L, self.alpha / L, X0, 1.0, self.max_iter,
            self.tol)
        if residual > self.tol and C.size <= _DENSE_MAX:
            H = self._hessian(C.shape)
            X = _polish(H / L, C.ravel() / L, X.reshape(-1, C.shape[2])).reshape(C.shape)
            G = (H @ X.ravel() + C.ravel()).reshape(-1, C.shape[2]) / L
            residual = kernels.natural_residual(X.reshape(-1, C.shape[2]), G, kernels.SIMPLEX)
        G = self.gradient(torch.from_numpy(X), torch.from_numpy(C)).numpy()
        return X, n_iter, residual, _simplex_multipliers(G.reshape(-1, C.shape[2]),
                                                         X.reshape(-1, C.shape[2]))

    # torch maps -----------------------------------------------------------------------
    def _laplacian(self, X):
        """``L X`` by one product with the grid Laplacian (dense up to 1024 pixels)."""
        h, w, k = X.shape
        key = ("laplacian", h, w)
        if key not in self._hessians:
            import scipy.sparse

            def path(n):
                if n == 1:
                    return scipy.sparse.csr_matrix((1, 1))
                return scipy.sparse.diags([np.r_[1.0, 2.0 * np.ones(n - 2), 1.0],
                                           -np.ones(n - 1), -np.ones(n - 1)], [0, 1, -1])

            L = (scipy.sparse.kron(path(h), scipy.sparse.eye(w))
                 + scipy.sparse.kron(scipy.sparse.eye(h), path(w))).tocoo()
            if h * w <= 1024:       # sparse products backpropagate slowly in torch
                self._hessians[key] = torch.from_numpy(L.toarray())
            else:
                self._hessians[key] = torch.sparse_coo_tensor(
                    np.vstack([L.row, L.col]), L.data, (h * w, h * w), dtype=torch.float64,
                    check_invariants=False)
        return (self._hessians[key] @ X.reshape(h * w, k)).reshape(h, w, k)

    def gradient(self, X, C):
        """``C + alpha X + mu L X`` in torch."""
        return as_tuple(C)[0] + self.alpha * X + self.mu * self._laplacian(X)

    def energy(self, X, C):
        """``<C, X> + alpha/2 ||X||^2 + mu/2 sum_{p~q} ||X_p - X_q||^2``."""
        dv = X[1:] - X[:-1]
        dh = X[:, 1:] - X[:, :-1]
        return (as_tuple(C)[0] * X).sum() + 0.5 * self.alpha * (X * X).sum() \
            + 0.5 * self.mu * ((dv * dv).sum() + (dh * dh).sum())

    def step(self, X, C):
        """Projected gradient step ``P_Delta(X - grad E(X) / L)`` per pixel."""
        return _torch_simplex(X - self.step_size * self.gradient(X, C), 1.0)

    def manifold(self, solution):
        """Every pixel's support face; ``H_M`` the energy's Hessian on it (dense, small grids)."""
        X = solution.x
        if X.size > _DENSE_MAX:
            raise ValueError(f"the manifold of MultiLabelSegmentation is dense: {X.size} "
                             f"variables > {_DENSE_MAX}; use the bregman strategy")
        C = np.asarray(as_tuple(solution.theta)[0], dtype=np.float64)
        H = self._hessian(X.shape)
        return _support_manifold(
            H, X.reshape(-1, X.shape[2]), H @ X.ravel() + C.ravel(),
            lambda flat, u: (_embed(flat, u, X.shape),),
            lambda flat, dtheta: np.asarray(dtheta[0], dtype=np.float64).ravel()[flat],
            "Raise alpha.")

    def mirror(self, solution):
        """Per-pixel softmax updates from uniform labels, step ``1/(alpha + 8 mu)``."""
        from bilevel.solvers import bregman as kernels

        C = np.ascontiguousarray(as_tuple(solution.theta)[0], dtype=np.float64)
        X0 = self.init((C,))

        def forward(n_steps, tol, tau, sigma):
            X, n, r = kernels.bregman_segmentation(C, self.mu, self.alpha, X0, tau, n_steps,
                                                   tol)
            return (X,), n, r

        return Mirror(kind="simplex", scheme="gradient", start=(X0,), step_size=self.step_size,
                      gradient=self.gradient, forward=forward,
                      info={"method": "entropic mirror descent"})

    def analytic_vjp(self, solution, v):
        """Solve the support's KKT system, dense (grids up to 3000 variables)."""
        X = solution.x
        if X.size > _DENSE_MAX:
            raise ValueError(f"analytic_vjp of MultiLabelSegmentation is dense: {X.size} "
                             f"variables > {_DENSE_MAX}; use the bregman strategy")
        g = _support_vjp(self._hessian(X.shape), X.reshape(-1, X.shape[2]), v)
        return (g.reshape(X.shape),)


@register_problem
class MatrixGame(Problem):
    r"""Equilibrium of a zero-sum matrix game, ``min_{x in S_m} max_{y in S_n} x^T A y``.

    theta is the payoff ``A`` (m, n); the solution is ``concat(x*, y*)`` of shape
    (m + n,), unique for a non-degenerate game.

    Parameters
    ----------
    tol : float
        Tolerance on the natural residuals of both players, for the payoff
        ``A / max|A_ij|`` (relative: scaling ``A`` changes nothing).
    max_iter : int
        Iterations of the entropic primal-dual method.

    Notes
    -----
    Solver: the Bregman primal-dual method with the entropy on both simplices,
    ``x+ = softmax(log x - tau A y)``, ``y+ = softmax(log y + sigma A^T(2x+ - x))``,
    ``tau = sigma = 0.9 / max|A_ij|``, then the equilibrium equations on the supports
    ``(S_x, S_y)``: ``A_{S_x S_y} y = v 1``, ``A_{S_x S_y}^T x = v 1``, ``1^T x = 1^T y = 1``.
    Their derivative is ``analytic_vjp``. ``dual``: the game's value ``p(A) = x*^T A y*``
    has the gradient ``x* y*^T`` (Danskin's theorem for the saddle point, where the
    equilibrium is unique).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> A = np.array([[1.0, -1.0], [-1.0, 1.0]])     # matching pennies
    >>> np.round(bl.problems.MatrixGame().solve(A).x, 6)
    array([0.5, 0.5, 0.5, 0.5])
    """

    name = "matrix_game"

    def __init__(self, tol=1e-12, max_iter=50000):
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        self.tol, self.max_iter = float(tol), int(max_iter)

    def __repr__(self):
        return "MatrixGame()"

    def offers(self):
        """Return the primal-dual method, the equilibrium's closed form, the value's gradient."""
        saddle = "(x*, y*) is a saddle point of x^T A y, not a minimizer: "
        return Capabilities(
            mirror=self.mirror, analytic_vjp=self.analytic_vjp, dual=self.dual,
            batch=Batch(theta_ndim=(2,)),
            why_not={
                "optimality": saddle + "its equilibrium conditions are no stationarity of a "
                              "minimized energy and no KKT system of one (the bilinear "
                              "Lagrangian's Hessian has a zero x-block); analytic solves "
                              "the equilibrium equations",
                "constraints": saddle + "the simplices constrain a min-max, whose conditions "
                               "are not the KKT system of a minimization (analytic solves "
                               "the equilibrium equations)",
                "step": "no step in x alone has the equilibrium as fixed point, and gradient "
                        "descent-ascent on (x, y) cycles on a bilinear game: only the "
                        "primal-dual method converges (mirror)",
                "manifold": saddle + "partial smoothness identifies the manifold of a "
                            "minimizer with a positive definite restricted Hessian; the "
                            "supports' equilibrium system is indefinite (analytic)",
                "energy": "the game's energy max_y x^T A y = max_j (A^T x)_j is not "
                          "differentiable in A at a mixed equilibrium (several pure replies "
                          "tie): the envelope theorem needs the saddle point's y* (dual)",
                "straight_through": "theta is the payoff matrix A (m, n) and x* = (x*, y*) "
                                    "the mixed strategies (m + n,): no identity backward"})

    @classmethod
    def examples(cls):
        """Return a game with a fully mixed equilibrium."""
        return [("matrix_game-A", cls(), np.array([[2.0, -1.0], [-1.0, 1.0]]))]

    check_batch = Problem.check_batch_finite    # check_theta: shapes and finiteness only

    def check_theta(self, theta):
        """Validate ``A``: shape (m, n) with m, n >= 1, finite."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError("MatrixGame takes theta = A, the payoff matrix")
            theta = theta[0]
        A = check_array(theta, "A", ndim=2)
        if A.size == 0:
            raise ValueError(f"A must have at least one row and column, got shape {A.shape}")
        return (np.ascontiguousarray(A),)

    def init(self, parts):
        """Uniform mixed strategies."""
        m, n = parts[0].shape
        return np.concatenate([np.full(m, 1.0 / m), np.full(n, 1.0 / n)])

    @staticmethod
    def steps(A):
        """``tau = sigma = 0.9 / max|A_ij|`` (the l1 -> l_inf norm of ``A``)."""
        return 0.9 / max(float(np.max(np.abs(A))), 1e-300)

    def _residual(self, A, x, y):
        from bilevel.solvers import bregman as kernels

        return max(kernels.natural_residual(x.reshape(1, -1), (A @ y).reshape(1, -1),
                                            kernels.SIMPLEX),
                   kernels.natural_residual(y.reshape(1, -1), (-A.T @ x).reshape(1, -1),
                                            kernels.SIMPLEX))

    def _solve(self, theta, x0):
        from bilevel.solvers.bregman import bregman_pd_game

        A = np.asarray(as_tuple(theta)[0], dtype=np.float64)
        m, n = A.shape
        x0 = np.maximum(x0, 1e-12)
        xs, ys = x0[:m] / x0[:m].sum(), x0[m:] / x0[m:].sum()
        # Solve the game of A / max|A_ij| (the same equilibrium): the natural residuals, and
        # so tol, are then relative to the payoffs' scale, and x*(c A) = x*(A) for c > 0.
        A = A / (float(np.max(np.abs(A))) or 1.0)
        step = self.steps(A)
        x, y, n_iter, residual = bregman_pd_game(A, xs, ys, step, step, self.max_iter,
                                                 self.tol)
        if residual > self.tol:
            polished = self._polish(A, x, y)
            if polished is not None:
                r = self._residual(A, *polished)
                if r < residual:
                    (x, y), residual = polished, r
        return np.concatenate([x, y]), n_iter, residual

    @staticmethod
    def _supports(x, y):
        return (np.flatnonzero(x > _SUPPORT_TOL * x.max()),
                np.flatnonzero(y > _SUPPORT_TOL * y.max()))

    @staticmethod
    def _system(B):
        k, n = B.shape
        M = np.zeros((k + 1, n + 1))
        M[:k, :n] = B
        M[:k, n] = -1.0
        M[k, :n] = 1.0
        return M

    def _polish(self, A, x, y):
        Sx, Sy = self._supports(x, y)
        if Sx.size != Sy.size:
            return None
        B = A[np.ix_(Sx, Sy)]
        rhs = np.zeros(Sx.size + 1)
        rhs[-1] = 1.0
        try:
            ys = np.linalg.solve(self._system(B), rhs)[:-1]
            xs = np.linalg.solve(self._system(B.T), rhs)[:-1]
        except np.linalg.LinAlgError:
            return None
        if np.any(xs <= 0) or np.any(ys <= 0):
            return None
        xp, yp = np.zeros_like(x), np.zeros_like(y)
        xp[Sx], yp[Sy] = xs, ys
        return xp, yp

    def dual(self, solution):
        """Return the value ``x*^T A y*`` and its gradient ``x* y*^T`` (Danskin)."""
        A = np.asarray(as_tuple(solution.theta)[0], dtype=np.float64)
        m = A.shape[0]
        x, y = solution.x[:m], solution.x[m:]
        return Dual(value=float(x @ A @ y), gradient=np.outer(x, y), y=y.copy(),
                    gap=float(solution.info.get("residual", 0.0)),
                    info={"method": "Danskin: x* y*^T at the saddle point"})

    # torch maps -----------------------------------------------------------------------
    def mirror(self, solution):
        """Entropic primal-dual method from uniform strategies (``z`` is the player ``y``)."""
        from bilevel.solvers.bregman import bregman_pd_game

        A = np.ascontiguousarray(as_tuple(solution.theta)[0], dtype=np.float64)
        m, n = A.shape
        x0 = self.init((A,))

        def forward(n_steps, tol, tau, sigma):
            x, y, k, r = bregman_pd_game(A, x0[:m].copy(), x0[m:].copy(), tau, sigma,
                                         n_steps, tol)
            return (x, y), k, r

        step = self.steps(A)
        return Mirror(kind="simplex", scheme="primal_dual", start=(x0[:m], x0[m:]),
                      step_size=step, dual_kind="simplex", dual_step_size=step,
                      gradient=lambda x, A: torch.zeros_like(x),
                      operator=lambda x, A: as_tuple(A)[0].T @ x,
                      adjoint=lambda y, A: as_tuple(A)[0] @ y,
                      output=lambda state: torch.cat(state),
                      forward=forward, info={"method": "entropic primal-dual method"})

    def analytic_vjp(self, solution, v):
        """Differentiate the equilibrium equations on the supports."""
        A = np.asarray(as_tuple(solution.theta)[0], dtype=np.float64)
        m, n = A.shape
        x, y = solution.x[:m], solution.x[m:]
        Sx, Sy = self._supports(x, y)
        if Sx.size != Sy.size:
            raise ValueError(f"the equilibrium is degenerate (supports of sizes {Sx.size} and "
                             f"{Sy.size}): it may not be differentiable; use finite_difference")
        B = A[np.ix_(Sx, Sy)]
        vx = np.concatenate([np.ravel(v)[:m][Sx], [0.0]])
        vy = np.concatenate([np.ravel(v)[m:][Sy], [0.0]])
        p = np.linalg.solve(self._system(B).T, vy)[:-1]      # adjoint of dy
        r = np.linalg.solve(self._system(B.T).T, vx)[:-1]    # adjoint of dx
        G = np.zeros_like(A)
        G[np.ix_(Sx, Sy)] = -np.outer(p, y[Sy]) - np.outer(x[Sx], r)
        return (G,)


@register_problem
class EntropicSimplex(Problem):
    r"""``x* = argmin_{x in simplex} -<z, x> + sum x log x = softmax(z)``; theta ``z``.

    Parameters
    ----------
    step_size : float
        ``eta`` in (0, 1) of the entropic mirror-descent step offered as ``step``.

    Notes
    -----
    ``z`` has shape ``(..., n)``; ``x*`` has its shape. Capabilities:

    - ``analytic_vjp``: ``(diag(p) - p p^T) v = p * (v - <p, v>)``, row by row;
    - ``optimality``: the KKT conditions with the multiplier eliminated,

      .. math:: F(x, z) = (\log x - z) - \mathrm{mean}(\log x - z)\,1 + (1^\top x - 1)\,1,

      zero exactly at ``softmax(z)``, with ``d_x F = (I - 1 1^T / n) diag(1/x) + 1 1^T``
      invertible, so that :class:`~bilevel.strategies.Implicit` applies;
    - ``step``: entropic mirror descent (exponentiated gradient) on the energy,
      ``T(x, z) = softmax((1 - eta) log x + eta z)``, whose fixed point is ``x*`` and whose
      Jacobian at ``x*`` has spectral radius ``1 - eta`` (``FixedPoint``, ``Unroll``);
    - ``mirror``: the same iteration as a Bregman proximal-gradient method with the
      simplex's entropy (``BregmanUnroll``), from the uniform distribution;
    - ``energy``.

    :class:`bilevel.torch.Layer` uses the batched numba kernels (``analytic``).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.EntropicSimplex()
    >>> np.round(prob.solve(np.log(np.array([1.0, 2.0, 5.0]))).x, 12)
    array([0.125, 0.25 , 0.625])

    References
    ----------
    A. Beck, M. Teboulle, "Mirror descent and nonlinear projected subgradient methods for
    convex optimization", Oper. Res. Lett. 2003. S. Gould, R. Hartley, D. Campbell,
    "Deep Declarative Networks", IEEE TPAMI 2021 (equality-constrained nodes, Prop. 4.5).
    """

    name = "entropic_simplex"
    tol = 1e-12

    def __init__(self, step_size=0.5):
        self.step_size = check_scalar(step_size, "step_size", lower=0.0, upper=1.0)

    def __repr__(self):
        return f"EntropicSimplex(step_size={self.step_size})"

    def offers(self):
        """Return the softmax Jacobian, the KKT residual, mirror descent, the energy."""
        return Capabilities(
            analytic_vjp=self.analytic_vjp, optimality=Optimality(self.optimality),
            step=StepMap(self.step, start=self.init), mirror=self.mirror, energy=self.energy,
            batch=Batch(theta_ndim=(1,), solve=self._solve_batch, analytic_vjp=self._vjp_batch),
            why_not={
                "manifold": "x* = softmax(z) lies in the relative interior of the simplex (the "
                            "entropy keeps every x_i > 0): its only active manifold is the "
                            "affine hull {sum x = 1}, on which partial smoothness is implicit "
                            "differentiation of the residual F (implicit)",
                "dual": "-<z, x> is bilinear, not jointly convex in (x, z): p(z) = "
                        "-logsumexp(z) has no convex dual; its gradient -x* is the envelope "
                        "theorem's grad_z E(x*, z) (envelope)",
                "straight_through": "the softmax is smooth, with Jacobian diag(x*) - x* x*^T "
                                    "(analytic): the identity backward is a baseline for "
                                    "discontinuous maps (argmax, partitions, quantizers)"})

    @classmethod
    def examples(cls):
        """Scores of three classes (smooth everywhere)."""
        return [("entropic_simplex-z", cls(), np.array([0.5, -1.0, 2.0]))]

    check_batch = Problem.check_batch_finite    # check_theta: shapes and finiteness only

    def check_theta(self, theta):
        """``z`` of shape ``(..., n)``, ``n >= 1``, finite."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError("EntropicSimplex takes theta = z, one array of scores")
            theta = theta[0]
        z = check_array(theta, "z")
        if z.ndim < 1 or z.shape[-1] < 1:
            raise ValueError(f"z must have at least one dimension with >= 1 entries (the "
                             f"simplex is along the last axis), got shape {z.shape}")
        return (z,)

    def init(self, parts):
        """Start at the uniform distribution (for ``step``)."""
        z = parts[0]
        return np.full(z.shape, 1.0 / z.shape[-1])

    def _solve(self, theta, x0):
        z = theta[0] if isinstance(theta, tuple) else theta
        Z = np.ascontiguousarray(z.reshape(-1, z.shape[-1]))
        P = _kernel("softmax", Z)(Z)
        return P.reshape(z.shape), 1, float(np.abs(P.sum(axis=1) - 1.0).max()), {}

    # torch maps ---------------------------------------------------------------------
    def energy(self, x, theta):
        """``-<z, x> + sum x log x`` (summed over rows)."""
        z = theta[0] if isinstance(theta, tuple) else theta
        return torch.sum(-z * x + x * torch.log(x))

    def optimality(self, x, theta):
        """``(log x - z) - mean(log x - z) + (sum x - 1)``, row by row (class docstring)."""
        z = theta[0] if isinstance(theta, tuple) else theta
        d = torch.log(x) - z
        return d - d.mean(dim=-1, keepdim=True) + (x.sum(dim=-1, keepdim=True) - 1.0)

    def step(self, x, theta):
        """Entropic mirror descent ``softmax((1 - eta) log x + eta z)``."""
        z = theta[0] if isinstance(theta, tuple) else theta
        eta = self.step_size
        return torch.softmax((1.0 - eta) * torch.log(x) + eta * z, dim=-1)

    def mirror(self, solution):
        r"""Entropic mirror descent on ``-<z, x> + sum x log x``, for ``bregman``.

        The Bregman proximal-gradient step of the simplex's entropy with step ``eta``,
        ``x+ = softmax(log x - eta (log x + 1 - z)) = softmax((1 - eta) log x + eta z)``, is
        :meth:`step`: ``x_k = softmax((1 - (1 - eta)^k) z)`` from the uniform distribution,
        whose residual ``F`` (:meth:`optimality`) is ``(1 - eta)^k (z - mean z)``. The
        forward pass iterates it in the mirror coordinates ``log x`` (NumPy, row by row).
        """
        z = np.asarray(as_tuple(solution.theta)[0], dtype=np.float64)
        Z = np.ascontiguousarray(z.reshape(-1, z.shape[-1]))
        x0 = self.init((z,))

        def forward(n_steps, tol, tau, sigma):
            W = np.log(x0.reshape(Z.shape))          # normalized: log x
            k = 0
            while True:
                d = W - Z
                residual = float(np.abs(d - d.mean(axis=1, keepdims=True)
                                        + (np.exp(W).sum(axis=1, keepdims=True) - 1.0)).max())
                if residual <= tol or k >= n_steps:
                    break
                W = W - tau * (W + 1.0 - Z)
                top = W.max(axis=1, keepdims=True)
                W = W - (top + np.log(np.exp(W - top).sum(axis=1, keepdims=True)))
                k += 1
            return (np.exp(W).reshape(z.shape),), k, residual

        tiny = np.finfo(np.float64).tiny

        def gradient(x, theta):    # log x + 1 - z; log of an underflowed entry is clamped
            return torch.log(torch.clamp(x, min=tiny)) + 1.0 - as_tuple(theta)[0]

        return Mirror(kind="simplex", scheme="gradient", start=(x0,),
                      step_size=self.step_size, gradient=gradient, forward=forward,
                      info={"method": "entropic mirror descent"})

    # structure ------------------------------------------------------------------------
    def analytic_vjp(self, solution, v):
        """``p * (v - <p, v>)`` row by row."""
        P = solution.x
        n = P.shape[-1]
        Pr = np.ascontiguousarray(P.reshape(-1, n))
        V = np.ascontiguousarray(np.asarray(v, np.float64).reshape(-1, n))
        return (_kernel("softmax_vjp", Pr)(Pr, V).reshape(P.shape),)

    # batched kernels for bl.torch.Layer ------------------------------------------------
    def _solve_batch(self, Z):
        """Softmax of every row of ``Z`` (b, n)."""
        return BatchSolution(x=_kernel("softmax", Z)(Z), parts=(Z,))

    def _vjp_batch(self, batch, V):
        """``((P * (V - <P, V>),), margins)``: smooth everywhere, margins ``inf``."""
        P = batch.x
        return (_kernel("softmax_vjp", P)(P, V),), no_kinks(P.shape[0])


def _row_sums(x, theta):
    """``sum x - 1`` over the last axis (each simplex's equality)."""
    return x.sum(dim=-1) - 1.0


def _negative(x, theta):
    """``-x`` (``x >= 0``)."""
    return -x


def _embed(flat, u, shape):
    """``u`` on the flat indices ``flat`` of a zero array of ``shape``."""
    out = np.zeros(int(np.prod(shape)))
    out[flat] = u
    return out.reshape(shape)
