"""User-defined energies (Smooth): closed forms, tuple theta, capabilities, singularity."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bilevel as bl


def quartic(x, theta):
    """E = ||x - theta||^2 / 2 + sum x^4 / 4: x + x^3 = theta, dx/dtheta = 1 / (1 + 3x^2)."""
    return 0.5 * ((x - theta) ** 2).sum() + 0.25 * (x**4).sum()


@given(theta=st.lists(st.floats(-3, 3), min_size=1, max_size=6).map(np.array))
def test_quartic_energy_matches_closed_form(theta):
    problem = bl.problems.Smooth(quartic, np.zeros(theta.size), step_size=0.05)
    sol = problem.solve(theta)
    assert np.allclose(sol.x + sol.x**3, theta, atol=1e-8)
    v = np.linspace(-1, 1, theta.size)
    g_ref = v / (1 + 3 * sol.x**2)
    for strategy in (bl.strategies.Implicit(), bl.strategies.FixedPoint(),
                     bl.strategies.Implicit(linear_solver="cg", tol=1e-13)):
        g = strategy.vjp(problem, sol, v)[0]
        # x* is exact to the L-BFGS tolerance 1e-9; the Jacobian 1/(1+3x^2) <= 1 carries it.
        np.testing.assert_allclose(g, g_ref, rtol=1e-7, atol=1e-9)


def test_tuple_theta_matches_closed_form():
    # E = a ||x||^2 / 2 - b.x: x* = b / a, dx*/da = -b / a^2, dx*/db = I / a.
    problem = bl.problems.Smooth(lambda x, t: 0.5 * t[0] * (x @ x) - t[1] @ x, np.zeros(3))
    a, b = np.asarray(2.0), np.array([1.0, -2.0, 0.5])
    v = np.array([0.3, 0.1, -1.0])
    g, info = bl.vjp(problem, (a, b), v, return_info=True)
    assert info["strategy"] == "implicit"            # strategy=None picks and records
    assert isinstance(g, tuple) and g[0].shape == () and g[1].shape == (3,)
    np.testing.assert_allclose(g[0], -(b @ v) / a**2, rtol=1e-8)
    np.testing.assert_allclose(g[1], v / a, rtol=1e-8)
    J = bl.jacobian(problem, (a, b), "finite_difference")
    np.testing.assert_allclose(J[0], -b / a**2, rtol=1e-7)
    np.testing.assert_allclose(J[1], np.eye(3) / a, rtol=1e-7, atol=1e-9)


def test_missing_step_is_not_applicable_and_names_remedies():
    problem = bl.problems.Smooth(quartic, np.zeros(2))
    with pytest.raises(bl.NotApplicable, match="step") as exc:
        bl.vjp(problem, np.ones(2), np.ones(2), "unroll")
    assert "implicit" in str(exc.value) and exc.value.missing == ("step",)
    report = bl.compare(problem, bl.losses.Reconstruction(np.zeros(2)), np.ones(2), repeat=1)
    skipped = {r["strategy"] for r in report.rows if "skipped" in r}
    # value_function applies (Smooth offers dual) but differentiates a value, not x*.
    assert skipped == {"analytic", "unroll", "fixed_point", "partial_smoothness", "bregman",
                       "straight_through", "value_function"}


def test_singular_hessian_names_damping():
    # E = (x0 + x1 - theta)^2 / 2 is flat along (1, -1): the Hessian is singular.
    problem = bl.problems.Smooth(lambda x, t: 0.5 * (x.sum() - t) ** 2, np.zeros(2))
    with pytest.raises(bl.SingularSystemError, match="damping"):
        bl.vjp(problem, 1.0, np.array([1.0, 0.0]), "implicit")
    # Damping regularizes: (H + d I)^{-1} v along the range of H tends to the min-norm answer.
    g = bl.vjp(problem, 1.0, np.array([1.0, 1.0]), bl.strategies.Implicit(damping=1e-10))
    assert float(g) == pytest.approx(1.0, rel=1e-8)   # x* = (t/2, t/2) + null: d(x0+x1)/dt = 1


def test_energy_must_return_scalar():
    problem = bl.problems.Smooth(lambda x, t: x * t, np.zeros(2))
    with pytest.raises(ValueError, match="scalar"):
        bl.value_gradient(problem, 1.0)


def test_user_energy_unroll_converges_to_implicit():
    problem = bl.problems.Smooth(quartic, np.zeros(3), step_size=0.2)
    theta = np.array([0.5, -1.0, 2.0])
    v = np.ones(3)
    sol = problem.solve(theta)
    g_ref = bl.strategies.Implicit().vjp(problem, sol, v)[0]
    errors = [np.linalg.norm(bl.strategies.Unroll(n_steps=n).vjp(problem, sol, v)[0] - g_ref)
              for n in (10, 20, 40)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3 * np.linalg.norm(g_ref)


def test_torch_tensor_theta_is_rejected_cleanly():
    problem = bl.problems.Smooth(quartic, np.zeros(2))
    with pytest.raises(ValueError, match="theta"):
        problem.solve(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="init"):
        problem.solve(np.ones(2), init=np.zeros(3))
    assert problem.solve(torch.ones(2).double().numpy()).converged
