"""Value strategies: closed forms, the dual iterates, finite differences, their API rules."""

import numpy as np
import pytest
import torch

import bilevel as bl


def test_smooth_envelope_matches_the_closed_form():
    Q = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
    Qt = torch.from_numpy(Q)
    prob = bl.problems.Smooth(lambda x, t: 0.5 * x @ Qt @ x - t @ x, np.zeros(3))
    theta = np.array([1.0, -2.0, 0.5])
    value, grad = bl.value_gradient(prob, theta, "envelope")
    # p(theta) = -theta^T Q^{-1} theta / 2, grad p = -Q^{-1} theta = -x*... sign: x* = Q^{-1} theta.
    x = np.linalg.solve(Q, theta)
    np.testing.assert_allclose(value, -0.5 * theta @ x, rtol=1e-12)
    np.testing.assert_allclose(grad, -x, rtol=1e-9)
    default = bl.value_gradient(prob, theta)            # the envelope path: the same gradient
    np.testing.assert_allclose(default[1], grad, rtol=1e-12)


def test_lad_dual_iterates_give_a_convergent_derivative_sequence():
    rng = np.random.default_rng(3)
    A, u = rng.standard_normal((12, 3)), rng.standard_normal(12)
    prob = bl.problems.LeastAbsoluteDeviation(A)
    sol = prob.solve(u)
    _, exact = bl.value_gradient(prob, u)
    errors = [np.abs(g - exact).max() for g in prob.dual(sol).iterates(3000)]
    checkpoints = [errors[k] for k in (9, 99, 299)]
    assert all(a > b for a, b in zip(checkpoints, checkpoints[1:]))   # decreasing
    assert max(errors[999:]) <= 1e-12                                 # linear rate on an LP
    _, g_k, info = bl.value_gradient(prob, u, bl.strategies.ValueFunction(n_steps=3000),
                                     return_info=True)
    np.testing.assert_allclose(g_k, prob.dual(sol).iterates(3000)[-1], rtol=0, atol=0)
    assert info["iterations"] == 3000
    assert bl.strategies.ValueFunction().with_budget(5).n_steps == 5


def test_hypergradient_with_the_optimal_value_loss():
    rng = np.random.default_rng(2)
    A, u = rng.standard_normal((8, 2)), rng.standard_normal(8)
    prob = bl.problems.LeastAbsoluteDeviation(A)
    value, grad, info = bl.hypergradient(prob, bl.losses.OptimalValue(), u, return_info=True)
    ref = bl.value_gradient(prob, u)
    assert value == ref[0] and np.array_equal(grad, ref[1])
    assert info["strategy"] == "value_function" and "solution" in info
    # Finite differences of p are a value strategy too (the reference); a VJP one is not.
    _, g_fd = bl.hypergradient(prob, bl.losses.OptimalValue(), u, strategy="finite_difference")
    np.testing.assert_allclose(g_fd, grad, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="VJP strategy"):
        bl.hypergradient(prob, bl.losses.OptimalValue(), u, strategy="implicit")
    ridge = bl.problems.Ridge(np.eye(2), np.array([1.0, 2.0]))
    # Ridge offers energy, not dual: the envelope path, dp/dlam = |x*|^2 / 2.
    v, g = bl.hypergradient(ridge, bl.losses.OptimalValue(), 0.5)
    x = ridge.solve(0.5).x
    np.testing.assert_allclose(g, 0.5 * x @ x, rtol=1e-10)
    with pytest.raises(TypeError, match="OptimalValue"):
        bl.losses.OptimalValue()(torch.zeros(2))


def test_vjp_refuses_and_compare_skips_value_function():
    A = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    u = np.array([0.1, 1.3, 1.9, 3.4])
    prob = bl.problems.LeastAbsoluteDeviation(A)
    with pytest.raises(ValueError, match="value_gradient"):
        bl.vjp(prob, u, np.ones(2), "value_function")
    with pytest.raises(bl.NotApplicable, match="dual"):
        bl.value_gradient(bl.problems.Ridge(np.eye(2), np.ones(2)), 0.1, "value_function")
    with pytest.raises(ValueError, match="OptimalValue"):       # a value strategy, not a VJP
        bl.compare(prob, lambda x, t: (x * x).sum(), u,
                   strategies=["analytic", "value_function"], reference="analytic", repeat=1)
    report = bl.compare(prob, lambda x, t: (x * x).sum(), u, strategies=["analytic"],
                        reference="analytic", repeat=1)
    assert report.rows[0]["error"] == 0.0
    with pytest.raises(ValueError, match="more rows"):
        bl.problems.LeastAbsoluteDeviation(np.ones((2, 2)))
    with pytest.raises(ValueError, match="n_steps"):
        bl.strategies.ValueFunction(n_steps=0)


def test_simplex_ls_value_gradient_is_unique_where_the_minimizer_is_not(value_fd):
    rng = np.random.default_rng(4)
    A = rng.standard_normal((10, 3))
    A = np.c_[A, A[:, 0]]                       # a duplicated column: x* is a segment
    b = A @ np.array([0.3, 0.2, 0.1, 0.4]) + 0.05 * rng.standard_normal(10)
    prob = bl.problems.SimplexLeastSquares(A)
    sols = [prob.solve(b, init=x0) for x0 in (np.full(4, 0.25), np.array([0.6, 0.1, 0.1, 0.2]))]
    assert abs(sols[0].x[0] - sols[1].x[0]) > 0.05                  # two different minimizers
    grads = [bl.value_gradient(prob, b, "value_function", init=s.x)[1] for s in sols]
    # grad p = b - A x*: A x* is unique, so is the gradient (round-off of the solves).
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-10)
    d = rng.standard_normal(10)
    np.testing.assert_allclose(value_fd(prob, b, d), grads[0] @ d, rtol=1e-6, atol=1e-9)


def test_minimize_the_optimal_value():
    # p(t) = min_x 1/2|x - t|^2 + 1/2|x|^2 + 1/2(t - 1)^2 = t^2/4 + (t - 1)^2/2, x* = t/2:
    # minimized at t = 2/3 with p = 1/6.
    energy = lambda x, t: 0.5 * ((x - t) ** 2).sum() + 0.5 * (x ** 2).sum() \
        + 0.5 * ((t - 1) ** 2).sum()  # noqa: E731
    prob = bl.problems.Smooth(energy, np.zeros(1), tol=1e-12)
    result = bl.minimize(prob, bl.losses.OptimalValue(), np.array([0.0]), optimizer="lbfgs",
                         steps=10, progress=False)
    # L-BFGS on a quadratic with exact gradients: converged to round-off.
    np.testing.assert_allclose(result.theta, [2 / 3], atol=1e-8)
    assert result.loss == pytest.approx(1 / 6, abs=1e-12)
    assert result.strategy == "envelope"


def _value_instances():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((9, 3))
    lp = bl.problems.LinearProgram(np.array([[1.0, 1.0, 1.0, 0.0], [1.0, -1.0, 0.0, 1.0]]))
    qp = bl.problems.QP(np.diag([2.0, 1.0, 1.5]), np.array([[1.0, 1.0, 0.0],
                                                            [0.0, -1.0, 1.0]]))
    Q = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
    Qt = torch.from_numpy(Q)
    quadratic = bl.problems.Smooth(lambda x, t: 0.5 * x @ Qt @ x - t @ x, np.zeros(3),
                                   tol=1e-12)
    return {
        "lad": (bl.problems.LeastAbsoluteDeviation(A), rng.standard_normal(9), "value_function"),
        "lp": (lp, (np.array([2.0, 0.5]), np.array([1.0, 2.0, 3.0, 2.5])), "value_function"),
        # both constraints active with positive multipliers: grad_h p = -lam
        "qp": (qp, (np.array([-2.0, -1.0, 0.5]), np.array([0.5, 0.2])), "value_function"),
        "quadratic": (quadratic, np.array([1.0, -2.0, 0.5]), "envelope"),
    }


@pytest.mark.parametrize("key", ["lad", "lp", "qp", "quadratic"])
def test_value_finite_differences_agree_with_the_dual(key):
    problem, theta, exact = _value_instances()[key]
    value, grad = bl.value_gradient(problem, theta, exact)
    value_fd, grad_fd = bl.value_gradient(problem, theta, "finite_difference")
    assert value_fd == pytest.approx(value, rel=1e-12)
    # 4th-order central differences, h ~ 7e-4 |theta_i|: exact on the piecewise-linear
    # values (LAD, LP: the dual is locally constant) up to the solver's round-off.
    for g, g_fd in zip(*(x if isinstance(x, tuple) else (x,) for x in (grad, grad_fd))):
        np.testing.assert_allclose(g_fd, g, rtol=1e-6, atol=1e-9)


def test_compare_ranks_value_strategies_against_finite_differences():
    problem, theta, _ = _value_instances()["qp"]
    report = bl.compare(problem, bl.losses.OptimalValue(), theta, repeat=1)
    rows = {r["strategy"]: r for r in report.rows}
    assert set(rows) == {"value_function", "envelope", "finite_difference"}
    assert report.reference == "finite_difference"
    for name in ("value_function", "envelope"):       # the Lagrangian's theta-gradient
        assert rows[name]["error"] < 1e-6, name


def test_envelope_needs_an_energy_differentiable_in_theta():
    # Lasso: E is non-smooth in x but linear in lam, so dp/dlam = ||x*||_1 (Danskin),
    # checked against differences of p; LAD's ||A x - u||_1 is not differentiable in u where
    # a residual vanishes: it offers no energy, and its value gradient is the dual's.
    from bilevel.testing import regression_data

    lasso = bl.problems.Lasso(*regression_data(40, 6, seed=3))
    lam = lasso.lam_max() / 5
    _, g = bl.value_gradient(lasso, lam, "envelope")
    np.testing.assert_allclose(g, np.abs(lasso.solve(lam).x).sum(), rtol=1e-12)
    _, g_fd = bl.value_gradient(lasso, lam, "finite_difference")
    np.testing.assert_allclose(g_fd, g, rtol=1e-7)        # 4th-order stencil, exact solves
    lad = bl.problems.LeastAbsoluteDeviation(np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0],
                                                       [1.0, 3.0]]))
    with pytest.raises(bl.NotApplicable, match="energy"):
        bl.value_gradient(lad, np.array([0.1, 1.3, 1.9, 3.4]), "envelope")
