"""Ridge: the exact strategies and the Jacobian against the closed-form hypergradient."""

import re
import warnings

import numpy as np
import pytest
from hypothesis import given

import bilevel as bl
from bilevel.testing import regression_data, ridge_instances

EXACT = [
    bl.strategies.Analytic(),
    bl.strategies.Implicit(),
    bl.strategies.Implicit(hvp="autograd", linear_solver="cg", tol=1e-13),
    bl.strategies.Implicit(hvp="autograd", linear_solver="minres", tol=1e-13),
    bl.strategies.FixedPoint(method="gmres", tol=1e-13),
]


@pytest.mark.parametrize("strategy", EXACT, ids=lambda s: f"{s.name}-{getattr(s, 'hvp', '')}"
                         f"{getattr(s, 'linear_solver', '')}")
@given(instance=ridge_instances())
def test_exact_strategies_match_closed_form(closed_form, rel_err, strategy, instance):
    problem, lam = instance
    v = np.random.default_rng(1).standard_normal(problem.X.shape[1])
    x_ref, g_ref = closed_form(problem, lam, v)
    sol = problem.solve(lam)
    assert np.allclose(sol.x, x_ref, rtol=1e-10, atol=1e-12)
    g, info = strategy.vjp(problem, sol, v)
    assert np.shape(g) == np.shape(lam)
    # cond(H) <= ~1e4 on these instances: 1e-8 leaves four digits of margin over round-off.
    assert rel_err(g, g_ref) < 1e-8, info


def test_jacobian_per_feature_matches_closed_form():
    X, y = regression_data(30, 4, seed=7)
    problem = bl.problems.Ridge(X, y)
    lam = np.array([0.1, 0.5, 1.0, 2.0])
    H = X.T @ X / 30 + np.diag(lam)
    x = np.linalg.solve(H, X.T @ y / 30)
    J_ref = -np.linalg.solve(H, np.diag(x))          # dx*/dlam_j = -H^{-1} e_j x_j
    for strategy in ("implicit", "analytic", "fixed_point"):
        J = bl.jacobian(problem, lam, strategy)
        assert J.shape == (4, 4)
        np.testing.assert_allclose(J, J_ref, rtol=1e-9, atol=1e-13)


def test_ridge_warns_with_the_condition_number():
    """lam = 1e-13 with n < p: cond(X^T X / n + lam) = (s_max + lam) / lam, about 1e13."""
    X, y = regression_data(5, 8, seed=1)
    prob = bl.problems.Ridge(X, y)
    cond = (np.linalg.eigvalsh(X.T @ X / 5)[-1] + 1e-13) / 1e-13
    with pytest.warns(bl.ConvergenceWarning,
                      match=re.escape(f"condition number up to {cond:.1e}") + ".*increase lam"):
        prob.solve(1e-13)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prob.solve(1e-2)
