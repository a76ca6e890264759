"""LeastAbsoluteDeviation and LinearProgram: value gradients against their duals, bad input."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import bilevel as bl


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
def test_lad_gradient_is_the_dual_solution(value_fd, instance):
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


def lp_instance():
    A = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, -1.0, 0.0, 1.0]])
    return A, np.array([2.0, 0.5]), np.array([1.0, 2.0, 3.0, 2.5])


def test_linear_program_gradient_is_the_multipliers_and_the_solution(value_fd):
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


@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 4), extra=st.integers(1, 4))
def test_linear_program_implicit_on_its_kkt_system(seed, m, extra):
    """A prescribed non-degenerate vertex: basis B, x_B in [0.5, 2], reduced costs in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    n = m + extra
    A = rng.standard_normal((m, n))
    B = np.sort(rng.choice(n, m, replace=False))
    N = np.setdiff1d(np.arange(n), B)
    assume(np.linalg.cond(A[:, B]) < 1e3)
    x = np.zeros(n)
    x[B] = rng.uniform(0.5, 2.0, m)
    y = rng.standard_normal(m)
    s = np.zeros(n)
    s[N] = rng.uniform(0.5, 2.0, n - m)
    b, c = A @ x, A.T @ y + s
    prob = bl.problems.LinearProgram(A)
    sol = prob.solve((b, c))
    np.testing.assert_allclose(sol.x, x, atol=1e-9)
    # Exact multipliers: nu = -y (A x = b), lam = the reduced costs (x >= 0).
    np.testing.assert_allclose(sol.info["nu"], -y, atol=1e-9)
    np.testing.assert_allclose(sol.info["lam"], s, atol=1e-9)
    v = rng.standard_normal(n)
    (g_b, g_c), info = bl.vjp(prob, (b, c), v, "implicit", return_info=True)
    # The KKT matrix [[0, A^T, -E_N^T], [A, 0, 0], [-E_N, 0, 0]] is nonsingular at a
    # non-degenerate vertex: dense solve, cond(A_B) < 1e3: round-off against A_B^{-T} v_B.
    np.testing.assert_allclose(g_b, np.linalg.solve(A[:, B].T, v[B]), atol=1e-9)
    np.testing.assert_allclose(g_c, 0.0, atol=1e-10)
    assert not info["one_sided"]
    # The envelope theorem on the KKT system is the multipliers' value gradient (y*, x*).
    _, (e_b, e_c) = bl.value_gradient(prob, (b, c), "envelope")
    np.testing.assert_allclose(e_b, y, atol=1e-9)
    np.testing.assert_allclose(e_c, x, atol=1e-9)


def test_lad_and_lp_reasons():
    lad = bl.problems.LeastAbsoluteDeviation(np.ones((3, 1)))
    with pytest.raises(bl.NotApplicable, match="not differentiable where residuals vanish"):
        bl.vjp(lad, np.array([0.0, 1.0, 5.0]), np.ones(1), "implicit")
    lp = bl.problems.LinearProgram(np.ones((1, 2)))
    with pytest.raises(bl.NotApplicable, match="the minimizer of a linear program is a vertex"):
        bl.vjp(lp, (np.array([2.0]), np.array([1.0, 3.0])), np.ones(2), "unroll")
