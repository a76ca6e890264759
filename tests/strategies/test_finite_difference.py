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
