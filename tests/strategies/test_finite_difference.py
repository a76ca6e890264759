"""FiniteDifference: stencil accuracy against a closed form, its step shrinking near a kink."""

import numpy as np
import pytest
from hypothesis import given

import bilevel as bl
from bilevel.testing import regression_data, ridge_instances

PS = bl.strategies.PartialSmoothness()


@given(instance=ridge_instances(max_features=4))
def test_finite_differences_match_closed_form(closed_form, rel_err, instance):
    problem, lam = instance
    v = np.random.default_rng(2).standard_normal(problem.X.shape[1])
    _, g_ref = closed_form(problem, lam, v)
    g = bl.vjp(problem, lam, v, "finite_difference")
    # Fourth-order stencil with h ~ 7e-4 |lam|: truncation ~h^4 and round-off ~1e-16/h.
    assert rel_err(g, g_ref) < 1e-7


def test_finite_differences_shrink_their_step_near_a_kink():
    problem = bl.problems.Lasso(*regression_data(30, 8, seed=2))
    lam = np.full(8, problem.lam_max() / 3)
    sol = problem.solve(lam)
    off = np.flatnonzero(sol.x == 0)
    corr = problem.design.X.T @ (problem.y - problem.design.X @ sol.x) / 30
    j = off[np.argmax(np.abs(corr[off]))]
    lam[j] = abs(corr[j]) * (1 + 3e-5)     # feature j enters 3e-5 (relative) away
    v = np.linspace(-1, 1, 8)
    exact, info = bl.vjp(problem, lam, v, PS, return_info=True)
    assert 1e-5 < info["margin"] < 1e-4
    fd, fd_info = bl.vjp(problem, lam, v, "finite_difference", return_info=True)
    assert fd_info["rel_step"] == pytest.approx(info["margin"] / 10)
    # Polished solves are exact to round-off, so a 3e-6 step still gives ~1e-9.
    np.testing.assert_allclose(fd, exact, rtol=1e-7, atol=1e-9 * np.abs(exact).max())
    crossing = bl.vjp(problem, lam, v, bl.strategies.FiniteDifference(rel_step=7e-4))
    assert np.abs(crossing - exact).max() > 1e-3 * np.abs(exact).max()


def test_one_sided_stencils_at_the_edge_of_the_domain():
    """exp on [0, inf): the central stencil would leave the domain, the forward one is used."""
    from bilevel.strategies.finite_difference import directional_derivative

    def positive(t):
        return float(t) >= 0

    for order in (2, 4):
        d, calls = directional_derivative(np.exp, np.asarray(0.0), [np.ones(())], 1e-3, order,
                                          positive)
        assert calls == order + 1       # the one-sided stencil has one more point
        # Truncation ~ h^order / (order + 1): 3e-7 (order 2) and 2e-13 (order 4).
        assert abs(d - 1.0) < (1e-6 if order == 2 else 1e-11)


def test_finite_differences_at_lam_zero_match_the_closed_form(closed_form, rel_err):
    """Ridge at lam = 0 and ElasticNet's lam2 = 0: valid inputs on the domain's edge."""
    X, y = regression_data(30, 4, seed=3)
    v = np.linspace(-1, 1, 4)
    ridge = bl.problems.Ridge(X, y)
    _, g_ref = closed_form(ridge, 0.0, v)
    # Forward fourth-order stencil, h ~ 7e-4: exact direct solves, error ~h^4.
    assert rel_err(bl.vjp(ridge, 0.0, v, "finite_difference"), g_ref) < 1e-8
    enet = bl.problems.ElasticNet(X, y)
    theta = (np.asarray(0.01), np.asarray(0.0))
    g = bl.vjp(enet, theta, v, "finite_difference")
    ref = bl.vjp(enet, theta, v, PS)
    for a, b in zip(g, ref):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(b).max())


def test_finite_differences_resolve_a_map_on_a_small_scale():
    """softmax(z + 1000): a step relative to |z| ~ 1000 is too coarse; the refined one is not."""
    z = np.array([0.3, 0.1, -0.5, 0.2]) + 1000.0
    v = np.array([1.0, -2.0, 0.5, 3.0])
    p = np.exp(z - z.max())
    p /= p.sum()
    exact = p * v - p * (p @ v)             # (diag(p) - p p^T) v, the softmax Jacobian
    g = bl.vjp(bl.problems.EntropicSimplex(), z, v, "finite_difference")
    # The solves are exact to ~1e-16 relative; the refined step is ~1e-2: error ~1e-10.
    np.testing.assert_allclose(g, exact, rtol=1e-7, atol=1e-9)


def test_finite_differences_do_not_warm_start_into_a_non_answer():
    """Logistic at lam = 1e-9: x* warm-started at the shifted lam does not move (old: 0)."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 5))
    y = np.sign(X @ rng.standard_normal(5) + 1.5 * rng.standard_normal(200))
    prob = bl.problems.LogisticRegression(X, y)
    v = np.ones(5)
    exact = bl.vjp(prob, 1e-9, v, "implicit")
    assert abs(exact) > 10
    # h = 7e-4 lam ~ 7e-13: the Newton solves' round-off (~1e-16 |x|) over h gives ~1e-5.
    assert bl.vjp(prob, 1e-9, v, "finite_difference") == pytest.approx(exact, rel=1e-4)
