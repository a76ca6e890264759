"""Constrained problems and the KKT path of Implicit: solutions against constructed KKT
points and SciPy/cvxpy, VJPs against closed forms and float64 finite differences, the
specialised VJPs against the generic constrained Implicit, one-sided flags, singular cases.

Instances are built from a prescribed KKT point (x*, multipliers, slacks), so the solution,
the active set and the strict-complementarity margin are known exactly: no kinks.
"""

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import bilevel as bl
from bilevel._types import Solution
from bilevel.problems import NNLS, QP, Constrained, EqualityConstrainedLS, moment_matrix

IMPLICIT = bl.strategies.Implicit()


def qp_instance(seed, n, m, n_active, weak=()):
    """A QP with known solution: active rows ``S`` (first ``n_active``), multipliers in
    [0.5, 2] (0 on ``weak``), inactive slacks in [0.3, 1]."""
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n + 2, n))
    Q = B.T @ B + 0.5 * np.eye(n)
    G = rng.standard_normal((m, n))
    if n_active:    # well-conditioned active normals: the kinks stay far (cond(G_S) <= 4)
        basis = np.linalg.qr(rng.standard_normal((n, n_active)))[0].T
        G[:n_active] = basis * rng.uniform(0.5, 2.0, (n_active, 1))
    x = rng.standard_normal(n)
    lam = np.zeros(m)
    lam[:n_active] = rng.uniform(0.5, 2.0, n_active)
    lam[list(weak)] = 0.0
    slack = rng.uniform(0.3, 1.0, m)
    slack[:n_active] = 0.0
    c = -Q @ x - G.T @ lam
    h = G @ x + slack
    return Q, G, c, h, x, lam


def nnls_instance(seed, m, n, n_zero, weak=()):
    """NNLS with known solution: x*_i = 0 for i < n_zero with multipliers in [0.5, 2]
    (0 on ``weak``), x*_i in [0.5, 2] elsewhere."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    x = rng.uniform(0.5, 2.0, n)
    x[:n_zero] = 0.0
    lam = np.zeros(n)
    lam[:n_zero] = rng.uniform(0.5, 2.0, n_zero)
    lam[list(weak)] = 0.0
    b = A @ x - A @ np.linalg.solve(A.T @ A, lam)      # A^T (A x - b) = lam
    return A, b, x, lam


def kkt_vjp(Q, G_S, v):
    """The closed form by a dense KKT solve (independent of the package's formulas)."""
    n, k = Q.shape[0], G_S.shape[0]
    K = np.block([[Q, G_S.T], [G_S, np.zeros((k, k))]])
    uw = np.linalg.solve(K, np.concatenate([v, np.zeros(k)]))
    return -uw[:n], uw[n:]


def generic_qp(Q, G):
    Qt, Gt = torch.from_numpy(Q), torch.from_numpy(G)
    return Constrained(lambda x, t: 0.5 * x @ (Qt @ x) + t[0] @ x,
                       ineq=lambda x, t: Gt @ x - t[1], x0=np.zeros(Q.shape[0]), affine=True)


sizes = st.integers(2, 5)


@given(seed=st.integers(0, 2**32 - 1), n=sizes, extra=st.integers(0, 4),
       frac=st.floats(0.0, 1.0))
def test_qp_solution_vjp_and_generic_implicit(seed, n, extra, frac):
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
def test_qp_vjp_matches_finite_differences(seed, n, frac):
    Q, G, c, h, x, lam = qp_instance(seed, n, n + 2, int(round(frac * n)))
    prob = QP(Q, G)
    v = np.random.default_rng(seed + 2).standard_normal(n)
    g = bl.vjp(prob, (c, h), v, "analytic")
    fd = bl.vjp(prob, (c, h), v, bl.strategies.FiniteDifference())
    # x* is piecewise affine in (c, h), exact to round-off: FD error ~ eps / step, and
    # the margins (>= 0.3 slack, >= 0.5 multiplier) keep the stencil on one piece.
    for a, b in zip(g, fd):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_qp_theta_c_only_and_fixed_h():
    Q, G, c, h, x, lam = qp_instance(3, 4, 6, 2)
    prob = QP(Q, G, h)
    assert prob.theta_ndim == (1,)
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


def test_one_sided_flag_exactly_when_a_multiplier_is_zero():
    for weak in ((), (1,), (0, 2)):
        Q, G, c, h, x, lam = qp_instance(11, 4, 6, 3, weak=weak)
        _, info = bl.vjp(QP(Q, G), (c, h), np.ones(4), "implicit", return_info=True)
        assert info["one_sided"] == bool(weak)
        assert sorted(info["weakly_active"]) == sorted(weak)
        assert sorted(info["active"]) == [0, 1, 2]
    for weak in ((), (0,)):
        A, b, x, lam = nnls_instance(12, 7, 4, 2, weak=weak)
        _, info = bl.vjp(NNLS(A), b, np.ones(4), "implicit", return_info=True)
        assert info["one_sided"] == bool(weak)
        assert list(info["weakly_active"]) == list(weak)


def test_one_sided_gradient_is_the_branch_with_the_constraint_active():
    # With a weakly active constraint kept in the active set, the gradient is that of the
    # problem where it is an equality: the derivative for perturbations pushing into it.
    Q, G, c, h, x, lam = qp_instance(13, 3, 4, 2, weak=(1,))
    v = np.array([1.0, -0.5, 2.0])
    g_c, g_h = bl.vjp(QP(Q, G), (c, h), v, "implicit")
    ref_c, ref_w = kkt_vjp(Q, G[:2], v)
    np.testing.assert_allclose(g_c, ref_c, atol=1e-10)
    np.testing.assert_allclose(g_h[:2], ref_w, atol=1e-10)


def test_singular_kkt_raises_and_pinv_or_damping_resolve_it():
    # The first active row duplicated: G_S rank-deficient (LICQ fails).
    Q, G, c, h, x, lam = qp_instance(21, 3, 4, 2)
    G2 = np.vstack([G, G[:1]])
    h2 = np.concatenate([h, h[:1]])
    prob = QP(Q, G2)
    v = np.array([0.3, -1.0, 0.5])
    with pytest.raises(bl.SingularSystemError, match="pinv=True"):
        bl.vjp(prob, (c, h2), v, "analytic")
    with pytest.raises(bl.SingularSystemError, match="pinv=True"):
        bl.vjp(prob, (c, h2), v, "implicit")
    g_c, g_h = bl.vjp(prob, (c, h2), v, bl.strategies.Implicit(pinv=True))
    ref_c, ref_h = bl.vjp(QP(Q, G), (c, h), v, "analytic")
    # Minimum norm: the duplicated multiplier's adjoint is split equally between copies.
    np.testing.assert_allclose(g_c, ref_c, atol=1e-9)
    np.testing.assert_allclose(g_h[[0, 4]], ref_h[0] / 2, atol=1e-9)
    np.testing.assert_allclose(g_h[1:4], ref_h[1:4], atol=1e-9)
    d_c, _ = bl.vjp(prob, (c, h2), v, bl.strategies.Implicit(damping=1e-9))
    np.testing.assert_allclose(d_c, ref_c, atol=1e-6)      # bias of order damping * cond
    # Unconstrained: a singular Hessian, and the pinv remedy there too.
    smooth = bl.problems.Smooth(lambda z, t: 0.5 * (z.sum() - t) ** 2, np.zeros(2))
    with pytest.raises(bl.SingularSystemError, match="pinv=True"):
        bl.vjp(smooth, np.asarray(1.0), np.ones(2), "implicit")
    g = bl.vjp(smooth, np.asarray(1.0), np.ones(2), bl.strategies.Implicit(pinv=True))
    # x* = (t/2, t/2) + null(H) component; the minimum-norm adjoint u = H^+ v = (1/2, 1/2)
    # gives d/dt <v, x*> = 1 (round-off only).
    np.testing.assert_allclose(g, 1.0, atol=1e-9)


@given(seed=st.integers(0, 2**32 - 1), n=sizes, extra=st.integers(0, 4),
       frac=st.floats(0.0, 1.0))
def test_nnls_solution_vjp_and_generic_implicit(seed, n, extra, frac):
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


@given(t=st.lists(st.floats(-3, 3), min_size=2, max_size=4))
def test_nonlinear_equality_sphere_projection(t):
    # Projection onto the unit sphere: x = t/|t|, dx/dt = (I - x x^T)/|t| (closed form).
    t = np.array(t)
    assume(np.linalg.norm(t) > 0.3)
    n = t.size
    prob = Constrained(lambda x, th: ((x - th) ** 2).sum(), eq=lambda x, th: (x * x).sum() - 1,
                       x0=np.ones(n) / np.sqrt(n))
    assume(t @ np.ones(n) > 0.1)        # x0 in the basin of the projection, not its antipode
    sol = prob.solve(t)
    x = t / np.linalg.norm(t)
    np.testing.assert_allclose(sol.x, x, atol=1e-9)    # Newton-polished KKT point
    v = np.linspace(-1, 1, n)
    ref = (v - x * (x @ v)) / np.linalg.norm(t)
    g, info = IMPLICIT.vjp(prob, sol, v)
    np.testing.assert_allclose(g, ref, atol=1e-8)
    assert info["multipliers"] == "solver"
    bare = Solution(x=sol.x, theta=sol.theta, n_iter=0, converged=True, info={})
    g_rec, info = IMPLICIT.vjp(prob, bare, v)     # the multiplier enters H: recovered
    assert info["multipliers"] == "recovered"
    np.testing.assert_allclose(g_rec, ref, atol=1e-8)


def test_inequality_ball_projection_active_and_inactive_and_trust_constr():
    for method in ("SLSQP", "trust-constr"):
        prob = Constrained(lambda x, th: ((x - th) ** 2).sum(),
                           ineq=lambda x, th: (x * x).sum() - 1, x0=np.zeros(3),
                           method=method)
        v = np.array([1.0, 2.0, -1.0])
        t_out, t_in = np.array([1.0, 2.0, 0.5]), np.array([0.1, -0.2, 0.3])
        sol = prob.solve(t_out)
        x = t_out / np.linalg.norm(t_out)
        np.testing.assert_allclose(sol.x, x, atol=1e-9)
        assert list(sol.info["active"]) == [0] and sol.info["lam"][0] > 0
        g, info = IMPLICIT.vjp(prob, sol, v)
        np.testing.assert_allclose(g, (v - x * (x @ v)) / np.linalg.norm(t_out), atol=1e-8)
        assert not info["one_sided"]
        sol = prob.solve(t_in)
        np.testing.assert_allclose(sol.x, t_in, atol=1e-9)
        g, info = IMPLICIT.vjp(prob, sol, v)
        np.testing.assert_allclose(g, v, atol=1e-10)
        assert info["active"].size == 0


@given(st.lists(st.floats(-3, 3), min_size=3, max_size=3), st.floats(1.05, 4.0),
       st.sampled_from(["SLSQP", "trust-constr"]))
def test_ball_projection_multiplier_matches_closed_form(direction, radius, method):
    # trust-constr is an interior-point method: it may stop at a slack of ~1e-5, beyond the
    # polish's near-active threshold; its own multipliers must still put the ball in the
    # working set. Closed form: x = t / |t|, lam = |t| - 1 (from 2(x - t) + 2 lam x = 0).
    u = np.asarray(direction)
    assume(np.linalg.norm(u) > 0.1)
    t = radius * u / np.linalg.norm(u)
    prob = Constrained(lambda x, th: ((x - th) ** 2).sum(),
                       ineq=lambda x, th: (x * x).sum() - 1, x0=np.zeros(3), method=method)
    sol = prob.solve(t)
    assert sol.converged
    np.testing.assert_allclose(sol.x, t / radius, atol=1e-9)    # polished to round-off
    assert list(sol.info["active"]) == [0]
    np.testing.assert_allclose(sol.info["lam"], [radius - 1.0], rtol=1e-8)


def test_trust_constr_stopping_outside_near_active_threshold_is_polished():
    # A theta for which trust-constr (SciPy 1.17) stops at |x| - 1 = -2.5e-6.
    t = np.array([1.0, 2.0, 0.5]) * (1 + 1e-3 * np.random.default_rng(0).standard_normal(3))
    prob = Constrained(lambda x, th: ((x - th) ** 2).sum(),
                       ineq=lambda x, th: (x * x).sum() - 1, x0=np.zeros(3),
                       method="trust-constr")
    sol = prob.solve(t)
    np.testing.assert_allclose(sol.x, t / np.linalg.norm(t), atol=1e-12)
    np.testing.assert_allclose(sol.info["lam"], [np.linalg.norm(t) - 1], rtol=1e-10)


def test_constrained_minres_matches_direct():
    Q, G, c, h, x, lam = qp_instance(31, 5, 7, 3)
    v = np.arange(5.0)
    g_d = bl.vjp(QP(Q, G), (c, h), v, bl.strategies.Implicit(linear_solver="direct"))
    g_m = bl.vjp(QP(Q, G), (c, h), v, bl.strategies.Implicit(linear_solver="minres",
                                                              tol=1e-13))
    g_c = bl.vjp(QP(Q, G), (c, h), v, bl.strategies.Implicit(linear_solver="cg", tol=1e-13))
    for a, b, d in zip(g_d, g_m, g_c):
        np.testing.assert_allclose(b, a, atol=1e-9)    # MINRES to 1e-13 relative, cond ~1e3
        np.testing.assert_allclose(d, a, atol=1e-9)    # CG is replaced by MINRES on KKT


def test_constrained_errors_and_infeasibility():
    with pytest.raises(ValueError, match="infeasible"):
        Constrained(lambda x, t: (x * x).sum(), eq=lambda x, t: x * 0 + 1.0,
                    x0=np.zeros(2)).solve(np.zeros(1))
    with pytest.raises(ValueError, match="x0 is required"):
        Constrained(lambda x, t: (x * x).sum())
    with pytest.raises(ValueError, match="method"):
        Constrained(lambda x, t: (x * x).sum(), x0=np.zeros(1), method="cobyla")
    with pytest.raises(TypeError, match="eq must be callable"):
        Constrained(lambda x, t: (x * x).sum(), eq=3, x0=np.zeros(1))


def test_not_applicable_names_both_alternatives():
    class Empty(bl.problems.Problem):
        name = "empty"

    with pytest.raises(bl.NotApplicable, match=r"optimality \(or constraints\)"):
        IMPLICIT.vjp(Empty(), None, None)
    assert "implicit" in bl._registry.applicable_strategies(NNLS(np.eye(2)))


def test_kkt_point_warning_when_x_is_not_stationary():
    A, b, x, lam = nnls_instance(41, 6, 3, 1)
    prob = NNLS(A)
    wrong = Solution(x=x + 0.1, theta=b, n_iter=0, converged=True, info={})
    with pytest.warns(bl.ConvergenceWarning, match="not a KKT point"):
        IMPLICIT.vjp(prob, wrong, np.ones(3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_layers_batch_and_match_the_per_row_path(dtype):
    Q, G, c, h, x, lam = qp_instance(51, 4, 6, 2)
    rng = np.random.default_rng(0)
    C = torch.tensor(c + 0.01 * rng.standard_normal((3, 4)), dtype=dtype, requires_grad=True)
    H = torch.tensor(np.tile(h, (3, 1)), dtype=dtype, requires_grad=True)
    A, b, _, _ = nnls_instance(52, 6, 4, 2)
    Bm = torch.tensor(b + 0.01 * rng.standard_normal((3, 6)), dtype=dtype, requires_grad=True)
    D, beta = moment_matrix([-0.2, -0.1, 0.1, 0.2], 0, 2)
    Xi = torch.tensor(rng.standard_normal((3, 4)), dtype=dtype, requires_grad=True)
    cases = [(QP(Q, G), (C, H)), (NNLS(A), (Bm,)), (EqualityConstrainedLS(D, beta), (Xi,))]
    for prob, inputs in cases:
        out = {}
        for name in ("analytic", "implicit"):
            leaves = [t.detach().clone().requires_grad_() for t in inputs]
            y = bl.torch.Layer(prob, name)(*leaves)
            assert y.dtype == dtype and y.shape[0] == 3
            (y * torch.arange(y.shape[1], dtype=dtype)).sum().backward()
            out[name] = [t.grad.double().numpy() for t in leaves]
            assert all(t.grad.dtype == dtype for t in leaves)
        tol = 1e-9 if dtype == torch.float64 else 1e-4     # float32 round-off of inputs
        for a, b in zip(out["analytic"], out["implicit"]):
            np.testing.assert_allclose(a, b, atol=tol)


def test_compare_traces_implicit_on_a_constrained_problem():
    Q, G, c, h, x, lam = qp_instance(61, 6, 8, 3)
    report = bl.compare(QP(Q, G, h), lambda z, t: (z ** 2).sum(), c,
                        ["analytic", "implicit"], repeat=1, budgets=[1, 40])
    rows = {r["strategy"]: r for r in report.rows}
    assert rows["implicit"]["error"] < 1e-10             # direct KKT solve, round-off
    trace = [e for _, e in rows["implicit"]["trace"]]    # MINRES with a budget
    assert trace[-1] < 1e-8 < trace[0]
