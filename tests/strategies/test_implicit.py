"""Implicit: the KKT path (one-sided flags, pinv, damping, MINRES, warnings), singular Hessians."""

import numpy as np
import pytest

import bilevel as bl
from bilevel._types import Solution
from bilevel.problems import NNLS, QP

IMPLICIT = bl.strategies.Implicit()


# --- the KKT path ---
def test_one_sided_flag_exactly_when_a_multiplier_is_zero(qp_instance, nnls_instance):
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


def test_one_sided_gradient_is_the_branch_with_the_constraint_active(qp_instance, kkt_vjp):
    # With a weakly active constraint kept in the active set, the gradient is that of the
    # problem where it is an equality: the derivative for perturbations pushing into it.
    Q, G, c, h, x, lam = qp_instance(13, 3, 4, 2, weak=(1,))
    v = np.array([1.0, -0.5, 2.0])
    g_c, g_h = bl.vjp(QP(Q, G), (c, h), v, "implicit")
    ref_c, ref_w = kkt_vjp(Q, G[:2], v)
    np.testing.assert_allclose(g_c, ref_c, atol=1e-10)
    np.testing.assert_allclose(g_h[:2], ref_w, atol=1e-10)


def test_singular_kkt_raises_and_pinv_or_damping_resolve_it(qp_instance):
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


def test_constrained_minres_matches_direct(qp_instance):
    Q, G, c, h, x, lam = qp_instance(31, 5, 7, 3)
    v = np.arange(5.0)
    g_d = bl.vjp(QP(Q, G), (c, h), v, bl.strategies.Implicit(linear_solver="direct"))
    g_m = bl.vjp(QP(Q, G), (c, h), v, bl.strategies.Implicit(linear_solver="minres",
                                                              tol=1e-13))
    g_c = bl.vjp(QP(Q, G), (c, h), v, bl.strategies.Implicit(linear_solver="cg", tol=1e-13))
    for a, b, d in zip(g_d, g_m, g_c):
        np.testing.assert_allclose(b, a, atol=1e-9)    # MINRES to 1e-13 relative, cond ~1e3
        np.testing.assert_allclose(d, a, atol=1e-9)    # CG is replaced by MINRES on KKT


def test_not_applicable_names_both_alternatives():
    class Empty(bl.problems.Problem):
        name = "empty"

    with pytest.raises(bl.NotApplicable, match=r"optimality \(or constraints\)"):
        IMPLICIT.vjp(Empty(), None, None)
    assert "implicit" in bl._registry.applicable_strategies(NNLS(np.eye(2)))


def test_kkt_point_warning_when_x_is_not_stationary(nnls_instance):
    A, b, x, lam = nnls_instance(41, 6, 3, 1)
    prob = NNLS(A)
    wrong = Solution(x=x + 0.1, theta=b, n_iter=0, converged=True, info={})
    with pytest.warns(bl.ConvergenceWarning, match="not a KKT point"):
        IMPLICIT.vjp(prob, wrong, np.ones(3))


def test_compare_traces_implicit_on_a_constrained_problem(qp_instance):
    Q, G, c, h, x, lam = qp_instance(61, 6, 8, 3)
    report = bl.compare(QP(Q, G, h), lambda z, t: (z ** 2).sum(), c,
                        ["analytic", "implicit"], repeat=1, budgets=[1, 40])
    rows = {r["strategy"]: r for r in report.rows}
    assert rows["implicit"]["error"] < 1e-10             # direct KKT solve, round-off
    trace = [e for _, e in rows["implicit"]["trace"]]    # MINRES with a budget
    assert trace[-1] < 1e-8 < trace[0]


# --- unconstrained ---
def test_singular_hessian_names_damping():
    # E = (x0 + x1 - theta)^2 / 2 is flat along (1, -1): the Hessian is singular.
    problem = bl.problems.Smooth(lambda x, t: 0.5 * (x.sum() - t) ** 2, np.zeros(2))
    with pytest.raises(bl.SingularSystemError, match="damping"):
        bl.vjp(problem, 1.0, np.array([1.0, 0.0]), "implicit")
    # Damping regularizes: (H + d I)^{-1} v along the range of H tends to the min-norm answer.
    g = bl.vjp(problem, 1.0, np.array([1.0, 1.0]), bl.strategies.Implicit(damping=1e-10))
    assert float(g) == pytest.approx(1.0, rel=1e-8)   # x* = (t/2, t/2) + null: d(x0+x1)/dt = 1
