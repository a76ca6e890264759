"""Smooth and Constrained: solutions and VJPs against closed forms, tuple theta, bad input."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import bilevel as bl
from bilevel._types import Solution
from bilevel.problems import Constrained


# --- Smooth ---
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
    assert skipped == {"analytic", "unroll", "fixed_point", "partial_smoothness", "bregman",
                       "straight_through"}


def test_energy_must_return_scalar():
    problem = bl.problems.Smooth(lambda x, t: x * t, np.zeros(2))
    with pytest.raises(ValueError, match="scalar"):
        bl.value_gradient(problem, 1.0)


def test_torch_tensor_theta_is_rejected_cleanly():
    problem = bl.problems.Smooth(quartic, np.zeros(2))
    with pytest.raises(ValueError, match="theta"):
        problem.solve(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="init"):
        problem.solve(np.ones(2), init=np.zeros(3))
    assert problem.solve(torch.ones(2).double().numpy()).converged


# --- Constrained ---
IMPLICIT = bl.strategies.Implicit()


@given(t=st.lists(st.floats(-3, 3), min_size=2, max_size=4))
def test_nonlinear_equality_sphere_projection(t):
    # Projection onto the unit sphere: x = t/|t|, dx/dt = (I - x x^T)/|t| (closed form).
    t = np.array(t)
    assume(np.linalg.norm(t) > 0.3)
    n = t.size
    prob = Constrained(lambda x, th: ((x - th) ** 2).sum(), eq=lambda x, th: (x * x).sum() - 1,
                       x0=np.ones(n) / np.sqrt(n))
    assume(t @ np.ones(n) > 0.1)        # x0 in the basin of the projection, not its antipode
    sol = prob.solve(t)
    x = t / np.linalg.norm(t)
    np.testing.assert_allclose(sol.x, x, atol=1e-9)    # Newton-polished KKT point
    v = np.linspace(-1, 1, n)
    ref = (v - x * (x @ v)) / np.linalg.norm(t)
    g, info = IMPLICIT.vjp(prob, sol, v)
    np.testing.assert_allclose(g, ref, atol=1e-8)
    assert info["multipliers"] == "solver"
    bare = Solution(x=sol.x, theta=sol.theta, n_iter=0, converged=True, info={})
    g_rec, info = IMPLICIT.vjp(prob, bare, v)     # the multiplier enters H: recovered
    assert info["multipliers"] == "recovered"
    np.testing.assert_allclose(g_rec, ref, atol=1e-8)


def test_inequality_ball_projection_active_and_inactive_and_trust_constr():
    for method in ("SLSQP", "trust-constr"):
        prob = Constrained(lambda x, th: ((x - th) ** 2).sum(),
                           ineq=lambda x, th: (x * x).sum() - 1, x0=np.zeros(3),
                           method=method)
        v = np.array([1.0, 2.0, -1.0])
        t_out, t_in = np.array([1.0, 2.0, 0.5]), np.array([0.1, -0.2, 0.3])
        sol = prob.solve(t_out)
        x = t_out / np.linalg.norm(t_out)
        np.testing.assert_allclose(sol.x, x, atol=1e-9)
        assert list(sol.info["active"]) == [0] and sol.info["lam"][0] > 0
        g, info = IMPLICIT.vjp(prob, sol, v)
        np.testing.assert_allclose(g, (v - x * (x @ v)) / np.linalg.norm(t_out), atol=1e-8)
        assert not info["one_sided"]
        sol = prob.solve(t_in)
        np.testing.assert_allclose(sol.x, t_in, atol=1e-9)
        g, info = IMPLICIT.vjp(prob, sol, v)
        np.testing.assert_allclose(g, v, atol=1e-10)
        assert info["active"].size == 0


@given(st.lists(st.floats(-3, 3), min_size=3, max_size=3), st.floats(1.05, 4.0),
       st.sampled_from(["SLSQP", "trust-constr"]))
def test_ball_projection_multiplier_matches_closed_form(direction, radius, method):
    # trust-constr is an interior-point method: it may stop at a slack of ~1e-5, beyond the
    # polish's near-active threshold; its own multipliers must still put the ball in the
    # working set. Closed form: x = t / |t|, lam = |t| - 1 (from 2(x - t) + 2 lam x = 0).
    u = np.asarray(direction)
    assume(np.linalg.norm(u) > 0.1)
    t = radius * u / np.linalg.norm(u)
    prob = Constrained(lambda x, th: ((x - th) ** 2).sum(),
                       ineq=lambda x, th: (x * x).sum() - 1, x0=np.zeros(3), method=method)
    sol = prob.solve(t)
    assert sol.converged
    np.testing.assert_allclose(sol.x, t / radius, atol=1e-9)    # polished to round-off
    assert list(sol.info["active"]) == [0]
    np.testing.assert_allclose(sol.info["lam"], [radius - 1.0], rtol=1e-8)


def test_trust_constr_stopping_outside_near_active_threshold_is_polished():
    # A theta for which trust-constr (SciPy 1.17) stops at |x| - 1 = -2.5e-6.
    t = np.array([1.0, 2.0, 0.5]) * (1 + 1e-3 * np.random.default_rng(0).standard_normal(3))
    prob = Constrained(lambda x, th: ((x - th) ** 2).sum(),
                       ineq=lambda x, th: (x * x).sum() - 1, x0=np.zeros(3),
                       method="trust-constr")
    sol = prob.solve(t)
    np.testing.assert_allclose(sol.x, t / np.linalg.norm(t), atol=1e-12)
    np.testing.assert_allclose(sol.info["lam"], [np.linalg.norm(t) - 1], rtol=1e-10)


def test_constrained_errors_and_infeasibility():
    with pytest.raises(ValueError, match="infeasible"):
        Constrained(lambda x, t: (x * x).sum(), eq=lambda x, t: x * 0 + 1.0,
                    x0=np.zeros(2)).solve(np.zeros(1))
    with pytest.raises(ValueError, match="x0 is required"):
        Constrained(lambda x, t: (x * x).sum())
    with pytest.raises(ValueError, match="method"):
        Constrained(lambda x, t: (x * x).sum(), x0=np.zeros(1), method="cobyla")
    with pytest.raises(TypeError, match="eq must be callable"):
        Constrained(lambda x, t: (x * x).sum(), eq=3, x0=np.zeros(1))


# -- issue 17: tol relative to the energy's own scale ------------------------------------
@pytest.mark.parametrize("scale", [1e-10, 1e-12, 1e12])
def test_smooth_scaled_energy_has_the_same_minimizer(scale):
    """``c E`` has the minimizer of ``E``: 3.5% off at c = 1e-10 with an absolute gtol.

    Reference: the closed form, per coordinate the real root of ``t0 x + 0.4 x^3 = t1``.
    """
    t0, t1 = 2.0, np.array([1.0, -1.0, 0.5])

    def energy(x, t):
        return scale * (0.5 * t[0] * (x @ x) - t[1] @ x + 0.1 * (x**4).sum())

    sol = bl.problems.Smooth(energy, np.zeros(3), tol=1e-12).solve((np.asarray(t0), t1))
    ref = np.array([np.real(r[np.abs(r.imag) < 1e-12][0])
                    for r in (np.roots([0.4, 0.0, t0, -b]) for b in t1)])
    assert sol.converged
    # 1e-11: tol 1e-12 on the relative gradient, curvature >= t0 = 2
    assert np.allclose(sol.x, ref, atol=1e-11)


@pytest.mark.parametrize("scale", [1e-12, 1e12])
def test_constrained_scaled_objective_has_the_same_minimizer(scale):
    """The projection onto the sphere cap, objective scaled: SLSQP's absolute ftol stopped
    at x0 for 1e-12 before the objective was normalized. Reference: the unscaled solve and
    the closed form ``x = t / |t|`` restricted by ``x_0 <= 0.2`` (KKT, checked below)."""
    t = np.array([1.0, 0.5, 0.2])

    def build(c):
        return Constrained(lambda x, th: c * ((x - th) ** 2).sum(),
                           eq=lambda x, th: (x * x).sum() - 1.0,
                           ineq=lambda x, th: x[:1] - 0.2, x0=np.array([0.0, 1.0, 0.0]))

    ref = build(1.0).solve(t).x
    closed = np.r_[0.2, t[1:] / np.linalg.norm(t[1:]) * np.sqrt(1 - 0.04)]
    assert np.allclose(ref, closed, atol=1e-9)
    sol = build(scale).solve(t)
    assert sol.converged
    assert np.allclose(sol.x, closed, atol=1e-9)       # SLSQP + Newton polish: ~1e-12


# --- detection: no minimizer, saddles, non-finite energies (issue 17) ---
def test_smooth_reports_a_saddle_point():
    """x0 = 0 is stationary for x0^2 - x1^2: a first-order solver stops there at once."""
    prob = bl.problems.Smooth(lambda x, t: x[0] ** 2 - x[1] ** 2 + 0 * t.sum(), np.zeros(2))
    with pytest.warns(bl.ConvergenceWarning, match="saddle point.*eigenvalue -2.00e\\+00"):
        sol = prob.solve(np.ones(2))
    assert not sol.converged and sol.info["min_curvature"] == pytest.approx(-2.0)


def test_smooth_certifies_the_curvature_of_a_minimum():
    sol = bl.problems.Smooth(quartic, np.zeros(3)).solve(np.array([1.0, -2.0, 0.5]))
    # Hessian I + 3 diag(x^2) >= I: its smallest eigenvalue is 1 + 3 min x^2.
    assert sol.converged
    assert sol.info["min_curvature"] == pytest.approx(1 + 3 * np.min(sol.x**2), rel=1e-10)


@pytest.mark.parametrize("energy, match", [
    (lambda x, t: (x**2).sum() * float("nan"), "not finite at the starting point"),
    (lambda x, t: -(x**2).sum() + t @ x, "unbounded below"),
    (lambda x, t: torch.tensor(1.0, dtype=torch.float64), "does not depend on x"),
])
def test_smooth_names_energies_without_a_minimizer(energy, match):
    with pytest.raises(ValueError, match=match):
        bl.problems.Smooth(energy, np.zeros(2)).solve(np.array([1.0, 0.5]))


def test_smooth_names_a_theta_of_the_wrong_shape():
    prob = bl.problems.Smooth(lambda x, t: (x**2).sum() + t @ x, np.zeros(2))
    with pytest.raises(ValueError, match=r"energy\(x, theta\) failed on x of shape \(2,\) "
                                         r"and theta of shape\(s\) \[\(3,\)\]"):
        prob.solve(np.ones(3))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # SciPy's line search at |x| ~ 1e13
def test_smooth_reports_a_linear_energy_as_unbounded():
    prob = bl.problems.Smooth(lambda x, t: t @ x, np.zeros(2))
    with pytest.warns(bl.ConvergenceWarning, match="unbounded below"):
        sol = prob.solve(np.array([1.0, 0.5]))
    assert not sol.converged


def test_smooth_curvature_check_of_a_larger_x_is_vectorized():
    """x of 40 entries: the Hessian's columns come from one batched backward pass."""
    theta = np.linspace(-2, 2, 40)
    sol = bl.problems.Smooth(quartic, np.zeros(40)).solve(theta)
    assert sol.info["min_curvature"] == pytest.approx(1 + 3 * np.min(sol.x**2), rel=1e-10)
    saddle = bl.problems.Smooth(lambda x, t: (x**2).sum() - 3 * x[7] ** 2 + 0 * t.sum(),
                                np.zeros(40))
    with pytest.warns(bl.ConvergenceWarning, match="eigenvalue -4.00e\\+00"):
        saddle.solve(theta)
