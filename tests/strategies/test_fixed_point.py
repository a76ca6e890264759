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
