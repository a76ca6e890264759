"""The simplex threshold without sorting (Michelot) against the sort-based formula."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bilevel.solvers.bregman import projection_simplex
from bilevel.solvers.projections import simplex_tau

finite = st.floats(-1e3, 1e3, allow_nan=False)


def sorted_tau(u, r):
    """Duchi et al. (ICML 2008), Figure 1: the threshold through a decreasing sort."""
    mu = np.sort(u)[::-1]
    css = np.cumsum(mu)
    rho = np.flatnonzero(mu * np.arange(1, u.size + 1) > css - r)[-1] + 1
    return (css[rho - 1] - r) / rho


@given(arrays(np.float64, st.integers(1, 60), elements=finite), st.floats(1e-3, 1e3))
def test_threshold_is_the_sort_based_one(u, r):
    tau, top = simplex_tau(u, r)
    # Both are (sum of the same top entries - r) / rho, summed in different orders.
    scale = np.abs(u).max() + r
    np.testing.assert_allclose(tau + top, sorted_tau(u, r), rtol=0, atol=1e-13 * scale)
    y = np.maximum((u - top) - tau, 0.0)
    np.testing.assert_allclose(y.sum(), r, rtol=1e-12)


@given(arrays(np.float64, st.integers(1, 60), elements=finite))
def test_projection_onto_the_unit_simplex_is_a_minimizer(v):
    p = projection_simplex(v)
    assert np.all(p >= 0) and np.isclose(p.sum(), 1.0, rtol=1e-12)
    # Optimality: v - p = tau on the support and <= tau off it (the KKT conditions).
    support = p > 0
    tau = (v - p)[support].mean()
    np.testing.assert_allclose((v - p)[support], tau, atol=1e-12 * (np.abs(v).max() + 1))
    assert np.all(v[~support] <= tau + 1e-12 * (np.abs(v).max() + 1))
