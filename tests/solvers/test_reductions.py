"""max_abs, sum_abs, mean: the loop reductions the kernels use instead of numba's array methods."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bilevel.solvers.reductions import max_abs, mean, sum_abs

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
