"""FixedPoint: the Neumann series' error falls with its number of terms."""

import numpy as np
import pytest

import bilevel as bl


def test_neumann_series_error_falls_with_terms(closed_form, rel_err, spread_instance):
    problem, lam = spread_instance()
    v = np.ones(5)
    _, g_ref = closed_form(problem, lam, v)
    sol = problem.solve(lam)
    with pytest.warns(bl.ConvergenceWarning, match="n_terms"):    # short series warn
        errors = [rel_err(bl.strategies.FixedPoint(method="neumann", n_terms=n).vjp(
            problem, sol, v)[0], g_ref) for n in (10, 50, 100, 400)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-8


def test_a_diverging_neumann_series_names_the_step_size():
    """eta = 5 > 2 / L: the series' terms grow; the remedy is gmres or a smaller step."""
    def quartic(x, t):
        return 0.5 * (x @ x) * t[0] - t[1] @ x + 0.1 * (x**4).sum()

    prob = bl.problems.Smooth(quartic, np.zeros(3), step_size=5.0)
    theta = (np.asarray(2.0), np.array([1.0, -1.0, 0.5]))
    with pytest.warns(bl.ConvergenceWarning, match="series diverges.*method='gmres'"):
        bl.vjp(prob, theta, np.ones(3), bl.strategies.FixedPoint(method="neumann"))
    exact = bl.vjp(prob, theta, np.ones(3), "implicit")
    gmres = bl.vjp(prob, theta, np.ones(3), "fixed_point")   # the fixed point still solves
    for a, b in zip(gmres, exact):
        np.testing.assert_allclose(a, b, rtol=1e-8)


def test_n_terms_without_the_neumann_method_is_named():
    """FixedPoint(n_terms=1) solves by GMRES, which ignores n_terms: say so instead."""
    with pytest.raises(ValueError, match="n_terms=1 .* method='neumann'"):
        bl.strategies.FixedPoint(n_terms=1)
    assert bl.strategies.FixedPoint(method="neumann", n_terms=1).n_terms == 1
    assert bl.strategies.FixedPoint().with_budget(1).method == "neumann"
