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
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import Batch, BatchSolution, Dual, Mirror, Optimality, StepMap, as_tuple
from bilevel.problems.base import Capabilities, Problem, check_array

__all__ = ["EntropicSimplex", "MatrixGame", "MultiLabelSegmentation", "SimplexLeastSquares"]

# Entries of an iterate below this (relative to the row's largest) leave the support.
_SUPPORT_TOL = 1e-9
# Largest number of variables for which the support's KKT system is solved densely.
_DENSE_MAX = 3000
# Batches with fewer entries run serially (see bilevel.solvers.serial).
_PARALLEL_MIN = 200_000


def _kernel(name, Z):
    """Pick the ``prange`` kernel for large batches, its serial twin for small ones."""
    from bilevel.solvers import projections

    return getattr(projections, name + ("_batched" if Z.size >= _PARALLEL_MIN else "_rows"))


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
    u = np.linalg.solve(M, rhs)[:flat.size]
    g = np.zeros(X.size)
    g[flat] = -u
    return g


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
        Tolerance on the natural residual ``||x - P_Delta(x - grad f(x))||_inf``.
    max_iter : int
        Iterations of the entropic mirror descent before the exact polish on the support.

    Notes
    -----
    Solver: entropic mirror descent ``x+ = softmax(log x - A^T(Ax - b)/L)``,
    ``L = ||A||_2^2``, from the barycentre, then the KKT system on the identified support.
    Capabilities: ``mirror`` (that method), ``analytic_vjp`` (the derivative on the
    support: ``dx_S/db = [M^{-1}(A_S^T, 0)]_x``), ``energy``, ``dual``: the value
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
        """Entropic mirror descent, the support's closed form, the energy, the residual dual."""
        return Capabilities(mirror=self.mirror, analytic_vjp=self.analytic_vjp,
                            energy=self.energy, dual=self.dual, batch=Batch(theta_ndim=(1,)))

    @classmethod
    def examples(cls):
        """Return a support with clear margins."""
        A = np.array([[1.0, 0.2, 0.1], [0.3, 1.0, -0.2], [0.1, 0.4, 1.0], [0.5, 0.0, 0.3]])
        return [("simplex_ls-b", cls(A), np.array([1.0, 0.6, -0.5, 0.2]))]

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
        X, n_iter, residual = _solve_simplices(self.H, -self.A.T @ as_tuple(theta)[0], x0,
                                               1.0 / self.lipschitz, self.tol, self.max_iter)
        return X.ravel(), n_iter, residual

    # torch maps -----------------------------------------------------------------------
    def energy(self, x, theta):
        """``||Ax - b||^2 / 2`` (the constraint is implicit)."""
        r = self._At @ x - as_tuple(theta)[0]
        return 0.5 * (r @ r)

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
        Tolerance on the natural residual.
    max_iter : int
        Iterations of the entropic mirror descent.

    Notes
    -----
    Solver: ``log X+ = log X - tau grad E(X)`` normalized per pixel (softmax update),
    ``tau = 1/(alpha + 8 mu)``, then, for up to 3000 variables, the KKT system on the
    identified support. Capabilities: ``mirror``, ``analytic_vjp`` (the support's KKT
    system), ``energy``.

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
        if not (np.isfinite(mu) and mu > 0 and np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"mu and alpha must be finite and > 0, got mu={mu}, alpha={alpha}")
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        self.mu, self.alpha, self.tol, self.max_iter = float(mu), float(alpha), float(tol), \
            int(max_iter)
        self._hessians = {}

    def __repr__(self):
        return f"MultiLabelSegmentation(mu={self.mu}, alpha={self.alpha})"

    def offers(self):
        """Per-pixel softmax updates, the support's closed form, the energy."""
        return Capabilities(mirror=self.mirror, analytic_vjp=self.analytic_vjp,
                            energy=self.energy, batch=Batch(theta_ndim=(3,)))

    @classmethod
    def examples(cls):
        """Two pixels, three labels, a clear winner each."""
        return [("segmentation-pixels", cls(mu=0.2, alpha=0.5),
                 np.array([[[0.0, 0.3, 2.0], [0.2, 0.1, 2.0]]]))]

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
        X, n_iter, residual = kernels.bregman_segmentation(C, self.mu, self.alpha, X0,
                                                           self.step_size, self.max_iter,
                                                           self.tol)
        if residual > self.tol and C.size <= _DENSE_MAX:
            H = self._hessian(C.shape)
            X = _polish(H, C.ravel(), X.reshape(-1, C.shape[2])).reshape(C.shape)
            G = (H @ X.ravel() + C.ravel()).reshape(-1, C.shape[2])
            residual = kernels.natural_residual(X.reshape(-1, C.shape[2]), G, kernels.SIMPLEX)
        return X, n_iter, residual

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
        Tolerance on the natural residuals of both players.
    max_iter : int
        Iterations of the entropic primal-dual method.

    Notes
    -----
    Solver: the Bregman primal-dual method with the entropy on both simplices,
    ``x+ = softmax(log x - tau A y)``, ``y+ = softmax(log y + sigma A^T(2x+ - x))``,
    ``tau = sigma = 0.9 / max|A_ij|``, then the equilibrium equations on the supports
    ``(S_x, S_y)``: ``A_{S_x S_y} y = v 1``, ``A_{S_x S_y}^T x = v 1``, ``1^T x = 1^T y = 1``.
    Their derivative is ``analytic_vjp``.

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
        """Return the entropic primal-dual method and the equilibrium equations' closed form."""
        return Capabilities(mirror=self.mirror, analytic_vjp=self.analytic_vjp,
                            batch=Batch(theta_ndim=(2,)))

    @classmethod
    def examples(cls):
        """Return a game with a fully mixed equilibrium."""
        return [("matrix_game-A", cls(), np.array([[2.0, -1.0], [-1.0, 1.0]]))]

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
        if not (0.0 < step_size < 1.0):
            raise ValueError(f"step_size must be in (0, 1), got {step_size!r}")
        self.step_size = float(step_size)

    def __repr__(self):
        return f"EntropicSimplex(step_size={self.step_size})"

    def offers(self):
        """Return the softmax Jacobian, the KKT residual, mirror descent, the energy."""
        return Capabilities(analytic_vjp=self.analytic_vjp,
                            optimality=Optimality(self.optimality),
                            step=StepMap(self.step, start=self.init), energy=self.energy,
                            batch=Batch(theta_ndim=(1,), solve=self._solve_batch,
                                        analytic_vjp=self._vjp_batch))

    @classmethod
    def examples(cls):
        """Scores of three classes (smooth everywhere)."""
        return [("entropic_simplex-z", cls(), np.array([0.5, -1.0, 2.0]))]

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
        return (_kernel("softmax_vjp", P)(P, V),), np.full(P.shape[0], np.inf)
