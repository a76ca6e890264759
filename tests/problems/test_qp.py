"""QP, NNLS, EqualityConstrainedLS, moment_matrix: solutions and VJPs against closed forms."""

import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bilevel as bl
from bilevel._types import Solution
from bilevel.problems import NNLS, QP, Constrained, EqualityConstrainedLS, moment_matrix

IMPLICIT = bl.strategies.Implicit()


def generic_qp(Q, G):
    Qt, Gt = torch.from_numpy(Q), torch.from_numpy(G)
    return Constrained(lambda x, t: 0.5 * x @ (Qt @ x) + t[0] @ x,
                       ineq=lambda x, t: Gt @ x - t[1], x0=np.zeros(Q.shape[0]), affine=True)


sizes = st.integers(2, 5)


# --- QP ---
@given(seed=st.integers(0, 2**32 - 1), n=sizes, extra=st.integers(0, 4),
       frac=st.floats(0.0, 1.0))
def test_qp_solution_vjp_and_generic_implicit(qp_instance, kkt_vjp, seed, n, extra, frac):
    m = n + extra
    n_active = int(round(frac * n))                 # <= n: independent active normals
    Q, G, c, h, x, lam = qp_instance(seed, n, m, n_active)
    prob = QP(Q, G)
    sol = prob.solve((c, h))
    # The constructed KKT point is the unique solution; Q's conditioning is <= ~1e3.
    np.testing.assert_allclose(sol.x, x, atol=1e-9)
    np.testing.assert_allclose(sol.info["lam"], lam, atol=1e-8)
    assert np.all(G @ sol.x <= h + 1e-10) and sol.converged
    assert set(sol.info["active"]) == set(range(n_active))
    v = np.random.default_rng(seed + 1).standard_normal(n)
    g_c, g_h = bl.vjp(prob, (c, h), v, "analytic")
    ref_c, ref_w = kkt_vjp(Q, G[:n_active], v)
    # Round-off of a dense solve with cond(K) <= ~1e4.
    np.testing.assert_allclose(g_c, ref_c, atol=1e-9)
    np.testing.assert_allclose(g_h[:n_active], ref_w, atol=1e-9)
    np.testing.assert_allclose(g_h[n_active:], 0.0, atol=0)
    # The generic KKT solve of Implicit on the QP itself (multipliers from the solver) ...
    i_c, i_h = bl.vjp(prob, (c, h), v, "implicit")
    np.testing.assert_allclose(i_c, g_c, atol=1e-9)
    np.testing.assert_allclose(i_h, g_h, atol=1e-9)
    # ... and on Constrained (SLSQP + Newton polish, multipliers by least squares).
    gen = generic_qp(Q, G)
    gsol = gen.solve((c, h))
    np.testing.assert_allclose(gsol.x, x, atol=1e-8)      # SLSQP + polish, cond <= ~1e3
    j_c, j_h = IMPLICIT.vjp(gen, gsol, v)[0]
    np.testing.assert_allclose(j_c, g_c, atol=1e-7)
    np.testing.assert_allclose(j_h, g_h, atol=1e-7)


@given(seed=st.integers(0, 2**32 - 1), n=sizes, frac=st.floats(0.0, 1.0))
def test_qp_vjp_matches_finite_differences(qp_instance, seed, n, frac):
    Q, G, c, h, x, lam = qp_instance(seed, n, n + 2, int(round(frac * n)))
    prob = QP(Q, G)
    v = np.random.default_rng(seed + 2).standard_normal(n)
    g = bl.vjp(prob, (c, h), v, "analytic")
    fd = bl.vjp(prob, (c, h), v, bl.strategies.FiniteDifference())
    # x* is piecewise affine in (c, h), exact to round-off: FD error ~ eps / step, and
    # the margins (>= 0.3 slack, >= 0.5 multiplier) keep the stencil on one piece.
    for a, b in zip(g, fd):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_qp_theta_c_only_and_fixed_h(qp_instance):
    Q, G, c, h, x, lam = qp_instance(3, 4, 6, 2)
    prob = QP(Q, G, h)
    assert prob.capabilities.batch.theta_ndim == (1,)
    v = np.arange(4.0)
    np.testing.assert_allclose(bl.vjp(prob, c, v, "analytic"),
                               bl.vjp(QP(Q, G), (c, h), v, "analytic")[0], atol=1e-14)
    np.testing.assert_allclose(bl.vjp(prob, c, v, "implicit"),
                               bl.vjp(prob, c, v, "analytic"), atol=1e-10)
    with pytest.raises(ValueError, match="theta is c alone"):
        prob.solve((c, h))
    with pytest.raises(ValueError, match=r"theta = \(c, h\)"):
        QP(Q, G).solve(c)


def test_qp_against_cvxpy():
    cp = pytest.importorskip("cvxpy")
    rng = np.random.default_rng(5)
    n, m = 6, 10
    B = rng.standard_normal((n, n))
    Q = B.T @ B + np.eye(n)
    G, h, c = rng.standard_normal((m, n)), rng.uniform(0.1, 1, m), 3 * rng.standard_normal(n)
    z = cp.Variable(n)
    cons = [G @ z <= h]
    cp.Problem(cp.Minimize(0.5 * cp.quad_form(z, Q) + c @ z), cons).solve(
        solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    sol = QP(Q, G, h).solve(c)
    # Clarabel at 1e-12 gap: interior point, accurate to ~1e-8 on the primal.
    np.testing.assert_allclose(sol.x, z.value, atol=1e-7)
    np.testing.assert_allclose(sol.info["lam"], cons[0].dual_value, atol=1e-6)


def test_qp_infeasible_and_validation():
    Q = np.eye(2)
    with pytest.raises(ValueError, match="infeasible"):
        QP(Q, np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([-1.0, -1.0])).solve(np.zeros(2))
    with pytest.raises(ValueError, match="positive definite"):
        QP(np.diag([1.0, -1.0]), np.eye(2))
    with pytest.raises(ValueError, match="symmetric"):
        QP(np.array([[1.0, 0.5], [0.0, 1.0]]), np.eye(2))
    with pytest.raises(ValueError, match="G must have 2 columns"):
        QP(Q, np.eye(3))
    with pytest.raises(ValueError, match="c must have shape"):
        QP(Q, np.eye(2), np.ones(2)).solve(np.ones(3))


# --- NNLS ---
@given(seed=st.integers(0, 2**32 - 1), n=sizes, extra=st.integers(0, 4),
       frac=st.floats(0.0, 1.0))
def test_nnls_solution_vjp_and_generic_implicit(nnls_instance, seed, n, extra, frac):
    from scipy.optimize import nnls

    m = n + extra
    n_zero = int(round(frac * n))
    A, b, x, lam = nnls_instance(seed, m, n, n_zero)
    prob = NNLS(A)
    sol = prob.solve(b)
    # Known solution; cond(A) of a random Gaussian m x n matrix: a few tens at most here.
    np.testing.assert_allclose(sol.x, x, atol=1e-8)
    np.testing.assert_allclose(sol.x, nnls(A, b)[0], atol=1e-8)
    np.testing.assert_allclose(sol.info["lam"], lam, atol=1e-8)
    assert np.all(sol.x >= 0)
    v = np.random.default_rng(seed + 3).standard_normal(n)
    g = bl.vjp(prob, b, v, "analytic")
    F = np.flatnonzero(x > 0)
    ref = A[:, F] @ np.linalg.solve(A[:, F].T @ A[:, F], v[F]) if F.size else np.zeros(m)
    np.testing.assert_allclose(g, ref, atol=1e-8)
    np.testing.assert_allclose(bl.vjp(prob, b, v, "implicit"), g, atol=1e-8)
    # FD: x* is affine in b near b (margins >= 0.5): error ~ eps / step.
    np.testing.assert_allclose(bl.vjp(prob, b, v, "finite_difference"), g, atol=1e-6)
    # Recovered multipliers (a solution without them) give the same KKT gradient.
    bare = Solution(x=sol.x, theta=sol.theta, n_iter=0, converged=True, info={})
    g_rec, info = IMPLICIT.vjp(prob, bare, v)
    assert info["multipliers"] == "recovered"
    np.testing.assert_allclose(info["lam"], lam, atol=1e-7)
    np.testing.assert_allclose(g_rec, g, atol=1e-8)
    # The generic constrained problem on the same instance.
    At = torch.from_numpy(A)
    gen = Constrained(lambda z, t: 0.5 * ((At @ z - t) ** 2).sum(), ineq=lambda z, t: -z,
                      x0=np.ones(n), affine=True)
    gsol = gen.solve(b)
    np.testing.assert_allclose(gsol.x, x, atol=1e-7)
    np.testing.assert_allclose(IMPLICIT.vjp(gen, gsol, v)[0], g, atol=1e-6)


@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 8), n=st.integers(1, 8))
def test_nnls_kernel_matches_scipy_on_random_instances(seed, m, n):
    from scipy.optimize import nnls

    rng = np.random.default_rng(seed)
    A, b = rng.standard_normal((m, n)), rng.standard_normal(m)
    x = NNLS(A).solve(b).x
    xs = nnls(A, b)[0]

    def f(z):
        return 0.5 * np.sum((A @ z - b) ** 2)

    # The minimizer may be non-unique (m < n): compare objective values, relative.
    assert abs(f(x) - f(xs)) <= 1e-10 * (1 + f(xs))
    assert np.all(x >= 0)


# --- EqualityConstrainedLS and moment_matrix ---
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 7), k=st.integers(1, 7))
def test_equality_constrained_ls(seed, n, k):
    from scipy.linalg import null_space

    k = min(k, n)
    rng = np.random.default_rng(seed)
    D, beta, xi = rng.standard_normal((k, n)), rng.standard_normal(k), rng.standard_normal(n)
    prob = EqualityConstrainedLS(D, beta)
    sol = prob.solve(xi)
    N = null_space(D)
    P = N @ N.T
    z_ref = np.linalg.lstsq(D, beta, rcond=None)[0] + P @ xi     # minimum norm + projection
    # cond(D) of a random Gaussian matrix, <= ~1e3 with high probability.
    np.testing.assert_allclose(sol.x, z_ref, atol=1e-8)
    np.testing.assert_allclose(D @ sol.x, beta, atol=1e-9)
    v = rng.standard_normal(n)
    g = bl.vjp(prob, xi, v, "analytic")
    np.testing.assert_allclose(g, P @ v, atol=1e-9)
    np.testing.assert_allclose(bl.vjp(prob, xi, v, "implicit"), g, atol=1e-9)
    Dt, bt = torch.from_numpy(D), torch.from_numpy(beta)
    gen = Constrained(lambda z, t: ((z - t) ** 2).sum(), eq=lambda z, t: Dt @ z - bt,
                      x0=np.zeros(n))
    gsol = gen.solve(xi)
    np.testing.assert_allclose(gsol.x, sol.x, atol=1e-7)
    np.testing.assert_allclose(IMPLICIT.vjp(gen, gsol, v)[0], g, atol=1e-7)


def test_equality_constrained_ls_validation():
    with pytest.raises(ValueError, match="full row rank"):
        EqualityConstrainedLS(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="full row rank"):
        EqualityConstrainedLS(np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match="beta has"):
        EqualityConstrainedLS(np.eye(2), np.ones(3))


def test_moment_matrix_reproduces_the_papers_systems():
    dx = 0.25
    # Eq. 9 (l = 0, r = 2), offsets of (xi_{+1}, xi_{-1}).
    D, beta = moment_matrix([dx, -dx], 0, 2)
    np.testing.assert_allclose(D, [[1, 1], [-dx, dx]])
    np.testing.assert_allclose(beta, [1, 0])
    # Eq. 10 (l = 1, r = 2) with 0^0 = 1 at the centre (the paper prints 0 there).
    D, beta = moment_matrix([dx, 0.0, -dx], 1, 2)
    np.testing.assert_allclose(D, [[1, 1, 1], [-dx, 0, dx], [dx**2, 0, dx**2]])
    np.testing.assert_allclose(beta, [0, -1, 0])
    # Eq. 11 (l = 2, r = 4): rows k = 1..5, beta_2 = 2.
    off = np.array([2, 1, 0, -1, -2]) * dx
    D, beta = moment_matrix(off, 2, 4)
    np.testing.assert_allclose(D, [(-off) ** k for k in range(1, 6)])
    np.testing.assert_allclose(beta, [0, 2, 0, 0, 0])
    # Eq. 14 (l = 0, r = 4).
    off = np.array([2, 1, -1, -2]) * dx
    D, beta = moment_matrix(off, 0, 4)
    np.testing.assert_allclose(D, [(-off) ** k for k in range(4)])
    np.testing.assert_allclose(beta, [1, 0, 0, 0])


@pytest.mark.parametrize("order, r, offsets", [(0, 4, [-2, -1, 1, 2]), (1, 2, [-1, 0, 1]),
                                               (1, 4, [-2, -1, 0, 1, 2]), (0, 2, [-1, 1])])
def test_moment_weights_differentiate_polynomials_exactly(order, r, offsets):
    # The unique weights of a square system reproduce the l-th derivative of every
    # polynomial of degree < l + r at the centre (Taylor; the reason for the conditions).
    dx = 0.1
    D, beta = moment_matrix(np.array(offsets) * dx, order, r)
    w = EqualityConstrainedLS(D, beta).solve(np.zeros(len(offsets))).x
    x0 = 0.3
    pts = x0 + np.array(offsets) * dx
    for degree in range(order + r):
        coef = np.zeros(degree + 1)
        coef[-1] = 1.0
        poly = np.polynomial.Polynomial(coef)
        exact = poly.deriv(order)(x0) if order else poly(x0)
        assert abs(w @ poly(pts) - exact) < 1e-9 * max(1.0, abs(exact))


def test_moment_matrix_validation():
    with pytest.raises(ValueError, match="stencil points"):
        moment_matrix([-1.0, 1.0], 0, 4)
    with pytest.raises(ValueError, match="distinct"):
        moment_matrix([1.0, 1.0, 2.0], 0, 2)
    with pytest.raises(ValueError, match="derivative_order"):
        moment_matrix([1.0, 2.0], -1, 2)


# --- the capabilities of issue 14: the active face, step maps, reasons ---
@given(seed=st.integers(0, 2**32 - 1), n=sizes, extra=st.integers(0, 4),
       frac=st.floats(0.0, 1.0))
def test_qp_face_with_fixed_h_is_the_kkt_derivative(qp_instance, kkt_vjp, seed, n, extra, frac):
    n_active = int(round(frac * n))
    Q, G, c, h, x, lam = qp_instance(seed, n, n + extra, n_active)
    prob = QP(Q, G, h)
    sol = prob.solve(c)
    manifold = prob.capabilities.manifold(sol)
    # The face {x : G_A x = h_A}: dimension n - |A| (independent active normals), margin
    # from the prescribed multipliers (>= 0.5) and slacks (>= 0.3), relative.
    assert manifold.dim == n - n_active and manifold.margin > 1e-2
    v = np.random.default_rng(seed + 4).standard_normal(n)
    ref_c, _ = kkt_vjp(Q, G[:n_active], v)
    # -B (B^T Q B)^{-1} B^T v against the dense KKT solve written in conftest (cond <= ~1e4).
    np.testing.assert_allclose(bl.vjp(prob, c, v, "partial_smoothness"), ref_c, atol=1e-9)
    dc = np.random.default_rng(seed + 5).standard_normal(n)
    np.testing.assert_allclose(bl.jvp(prob, c, dc, "partial_smoothness"),
                               bl.jvp(prob, c, dc, "finite_difference"), atol=1e-6)


def test_qp_face_needs_a_fixed_h(qp_instance):
    Q, G, c, h, x, lam = qp_instance(3, 4, 6, 2)
    prob = QP(Q, G)
    assert "manifold" not in prob.capabilities
    assert "offset depends on theta" in prob.capabilities.why_not["manifold"]
    with pytest.raises(bl.NotApplicable, match="h moves the active face"):
        bl.vjp(prob, (c, h), np.ones(4), "partial_smoothness")
    with pytest.raises(ValueError, match="has no manifold"):
        prob.manifold(prob.solve((c, h)))


@given(seed=st.integers(0, 2**32 - 1), n=sizes, extra=st.integers(0, 4),
       frac=st.floats(0.0, 1.0))
def test_nnls_free_face_and_projected_step(nnls_instance, seed, n, extra, frac):
    n_zero = int(round(frac * n))
    A, b, x, lam = nnls_instance(seed, n + extra, n, n_zero)
    prob = NNLS(A)
    sol = prob.solve(b)
    manifold = prob.capabilities.manifold(sol)
    # Free set of size n - n_zero; margin: free entries >= 0.5, multipliers >= 0.5, relative.
    assert manifold.dim == n - n_zero and manifold.margin > 1e-2
    np.testing.assert_allclose(manifold.info["lam"], lam[:n_zero], atol=1e-8)
    v = np.random.default_rng(seed + 6).standard_normal(n)
    F = np.flatnonzero(x > 0)
    ref = A[:, F] @ np.linalg.solve(A[:, F].T @ A[:, F], v[F]) if F.size else np.zeros(n + extra)
    # Cholesky of A_F^T A_F against a dense solve, cond(A) a few tens: round-off.
    np.testing.assert_allclose(bl.vjp(prob, b, v, "partial_smoothness"), ref, atol=1e-9)
    # The projected gradient step contracts at 1 - sigma_min(A_F)^2 / ||A||^2 on the face:
    # GMRES on its fixed point to 1e-12.
    fp = bl.strategies.FixedPoint(method="gmres", tol=1e-12)
    np.testing.assert_allclose(bl.vjp(prob, b, v, fp), ref, atol=1e-8)


def test_nnls_face_on_dependent_columns_names_pinv():
    A = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])   # collinear columns: x* not unique
    prob = NNLS(A)
    sol = Solution(x=np.array([0.5, 0.5]), theta=np.array([1.0, 1.0, 0.0]), n_iter=0,
                   converged=True, info={})
    with pytest.raises(bl.SingularSystemError, match="pinv"):
        bl.strategies.PartialSmoothness().vjp(prob, sol, np.array([1.0, -1.0]))
    # The pseudo-inverse: the minimum-norm derivative, A_F (A_F^T A_F)^+ v_F.
    g, _ = bl.strategies.PartialSmoothness(pinv=True).vjp(prob, sol, np.array([1.0, 1.0]))
    np.testing.assert_allclose(g, A @ np.linalg.pinv(A.T @ A) @ np.ones(2), atol=1e-12)


def test_equality_constrained_ls_step_is_half_the_projector():
    D, beta = moment_matrix([-0.1, 0.1, 0.2], 0, 2)
    prob = EqualityConstrainedLS(D, beta)
    xi = np.array([0.3, 0.5, 0.1])
    v = np.array([1.0, -2.0, 0.5])
    # T(z) = P (z + xi)/2 + D^+ beta: dT/dz = P/2, dT/dxi = P/2, so (I - P/2)^{-1} P/2 = P.
    for name in ("fixed_point", "unroll"):
        np.testing.assert_allclose(bl.vjp(prob, xi, v, name), prob.P @ v, atol=1e-9,
                                   err_msg=name)
    assert "no inequality can switch" in prob.capabilities.why_not["manifold"]


# -- issue 17: stopping rules relative to the data's own scale ----------------------------
@pytest.mark.parametrize("scale", [1e-14, 1e-8, 1.0, 1e12])
def test_nnls_tiny_and_huge_b_match_scipy(scale):
    """``NNLS(A).solve(1e-14 b)`` is scipy's nnls (it returned 0 with an absolute dual tol)."""
    import scipy.optimize

    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((6, 4)), rng.standard_normal(6)
    sol = NNLS(A).solve(scale * b)
    ref = scipy.optimize.nnls(A, scale * b)[0]
    assert sol.converged
    assert np.any(ref > 0)
    # 1e-12: both are exact active-set solutions of a well-conditioned A (rounding only)
    assert np.allclose(sol.x, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_nnls_vjp_is_scale_free():
    """dx*/db is 0-homogeneous in b: the active set (relative to |x|) does not move."""
    rng = np.random.default_rng(1)
    A, b, v = rng.standard_normal((6, 4)), rng.standard_normal(6), rng.standard_normal(4)
    prob = NNLS(A)
    g1 = bl.vjp(prob, b, v, strategy="analytic")
    for scale in (1e-14, 1e12):
        assert np.allclose(bl.vjp(prob, scale * b, v, strategy="analytic"), g1, rtol=1e-12,
                           atol=1e-12)


@pytest.mark.parametrize("scale", [1e10, 1e15, 1e20, 1e30])
@pytest.mark.parametrize("offdiag", [0.0, 0.5, 0.9])
def test_qp_large_c_on_a_box_is_the_vertex(scale, offdiag):
    """QP with |c| >> |Q| on the box [-1, 1]^2: x* = -sign(c) (closed form).

    The KKT conditions hold there since |Q x| <= 2 << |c|. The dual method carries
    eps |Q^{-1} c| of rounding from its unconstrained start: it returned [-1, 0.944] at 1e15
    and "infeasible" at 1e20 before the null-space polish on the active set.
    """
    Q = np.array([[1.0, offdiag], [offdiag, 1.0]])
    G = np.vstack([np.eye(2), -np.eye(2)])
    prob = QP(Q, G, np.ones(4))
    for d in (np.array([1.0, -1.0]), np.array([1.0, -0.3]), np.array([-0.2, 1.0])):
        sol = prob.solve(scale * d)
        assert sol.converged
        assert np.array_equal(sol.x, -np.sign(d)), (scale, offdiag, d, sol.x)


def test_qp_vjp_is_scale_free():
    """dx*/d(c, h) is 0-homogeneous: (c c, c h) has the active set of (c, h) at any c (the
    active tolerance was ``1e-9 max(1, |x|)``: every slack below 1e-9 counted as active)."""
    rng = np.random.default_rng(3)
    Q = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 1.5]])
    G = np.array([[1.0, 1.0, 0.0], [0.0, -1.0, 1.0], [1.0, 0.0, 0.0]])
    c, h, v = np.array([-2.0, -1.0, 0.5]), np.array([0.5, 0.2, 3.0]), rng.standard_normal(3)
    prob = QP(Q, G)
    ref = bl.vjp(prob, (c, h), v, strategy="analytic")
    assert np.allclose(ref[0], bl.vjp(prob, (c, h), v, strategy="implicit")[0], atol=1e-9)
    for scale in (1e-12, 1e12):
        got = bl.vjp(prob, (scale * c, scale * h), v, strategy="analytic")
        for g, r in zip(got, ref):
            # 1e-9: the same closed form on the same active set, up to rounding
            assert np.allclose(g, r, rtol=1e-9, atol=1e-9), scale


@pytest.mark.parametrize("ratio", [1e-9, 1e-11])
def test_equality_ls_with_a_nearly_rank_deficient_d_warns_and_stays_accurate(ratio):
    """Singular-value ratio 1e-11: the normal equations (cond^2 = 1e22) were 108% off."""
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    V = np.linalg.qr(rng.standard_normal((6, 3)))[0]
    D = U @ np.diag([1.0, 0.5, ratio]) @ V.T
    beta, xi = rng.standard_normal(3), rng.standard_normal(6)
    with pytest.warns(bl.ConvergenceWarning,
                      match=re.escape(f"condition number {1 / ratio:.1e}") + ".*remove"):
        prob = EqualityConstrainedLS(D, beta)
    # Closed form from the construction D = U S V^T: z* = (I - V V^T) xi + V S^-1 U^T beta.
    z_ref = xi - V @ (V.T @ xi) + V @ ((U.T @ beta) / np.array([1.0, 0.5, ratio]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bl.ConvergenceWarning)   # the residual is eps * cond
        z = prob.solve(xi).x
    # D is itself rounded (relative 1e-16): z* moves by up to ~eps * cond relative to |z*|.
    np.testing.assert_allclose(z, z_ref, atol=10 * 2.2e-16 / ratio * np.abs(z_ref).max())
    with pytest.raises(ValueError, match="full row rank.*ratio 1.0e-13"):
        EqualityConstrainedLS(U @ np.diag([1.0, 0.5, 1e-13]) @ V.T, beta)


def test_qp_batch_with_large_c_is_the_vertex():
    """The layer's batched solve polishes the rows the dual method's rounding spoiled."""
    Q = np.array([[1.0, 0.9], [0.9, 1.0]])
    G = np.vstack([np.eye(2), -np.eye(2)])
    prob = QP(Q, G, np.ones(4))
    C = np.array([[1.0, -0.3], [-0.2, 1.0], [0.3, 0.1]]) * np.array([[1e15], [1e20], [1.0]])
    X = bl.torch.Layer(prob, strategy="analytic")(torch.from_numpy(C)).detach().numpy()
    assert np.array_equal(X[:2], -np.sign(C[:2]))
    assert np.allclose(X[2], prob.solve(C[2]).x, atol=1e-14)
