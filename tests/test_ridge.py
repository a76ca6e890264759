"""Every strategy against the closed-form ridge hypergradient."""

import numpy as np
import pytest
from hypothesis import given

import bilevel as bl
from bilevel.testing import regression_data, ridge_instances


def closed_form(problem, lam, v):
    """(dx*/dlam)^T v = -x* . H^{-1} v, with H = X^T X / n + diag(lam)."""
    X, y = problem.X, problem.y
    n, p = X.shape
    H = X.T @ X / n + np.diag(np.broadcast_to(lam, (p,)))
    x = np.linalg.solve(H, X.T @ y / n)
    g = -x * np.linalg.solve(H, v)
    return x, (g.sum() if np.ndim(lam) == 0 else g)


def rel_err(a, b):
    return np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b))


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
def test_exact_strategies_match_closed_form(strategy, instance):
    problem, lam = instance
    v = np.random.default_rng(1).standard_normal(problem.X.shape[1])
    x_ref, g_ref = closed_form(problem, lam, v)
    sol = problem.solve(lam)
    assert np.allclose(sol.x, x_ref, rtol=1e-10, atol=1e-12)
    g, info = strategy.vjp(problem, sol, v)
    assert np.shape(g) == np.shape(lam)
    # cond(H) <= ~1e4 on these instances: 1e-8 leaves four digits of margin over round-off.
    assert rel_err(g, g_ref) < 1e-8, info


@given(instance=ridge_instances(max_features=4))
def test_finite_differences_match_closed_form(instance):
    problem, lam = instance
    v = np.random.default_rng(2).standard_normal(problem.X.shape[1])
    _, g_ref = closed_form(problem, lam, v)
    g = bl.vjp(problem, lam, v, "finite_difference")
    # Fourth-order stencil with h ~ 7e-4 |lam|: truncation ~h^4 and round-off ~1e-16/h.
    assert rel_err(g, g_ref) < 1e-7


def spread_instance():
    """Ridge whose gradient step contracts slowly (rho ~ 0.9): errors of truncated
    strategies stay far above round-off over a hundred iterations."""
    X, y = regression_data(60, 5, seed=3)
    X = X * np.array([1.0, 0.8, 0.6, 0.45, 0.3])
    return bl.problems.Ridge(X, y), 0.01


def test_unroll_error_falls_geometrically():
    problem, lam = spread_instance()
    X = problem.X
    H = X.T @ X / 60 + lam * np.eye(5)
    eig = np.linalg.eigvalsh(H)
    rho = 1 - eig[0] / eig[-1]            # contraction rate of the gradient step 1/L
    assert 0.8 < rho < 0.97               # errors stay far above round-off over 100 steps
    v = np.random.default_rng(0).standard_normal(5)
    _, g_ref = closed_form(problem, lam, v)
    sol = problem.solve(lam)
    steps = np.array([20, 40, 60, 80, 100])
    errors = np.array([rel_err(bl.strategies.Unroll(n_steps=int(n)).vjp(problem, sol, v)[0],
                               g_ref) for n in steps])
    assert np.all(np.diff(errors) < 0)
    rate = np.exp(np.polyfit(steps, np.log(errors), 1)[0])      # fitted error ratio per step
    # The unrolled Jacobian's error is O(n rho^n): the fitted rate sits at rho times the
    # polynomial factor (100/20)^(1/80) ~ 1.02, and well below 1.
    assert rate < 1
    assert rho * 0.9 < rate < rho * 1.03, (rate, rho)


def test_unroll_from_solution_and_truncation_converge():
    problem, lam = spread_instance()
    v = np.ones(5)
    _, g_ref = closed_form(problem, lam, v)
    sol = problem.solve(lam)
    full = bl.strategies.Unroll(n_steps=400, start="solution").vjp(problem, sol, v)[0]
    assert rel_err(full, g_ref) < 1e-8
    short = [rel_err(bl.strategies.Unroll(n_steps=400, truncate=k).vjp(problem, sol, v)[0],
                     g_ref) for k in (5, 20, 80)]
    assert short[0] > short[1] > short[2]


def test_neumann_series_error_falls_with_terms():
    problem, lam = spread_instance()
    v = np.ones(5)
    _, g_ref = closed_form(problem, lam, v)
    sol = problem.solve(lam)
    errors = [rel_err(bl.strategies.FixedPoint(method="neumann", n_terms=n).vjp(
        problem, sol, v)[0], g_ref) for n in (10, 50, 100, 400)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-8


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


def test_hypergradient_torch_loss_equals_ready_loss():
    import torch

    X, y = regression_data(50, 5, seed=8)
    Xv, yv = regression_data(30, 5, seed=9)
    problem = bl.problems.Ridge(X, y)
    Xv_t, yv_t = torch.from_numpy(Xv), torch.from_numpy(yv)

    def loss(x, lam):   # depends on theta too: adds grad_theta L
        return 0.5 * ((Xv_t @ x - yv_t) ** 2).mean() + 0.01 * lam

    v1, g1 = bl.hypergradient(problem, loss, 0.3, "implicit")
    v2, g2 = bl.hypergradient(problem, bl.losses.SquaredError(Xv, yv), 0.3, "analytic")
    assert v1 == pytest.approx(v2 + 0.003, rel=1e-12)
    assert float(g1) == pytest.approx(float(g2) + 0.01, rel=1e-9)
    _, g_log = bl.hypergradient(problem, loss, 0.3, "implicit", log_scale=True)
    assert float(g_log) == pytest.approx(0.3 * float(g1), rel=1e-12)


def test_batched_solver_matches_single():
    from bilevel.solvers import ridge_cholesky, ridge_cholesky_batched

    X, y = regression_data(30, 4, seed=10)
    lams = np.array([[0.1] * 4, [1.0, 2.0, 3.0, 4.0]])
    W, res = ridge_cholesky_batched(X, y, lams)
    for i in range(2):
        np.testing.assert_allclose(W[i], ridge_cholesky(X, y, lams[i])[0], rtol=1e-13)
    assert np.all(res < 1e-12)
