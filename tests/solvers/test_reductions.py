"""max_abs, max_nan, sum_abs, mean: the kernels' loop reductions, checked against NumPy."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bilevel.solvers.reductions import max_abs, max_nan, mean, sum_abs

FINITE = st.floats(-1e6, 1e6, allow_nan=False)


@given(arrays(np.float64, st.integers(1, 50), elements=FINITE))
def test_match_numpy(x):
    assert max_abs(x) == np.max(np.abs(x))                  # a maximum is exact
    # NumPy sums pairwise, the loop in order: they differ by round-off, at most
    # n eps sum|x_i| (each of the n - 1 additions errs by eps times a partial sum).
    assert abs(sum_abs(x) - np.sum(np.abs(x))) <= x.size * 2.3e-16 * np.sum(np.abs(x))
    # The same bound for the sum under the mean (its division rounds once more: + eps).
    assert abs(mean(x) - np.mean(x)) <= (x.size + 1) * 2.3e-16 * np.mean(np.abs(x))


def test_views_and_empty_arrays():
    X = np.array([[1.0, -3.0], [-2.0, 0.5]])
    assert max_abs(X[:, 0]) == 2.0 and sum_abs(X[:, 1]) == 3.5    # a strided column
    assert max_abs(np.empty(0)) == 0.0 and sum_abs(np.empty(0)) == 0.0


@given(arrays(np.float64, st.integers(1, 20), elements=FINITE), st.data())
def test_a_nan_propagates_as_through_numpy(x, data):
    """A residual of a diverged iterate must read NaN, never small: like np.max, np.maximum."""
    x[data.draw(st.integers(0, x.size - 1))] = np.nan
    assert np.isnan(max_abs(x)) and np.isnan(np.max(np.abs(x)))
    assert np.isnan(sum_abs(x))
    a = data.draw(FINITE)
    for args in ((a, np.nan), (np.nan, a), (np.nan, np.nan)):
        assert np.isnan(max_nan(*args)) and np.isnan(np.maximum(*args))
    b = data.draw(FINITE)
    assert max_nan(a, b) == max(a, b)
