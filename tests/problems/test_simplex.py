"""SimplexLeastSquares, MultiLabelSegmentation, MatrixGame, EntropicSimplex: solvers, VJPs."""

import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import bilevel as bl


def project_simplex(v):
    """Independent Euclidean projection onto the simplex (bisection on the threshold)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.maximum(v - mid, 0).sum() > 1 else (lo, mid)
    return np.maximum(v - 0.5 * (lo + hi), 0)


# --- SimplexLeastSquares ---
@st.composite
def simplex_ls(draw):
    m = draw(st.integers(4, 12))
    n = draw(st.integers(2, min(m, 6)))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    return A, rng.standard_normal(m)


def simplex_ls_certificate(A, b, x):
    """KKT of min ||Ax-b||^2/2 on the simplex: g_i >= nu, equality where x_i > 0."""
    g = A.T @ (A @ x - b)
    support = x > 1e-9
    nu = g[support].mean()
    return max(abs(x.sum() - 1), -x.min(), np.abs(g[support] - nu).max(),
               max(nu - g[~support].min(), 0) if (~support).any() else 0.0)


@given(simplex_ls())
def test_simplex_ls_solver_meets_kkt_and_slsqp(instance):
    from scipy.optimize import minimize

    A, b = instance
    prob = bl.problems.SimplexLeastSquares(A)
    sol = prob.solve(b)
    assert sol.converged
    # Exact polish on the support: KKT to round-off.
    assert simplex_ls_certificate(A, b, sol.x) <= 1e-9
    n = A.shape[1]
    ref = minimize(lambda x: 0.5 * np.sum((A @ x - b) ** 2), np.full(n, 1 / n),
                   jac=lambda x: A.T @ (A @ x - b), method="SLSQP", bounds=[(0, None)] * n,
                   constraints={"type": "eq", "fun": lambda x: x.sum() - 1},
                   options={"ftol": 1e-15, "maxiter": 500})
    # SLSQP stops at ~1e-7 in x on these sizes; ours is exact.
    np.testing.assert_allclose(sol.x, ref.x, atol=1e-6)


# --- MatrixGame ---
def test_matrix_game_matches_closed_form_and_linprog():
    from scipy.optimize import linprog

    a, b, c, d = 2.0, -1.0, -1.0, 1.0
    A = np.array([[a, b], [c, d]])
    sol = bl.problems.MatrixGame().solve(A)
    den = a - b - c + d
    # The 2 x 2 closed form: each player makes the other indifferent.
    np.testing.assert_allclose(sol.x, [(d - c) / den, (a - b) / den, (d - b) / den,
                                       (a - c) / den], atol=1e-12)
    rng = np.random.default_rng(5)
    for _ in range(3):
        A = rng.standard_normal((4, 3))
        m, n = A.shape
        prob = bl.problems.MatrixGame()
        x = prob.solve(A).x[:m]
        # Row player's LP: min t s.t. A^T x <= t, 1^T x = 1, x >= 0.
        ref = linprog(np.r_[np.zeros(m), 1.0], A_ub=np.c_[A.T, -np.ones(n)], b_ub=np.zeros(n),
                      A_eq=np.r_[np.ones(m), 0.0][None], b_eq=[1.0],
                      bounds=[(0, None)] * m + [(None, None)], method="highs")
        np.testing.assert_allclose(x, ref.x[:m], atol=1e-9)


# --- MultiLabelSegmentation ---
def test_segmentation_solver_meets_kkt_and_bregman_matches_the_support_jacobian():
    rng = np.random.default_rng(0)
    img = np.zeros((4, 5))
    img[:, 3:] = 1.0
    img[1:3, 1:3] = 0.5
    noisy = img + 0.05 * rng.standard_normal(img.shape)
    C = (noisy[..., None] - np.array([0.0, 0.5, 1.0])) ** 2
    prob = bl.problems.MultiLabelSegmentation(mu=0.1, alpha=1.0)
    sol = prob.solve(C)
    X = sol.x
    G = C + prob.gradient(torch.from_numpy(X), torch.zeros(C.shape)).numpy()
    # Independent natural residual: X_p = P_simplex(X_p - grad_p) at every pixel.
    worst = max(np.abs(X[i, j] - project_simplex(X[i, j] - G[i, j])).max()
                for i in range(4) for j in range(5))
    assert worst <= 1e-10
    assert np.array_equal(X.argmax(axis=2), np.rint(2 * img).astype(int))
    assert (X < 1e-9).any() and ((X > 1e-3) & (X < 1 - 1e-3)).any()   # kinks and interiors
    v = rng.standard_normal(C.shape)
    g, info = bl.strategies.BregmanUnroll().vjp(prob, sol, v)
    exact = bl.vjp(prob, C, v, "analytic")
    D = rng.standard_normal(C.shape)
    h = 1e-5
    fd = (np.vdot(v, prob.solve(C + h * D).x) - np.vdot(v, prob.solve(C - h * D).x)) / (2 * h)
    # Central difference along D: O(h^2) = 1e-10, the polished solves are exact to ~1e-15.
    np.testing.assert_allclose(np.vdot(exact, D), fd, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(g, exact, rtol=1e-6, atol=1e-8)     # k rho^k lag of the derivative
    # Adding a constant to a pixel's costs leaves X* unchanged: the gradient sums to 0 per pixel.
    np.testing.assert_allclose(g.sum(axis=2), 0.0, atol=1e-12)


# --- EntropicSimplex ---
@st.composite
def points(draw, max_n=10):
    n = draw(st.integers(2, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    return draw(st.floats(0.1, 4.0)) * rng.standard_normal(n), draw(st.floats(0.2, 5.0))


@given(points(max_n=8))
def test_entropic_simplex_is_the_softmax_and_its_vjps_agree(instance):
    z, _ = instance
    prob = bl.problems.EntropicSimplex()
    p = prob.solve(z).x
    np.testing.assert_allclose(p, scipy.special.softmax(z), rtol=1e-14, atol=1e-16)
    v = np.random.default_rng(2).standard_normal(z.size)
    J = np.diag(p) - np.outer(p, p)
    g = bl.vjp(prob, z, v, "analytic")
    np.testing.assert_allclose(g, J @ v, rtol=1e-12, atol=1e-15)
    # Implicit on the KKT residual: a dense solve (condition ~ 1/min p): 1e-9.
    np.testing.assert_allclose(bl.vjp(prob, z, v, "implicit"), g, rtol=1e-9, atol=1e-12)
    # Mirror-descent fixed point, contraction 1/2: the Neumann series to 1e-9.
    fp = bl.strategies.FixedPoint(method="gmres", tol=1e-12)
    np.testing.assert_allclose(bl.vjp(prob, z, v, fp), g, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(bl.vjp(prob, z, v, "finite_difference"), g, rtol=1e-6,
                               atol=1e-9)


def test_entropic_simplex_minimizes_its_energy(rng):
    prob = bl.problems.EntropicSimplex()
    z = rng.standard_normal(5)
    p = prob.solve(z).x

    def energy(x):
        return float(prob.energy(torch.tensor(x), torch.tensor(z)))

    others = rng.dirichlet(np.ones(5), size=200)
    assert energy(p) <= min(energy(q) for q in others)
    # Its value is -logsumexp(z) (the log-partition function).
    np.testing.assert_allclose(energy(p), -scipy.special.logsumexp(z), rtol=1e-13)
    step = prob.step(torch.tensor(p), torch.tensor(z)).numpy()
    np.testing.assert_allclose(step, p, rtol=1e-14)         # a fixed point


# --- the capabilities of issue 14 ---
def support_vjp(A, x, v):
    """(dx*/db)^T v on the support S: the KKT system [[A_S^T A_S, 1], [1^T, 0]], dense."""
    S = np.flatnonzero(x > 1e-9)
    k = S.size
    K = np.block([[A[:, S].T @ A[:, S], np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
    u = np.linalg.solve(K, np.concatenate([v[S], [0.0]]))[:k]
    return A[:, S] @ u


@given(simplex_ls())
def test_simplex_ls_face_kkt_and_step_give_the_support_jacobian(instance):
    A, b = instance
    prob = bl.problems.SimplexLeastSquares(A)
    sol = prob.solve(b)
    manifold = prob.capabilities.manifold(sol)
    assume(manifold.margin > 1e-3)            # away from a support change
    assume(np.linalg.svd(A, compute_uv=False).min() > 1e-2)
    S = np.flatnonzero(sol.x > 1e-9)
    assert manifold.dim == S.size - 1
    # The multipliers are exact: g + nu - lam = 0, lam >= 0 off the support, 0 on it.
    g = A.T @ (A @ sol.x - b)
    np.testing.assert_allclose(g + sol.info["nu"][0] - sol.info["lam"], 0.0, atol=1e-10)
    assert np.all(sol.info["lam"] >= -1e-12) and np.all(sol.info["lam"][S] == 0)
    v = np.random.default_rng(9).standard_normal(A.shape[1])
    ref = support_vjp(A, sol.x, v)
    # Dense KKT solves (cond <= ~1e6 with sigma_min(A) > 1e-2): 1e-8 relative.
    scale = max(1.0, np.abs(ref).max())       # a vertex (one-point support): ref = 0
    for name in ("partial_smoothness", "implicit", "analytic"):
        np.testing.assert_allclose(bl.vjp(prob, b, v, name), ref, atol=1e-8 * scale,
                                   err_msg=name)
    # The projected gradient step's fixed point: its Jacobian (I - H/L) on the face, GMRES
    # to 1e-12 on a contraction of rate 1 - mu/L.
    fp = bl.strategies.FixedPoint(method="gmres", tol=1e-12)
    np.testing.assert_allclose(bl.vjp(prob, b, v, fp), ref, atol=1e-7 * scale)


def test_segmentation_face_kkt_and_step_match_the_support_jacobian():
    rng = np.random.default_rng(0)
    img = np.zeros((3, 4))
    img[:, 2:] = 1.0
    img[1, 1] = 0.5
    C = (img[..., None] + 0.05 * rng.standard_normal(img.shape)[..., None]
         - np.array([0.0, 0.5, 1.0])) ** 2
    prob = bl.problems.MultiLabelSegmentation(mu=0.1, alpha=1.0)
    sol = prob.solve(C)
    assert (sol.x < 1e-9).any() and ((sol.x > 1e-3) & (sol.x < 1 - 1e-3)).any()
    assert prob.capabilities.manifold(sol).margin > 1e-3
    v = rng.standard_normal(C.shape)
    exact = bl.vjp(prob, C, v, "analytic")
    D = rng.standard_normal(C.shape)
    h = 1e-5
    fd = (np.vdot(v, prob.solve(C + h * D).x) - np.vdot(v, prob.solve(C - h * D).x)) / (2 * h)
    # Central difference along D: O(h^2) = 1e-10, the polished solves exact to ~1e-15.
    np.testing.assert_allclose(np.vdot(exact, D), fd, rtol=1e-7, atol=1e-9)
    # Dense solves of the same support system (partial_smoothness), of the KKT system with
    # the solver's exact multipliers (implicit): round-off. GMRES on the projected
    # gradient step's fixed point (rate 1 - alpha/L = 0.44 on the face) to 1e-12.
    for strategy, tol in (("partial_smoothness", 1e-12), ("implicit", 1e-10),
                          (bl.strategies.FixedPoint(method="gmres", tol=1e-12), 1e-9)):
        np.testing.assert_allclose(bl.vjp(prob, C, v, strategy), exact, atol=tol)


def test_matrix_game_value_gradient_is_x_y_transpose():
    a, b, c, d = 2.0, -1.0, -1.0, 1.0
    A = np.array([[a, b], [c, d]])
    prob = bl.problems.MatrixGame()
    value, grad = bl.value_gradient(prob, A, "value_function")

    def closed_form(A):
        (a, b), (c, d) = A
        return (a * d - b * c) / (a - b - c + d)     # the 2 x 2 fully mixed game's value

    np.testing.assert_allclose(value, closed_form(A), rtol=1e-12)
    # Central differences of the closed form (step 1e-6, smooth): ~1e-10.
    h = 1e-6
    fd = np.array([[(closed_form(A + h * E) - closed_form(A - h * E)) / (2 * h)
                    for E in np.eye(4).reshape(4, 2, 2)[2 * i:2 * i + 2]] for i in range(2)])
    np.testing.assert_allclose(grad, fd, atol=1e-9)
    # A 4 x 3 game: the dual certificate against finite differences of the solved value
    # (exact polish on the supports: 4th-order stencil, ~1e-9).
    A = np.random.default_rng(5).standard_normal((4, 3))
    _, grad = bl.value_gradient(prob, A, "value_function")
    np.testing.assert_allclose(grad, bl.value_gradient(prob, A, "finite_difference")[1],
                               atol=1e-7)
    with np.testing.assert_raises(bl.NotApplicable):
        bl.value_gradient(prob, A, "envelope")


@given(points(max_n=8), st.sampled_from([0.3, 0.5, 0.9]))
def test_entropic_simplex_bregman_is_its_mirror_descent(instance, eta):
    z, _ = instance
    prob = bl.problems.EntropicSimplex(step_size=eta)
    p = prob.solve(z).x
    v = np.random.default_rng(10).standard_normal(z.size)
    g, info = bl.vjp(prob, z, v, "bregman", return_info=True)
    # x_k = softmax((1 - (1 - eta)^k) z): the forward pass stops at residual 1e-12, so x_k
    # and its derivative (1 - (1-eta)^k) J(x_k) are within ~1e-11 of p and J v.
    assert info["residual"] <= 1e-12 and info["replay_error"] <= 1e-13
    a = 1.0 - (1.0 - eta) ** info["iterations"]
    x_k = scipy.special.softmax(a * z)
    np.testing.assert_allclose(g, a * (np.diag(x_k) - np.outer(x_k, x_k)) @ v, rtol=1e-10,
                               atol=1e-13)
    np.testing.assert_allclose(g, (np.diag(p) - np.outer(p, p)) @ v, atol=1e-10)


def test_entropic_simplex_bregman_over_leading_axes(rng):
    z = 2.0 * rng.standard_normal((2, 3, 4))
    prob = bl.problems.EntropicSimplex()
    v = rng.standard_normal(z.shape)
    g = bl.vjp(prob, z, v, "bregman")
    p = scipy.special.softmax(z, axis=-1)
    # The simplex is the last axis: p (v - <p, v>) row by row; 1e-12 residual: ~1e-10.
    np.testing.assert_allclose(g, p * (v - (p * v).sum(axis=-1, keepdims=True)), atol=1e-10)


# -- issue 17: scale-free stopping rules -------------------------------------------------
def _simplex_ls_by_faces(A, b):
    """Minimize ||Ax - b||^2/2 over the simplex by enumerating faces (an exact reference).

    On each support S the face's minimizer solves the KKT system of ``sum x_S = 1``; the
    minimum over the feasible (``x_S >= 0``) candidates is the global one (convex problem).
    """
    import itertools

    n = A.shape[1]
    best, best_x = np.inf, None
    for k in range(1, n + 1):
        for S in itertools.combinations(range(n), k):
            AS = A[:, S]
            M = np.block([[AS.T @ AS, np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
            sol = np.linalg.lstsq(M, np.r_[AS.T @ b, 1.0], rcond=None)[0][:k]
            if sol.min() < -1e-14:
                continue
            x = np.zeros(n)
            x[list(S)] = sol
            value = 0.5 * np.sum((A @ x - b) ** 2)
            if value < best:
                best, best_x = value, x
    return best_x


def test_simplex_ls_scaled_data_matches_the_faces_reference():
    """(A, b) scaled by 1e-6 was 34% off, "converged" (the natural residual was absolute)."""
    A = np.array([[1.0, 0.2, 0.1], [0.3, 1.0, -0.2], [0.1, 0.4, 1.0], [0.5, 0.0, 0.3]])
    b = np.array([1.0, 0.6, -0.5, 0.2])
    ref = _simplex_ls_by_faces(A, b)
    for scale in (1e-6, 1e-12, 1e12):
        sol = bl.problems.SimplexLeastSquares(scale * A).solve(scale * b)
        assert sol.converged
        # 1e-10: the polished solve is exact on the support (tol 1e-12 before the polish)
        assert np.allclose(sol.x, ref, atol=1e-10), (scale, sol.x, ref)


def test_matrix_game_scaled_payoff_matches_linprog():
    """A scaled by 1e-10 was 1.2% off; the equilibrium is the LP's (scipy HiGHS, exact)."""
    import scipy.optimize

    A = np.array([[0.0, -1.0, 2.0], [1.5, 0.0, -1.0], [-1.0, 1.0, 0.0]])  # fully mixed
    m, n = A.shape
    # min_x max_y x^T A y: min v s.t. A^T x <= v, sum x = 1, x >= 0 (and the dual for y)
    lp_x = scipy.optimize.linprog(np.r_[np.zeros(m), 1.0], A_ub=np.c_[A.T, -np.ones(n)],
                                  b_ub=np.zeros(n), A_eq=np.r_[np.ones(m), 0.0][None],
                                  b_eq=[1.0], bounds=[(0, None)] * m + [(None, None)],
                                  method="highs")
    lp_y = scipy.optimize.linprog(np.r_[np.zeros(n), -1.0], A_ub=np.c_[-A, np.ones(m)],
                                  b_ub=np.zeros(m), A_eq=np.r_[np.ones(n), 0.0][None],
                                  b_eq=[1.0], bounds=[(0, None)] * n + [(None, None)],
                                  method="highs")
    ref = np.r_[lp_x.x[:m], lp_y.x[:n]]
    prob = bl.problems.MatrixGame()
    for scale in (1e-10, 1.0, 1e10):
        sol = prob.solve(scale * A)
        assert sol.converged
        # 1e-8: HiGHS's own feasibility tolerance on a unit-size LP is ~1e-9
        assert np.allclose(sol.x, ref, atol=1e-8), (scale, sol.x, ref)


def test_simplex_least_squares_names_a_duplicated_column():
    """Duplicated columns: x* is not unique and not differentiable; say so, with the remedy."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((8, 4))
    A[:, 3] = A[:, 2]
    prob = bl.problems.SimplexLeastSquares(A)
    b = A @ np.array([0.2, 0.3, 0.25, 0.25])      # both copies carry weight at x*
    with pytest.raises(bl.SingularSystemError, match="duplicated or collinear columns"):
        bl.vjp(prob, b, np.ones(4), "analytic")
