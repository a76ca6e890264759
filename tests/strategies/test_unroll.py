"""Unroll: the error falls with the steps, from zero, from the solution and truncated."""

import warnings

import numpy as np
import pytest

import bilevel as bl
from bilevel.testing import regression_data

PS = bl.strategies.PartialSmoothness()


def quartic(x, theta):
    """E = ||x - theta||^2 / 2 + sum x^4 / 4: x + x^3 = theta, dx/dtheta = 1 / (1 + 3x^2)."""
    return 0.5 * ((x - theta) ** 2).sum() + 0.25 * (x**4).sum()


def test_unroll_error_falls_geometrically(closed_form, rel_err, spread_instance):
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
    with pytest.warns(bl.ConvergenceWarning, match="not converged"):   # budgets short of x*
        errors = np.array([rel_err(bl.strategies.Unroll(n_steps=int(n)).vjp(problem, sol, v)[0],
                                   g_ref) for n in steps])
    assert np.all(np.diff(errors) < 0)
    rate = np.exp(np.polyfit(steps, np.log(errors), 1)[0])      # fitted error ratio per step
    # The unrolled Jacobian's error is O(n rho^n): the fitted rate sits at rho times the
    # polynomial factor (100/20)^(1/80) ~ 1.02, and well below 1.
    assert rate < 1
    assert rho * 0.9 < rate < rho * 1.03, (rate, rho)


def test_unroll_from_solution_and_truncation_converge(closed_form, rel_err, spread_instance):
    problem, lam = spread_instance()
    v = np.ones(5)
    _, g_ref = closed_form(problem, lam, v)
    sol = problem.solve(lam)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bl.ConvergenceWarning)    # a budget study
        full = bl.strategies.Unroll(n_steps=400, start="solution").vjp(problem, sol, v)[0]
        short = [rel_err(bl.strategies.Unroll(n_steps=400, truncate=k).vjp(problem, sol, v)[0],
                         g_ref) for k in (5, 20, 80)]
    assert rel_err(full, g_ref) < 1e-8
    assert short[0] > short[1] > short[2]


def test_unroll_from_zero_identifies_the_support():
    """Finite identification: ISTA from 0 reaches the support, then unrolling converges."""
    problem = bl.problems.Lasso(*regression_data(40, 10, seed=5))
    lam = problem.lam_max() / 4
    v = np.ones(10)
    exact = float(bl.vjp(problem, lam, v, PS))
    with pytest.warns(bl.ConvergenceWarning, match="n_steps=3"):      # 3 steps fall short
        short = float(bl.vjp(problem, lam, v, bl.strategies.Unroll(n_steps=3)))
    errors = [abs(g - exact) for g in (short, float(bl.vjp(problem, lam, v,
                                                         bl.strategies.Unroll(n_steps=1000))))]
    assert errors[0] > 1e-3 * abs(exact) and errors[1] < 1e-8 * abs(exact)


def test_unroll_converges_to_the_exact_jacobian():
    s, lam = np.repeat([0.0, 4.0], 10) + 0.1 * np.random.default_rng(5).standard_normal(20), 0.3
    prob = bl.problems.TV1D(1)
    v = np.random.default_rng(6).standard_normal(20)
    exact = bl.vjp(prob, (s, lam), v, "analytic")
    with pytest.warns(bl.ConvergenceWarning, match="n_steps=20"):     # 20 steps fall short
        short = bl.vjp(prob, (s, lam), v, bl.strategies.Unroll(n_steps=20))[0]
    errors = [np.abs(g - exact[0]).max()
              for g in (short, bl.vjp(prob, (s, lam), v, bl.strategies.Unroll(n_steps=2000))[0])]
    assert errors[1] < 1e-8 * np.abs(exact[0]).max() < errors[0]


def test_unroll_error_decreases_with_steps(blocks, rng):
    prob = bl.problems.TV2D(tol=1e-12, max_iter=200000)
    theta = (blocks(rng, (4, 4)), np.asarray(0.1))
    v = rng.standard_normal((4, 4))
    exact = bl.vjp(prob, theta, v, bl.strategies.FixedPoint(tol=1e-12))[0]
    with pytest.warns(bl.ConvergenceWarning, match="not converged"):   # budgets short of x*
        errors = [np.abs(bl.vjp(prob, theta, v, bl.strategies.Unroll(n_steps=n))[0]
                         - exact).max() for n in (20, 100, 500)]
    assert errors[0] > errors[1] > errors[2]


def test_user_energy_unroll_converges_to_implicit():
    problem = bl.problems.Smooth(quartic, np.zeros(3), step_size=0.2)
    theta = np.array([0.5, -1.0, 2.0])
    v = np.ones(3)
    sol = problem.solve(theta)
    g_ref = bl.strategies.Implicit().vjp(problem, sol, v)[0]
    with pytest.warns(bl.ConvergenceWarning, match="not converged"):   # budgets short of x*
        errors = [np.linalg.norm(bl.strategies.Unroll(n_steps=n).vjp(problem, sol, v)[0] - g_ref)
                  for n in (10, 20, 40)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3 * np.linalg.norm(g_ref)


def test_default_unroll_on_the_main_job_agrees_with_implicit():
    # The README's main job: L2 logistic regression on breast cancer, d/dlog(lam). The
    # gradient step contracts at ~0.99 per step: the replay runs until the iterate and the
    # adjoint reaching the start are both within 1e-10 (thousands of steps).
    from bilevel.datasets import load, split_standardize

    X_train, y_train, X_val, y_val = split_standardize(*load("breast_cancer"))
    problem = bl.problems.LogisticRegression(X_train, y_train)
    loss = bl.losses.LogisticLoss(X_val, y_val)
    _, exact = bl.hypergradient(problem, loss, 1e-2, "implicit", log_scale=True)
    _, g, info = bl.hypergradient(problem, loss, 1e-2, "unroll", log_scale=True,
                                  return_info=True)
    assert abs(g - exact) <= 1e-6 * abs(exact)
    assert info["residual"] <= 1e-10 and info["distance"] <= 1e-10


def test_replay_continues_after_the_iterate_is_at_the_solution():
    # The projected step P((y + x) / 2) reaches y* = P(x) in one step from y0 = x, while its
    # Jacobian sum_k J / 2^k needs ~35 steps: stopping at the iterate would halve the VJP.
    problem = bl.problems.Projection("l2_sphere", 2.0)
    x = np.array([1.0, -2.0, 0.5])
    v = np.array([0.3, 0.1, -1.0])
    g, info = bl.vjp(problem, x, v, "unroll", return_info=True)
    np.testing.assert_allclose(g, bl.vjp(problem, x, v, "analytic"), rtol=1e-9, atol=1e-12)
    assert info["iterations"] > 30 and info["residual"] <= 1e-10


def test_the_adaptive_cap_and_fixed_budgets_warn_with_the_knob():
    problem = bl.problems.Ridge(*regression_data(40, 5, seed=0))
    with pytest.warns(bl.ConvergenceWarning, match="max_steps=5"):
        bl.vjp(problem, 0.1, np.ones(5), bl.strategies.Unroll(max_steps=5))
    with pytest.warns(bl.ConvergenceWarning, match=r"n_steps=3 .*adjoint residual"):
        bl.vjp(problem, 0.1, np.ones(5), bl.strategies.Unroll(n_steps=3))
    with pytest.raises(ValueError, match="n_steps"):
        bl.strategies.Unroll(start="solution")


def test_a_diverging_step_size_is_named():
    """eta = 5 > 2 / L on a quartic: the replay overflows; before, unroll returned NaN."""
    def quartic(x, t):
        return 0.5 * (x @ x) * t[0] - t[1] @ x + 0.1 * (x**4).sum()

    prob = bl.problems.Smooth(quartic, np.zeros(3), step_size=5.0)
    theta = (np.asarray(2.0), np.array([1.0, -1.0, 0.5]))
    for strategy in (bl.strategies.Unroll(), bl.strategies.Unroll(n_steps=50)):
        with pytest.raises(ValueError, match="not finite after .* steps.*lower the problem's "
                                             "step_size"):
            bl.vjp(prob, theta, np.ones(3), strategy)
