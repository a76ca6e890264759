"""Value-function gradients from the dual solution: closed forms, finite differences of the
value, the dual iterates' derivative sequence, a linear program (its own class and as a
`Constrained` problem with KKT multipliers), and the API rules around the strategy."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import bilevel as bl


def value_fd(problem, theta, direction, h=1e-6):
    """Central difference of p(theta) = E(x*(theta), theta) along ``direction``."""
    def p(t):
        if isinstance(theta, tuple):
            moved = tuple(a + t * d for a, d in zip(theta, direction))
        else:
            moved = theta + t * direction
        return bl.value_gradient(problem, moved, "value_function")[0]
    return (p(h) - p(-h)) / (2 * h)


def test_smooth_envelope_matches_the_closed_form():
    Q = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
    Qt = torch.from_numpy(Q)
    prob = bl.problems.Smooth(lambda x, t: 0.5 * x @ Qt @ x - t @ x, np.zeros(3))
    theta = np.array([1.0, -2.0, 0.5])
    value, grad = bl.value_gradient(prob, theta, "value_function")
    # p(theta) = -theta^T Q^{-1} theta / 2, grad p = -Q^{-1} theta = -x*... sign: x* = Q^{-1} theta.
    x = np.linalg.solve(Q, theta)
    np.testing.assert_allclose(value, -0.5 * theta @ x, rtol=1e-12)
    np.testing.assert_allclose(grad, -x, rtol=1e-9)
    default = bl.value_gradient(prob, theta)            # the envelope path: the same gradient
    np.testing.assert_allclose(default[1], grad, rtol=1e-12)


@st.composite
def lad_instances(draw):
    m = draw(st.integers(5, 15))
    n = draw(st.integers(1, min(4, m - 2)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    return rng.standard_normal((m, n)), rng.standard_normal(m)


def lad_dual_closed_form(A, u, x):
    """y_i = sign(u - A x)_i off the interpolated rows Z; A_Z^T y_Z = -A_{Z^c}^T y_{Z^c} on Z."""
    r = u - A @ x
    Z = np.abs(r) <= 1e-9 * max(1.0, np.abs(u).max())
    y = np.sign(r) * ~Z
    y[Z] = np.linalg.solve(A[Z].T, -A[~Z].T @ y[~Z])
    return y, Z


@given(lad_instances())
def test_lad_gradient_is_the_dual_solution(instance):
    A, u = instance
    prob = bl.problems.LeastAbsoluteDeviation(A)
    sol = prob.solve(u)
    y, Z = lad_dual_closed_form(A, u, sol.x)
    assume(Z.sum() == A.shape[1] and np.abs(y[Z]).max() < 1 - 1e-3)  # a unique dual solution
    value, grad, info = bl.value_gradient(prob, u, "value_function", return_info=True)
    np.testing.assert_allclose(value, np.abs(A @ sol.x - u).sum(), rtol=1e-12)
    # HiGHS multipliers against the closed form: round-off of a vertex solution.
    np.testing.assert_allclose(grad, y, atol=1e-9)
    d = np.random.default_rng(0).standard_normal(u.size)
    # p is piecewise linear: central differences are exact up to ~1e-16/h round-off.
    np.testing.assert_allclose(value_fd(prob, u, d), grad @ d, rtol=1e-6, atol=1e-8)
    assert info["strategy"] == "value_function" and info["residual"] <= 1e-9


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


def lp_instance():
    A = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, -1.0, 0.0, 1.0]])
    return A, np.array([2.0, 0.5]), np.array([1.0, 2.0, 3.0, 2.5])


def test_linear_program_gradient_is_the_multipliers_and_the_solution():
    A, b, c = lp_instance()
    prob = bl.problems.LinearProgram(A)
    value, (g_b, g_c) = bl.value_gradient(prob, (b, c))
    x = prob.solve((b, c)).x
    B = np.flatnonzero(x > 1e-9)
    # Closed form at the basis B: y = A_B^{-T} c_B, grad_c = x*.
    np.testing.assert_allclose(g_b, np.linalg.solve(A[:, B].T, c[B]), rtol=1e-12)
    np.testing.assert_allclose(g_c, x, rtol=1e-12)
    np.testing.assert_allclose(value, c @ x, rtol=1e-12)
    rng = np.random.default_rng(1)
    d = (rng.standard_normal(2), rng.standard_normal(4))
    np.testing.assert_allclose(value_fd(prob, (b, c), d), g_b @ d[0] + g_c @ d[1], rtol=1e-7)


def test_linear_program_through_constrained_and_its_kkt_multipliers():
    A, b, c = lp_instance()
    At = torch.from_numpy(A)

    prob = bl.problems.Constrained(lambda x, t: t[1] @ x, eq=lambda x, t: At @ x - t[0],
                                   ineq=lambda x, t: -x, x0=np.array([0.5, 0.5, 1.0, 0.0]))
    value, (g_b, g_c) = bl.value_gradient(prob, (b, c), "value_function")
    # The default for a problem with a dual is the same certificate (not the envelope of
    # the objective alone, which would miss the parameters in the constraints).
    assert bl.value_gradient(prob, (b, c))[1][0] == pytest.approx(g_b, abs=1e-12)
    ref_value, (ref_b, ref_c) = bl.value_gradient(bl.problems.LinearProgram(A), (b, c))
    # SLSQP + Newton polish on the active set: multipliers to ~1e-9.
    np.testing.assert_allclose(value, ref_value, rtol=1e-9)
    np.testing.assert_allclose(g_b, ref_b, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(g_c, ref_c, rtol=1e-7, atol=1e-9)


def test_hypergradient_with_the_optimal_value_loss():
    rng = np.random.default_rng(2)
    A, u = rng.standard_normal((8, 2)), rng.standard_normal(8)
    prob = bl.problems.LeastAbsoluteDeviation(A)
    value, grad, info = bl.hypergradient(prob, bl.losses.OptimalValue(), u, return_info=True)
    ref = bl.value_gradient(prob, u)
    assert value == ref[0] and np.array_equal(grad, ref[1])
    assert info["strategy"] == "value_function" and "solution" in info
    with pytest.raises(ValueError, match="value_function"):
        bl.hypergradient(prob, bl.losses.OptimalValue(), u, strategy="finite_difference")
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
    with pytest.raises(bl.NotApplicable, match="value_gradient"):
        bl.vjp(prob, u, np.ones(2), "value_function")
    with pytest.raises(bl.NotApplicable, match="dual"):
        bl.value_gradient(bl.problems.Ridge(np.eye(2), np.ones(2)), 0.1, "value_function")
    report = bl.compare(prob, lambda x, t: (x * x).sum(), u,
                        strategies=["analytic", "value_function"], reference="analytic",
                        repeat=1)
    rows = {r["strategy"]: r for r in report.rows}
    assert "value_gradient" in rows["value_function"]["skipped"]
    assert rows["analytic"]["error"] == 0.0
    with pytest.raises(ValueError, match="more rows"):
        bl.problems.LeastAbsoluteDeviation(np.ones((2, 2)))
    with pytest.raises(ValueError, match="n_steps"):
        bl.strategies.ValueFunction(n_steps=0)


def test_simplex_ls_value_gradient_is_unique_where_the_minimizer_is_not():
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


def test_bad_input_names_the_argument():
    prob = bl.problems.LinearProgram(np.array([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="could not be solved"):   # x >= 0 and x1 + x2 = -1
        prob.solve((np.array([-1.0]), np.array([1.0, 1.0])))
    with pytest.raises(ValueError, match=r"theta = \(b, c\)"):
        prob.solve(np.array([1.0]))
    with pytest.raises(ValueError, match="u must have shape"):
        bl.problems.LeastAbsoluteDeviation(np.ones((3, 1))).solve(np.ones(2))
    with pytest.raises(ValueError, match="b must have shape"):
        bl.problems.SimplexLeastSquares(np.eye(2)).solve(np.ones(3))
    with pytest.raises(ValueError, match="at least 2 labels"):
        bl.problems.MultiLabelSegmentation().solve(np.ones((2, 2, 1)))
    with pytest.raises(ValueError, match="mu and alpha"):
        bl.problems.MultiLabelSegmentation(alpha=0.0)
    with pytest.raises(ValueError, match="NaN"):
        bl.problems.MatrixGame().solve(np.array([[np.nan, 1.0]]))


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
    assert result.strategy == "value_function"
