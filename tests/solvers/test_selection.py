"""Quickselect order statistics against NumPy's sorts."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bilevel.solvers.selection import median, select, smallest

# Small integers as floats: many ties, which the tie-breaking rules must handle.
values = arrays(np.float64, st.integers(1, 40), elements=st.integers(-5, 5).map(float))


@given(values, st.data())
def test_select_is_the_kth_of_the_sorted_values(x, data):
    k = data.draw(st.integers(0, x.size - 1))
    w = x.copy()
    assert select(w, k) == np.sort(x)[k]
    assert np.all(w[:k] <= w[k]) and np.all(w[k + 1:] >= w[k])   # partitioned in place
    np.testing.assert_array_equal(np.sort(w), np.sort(x))          # a permutation


@given(values)
def test_median_is_numpys(x):
    assert median(x) == np.median(x)


@given(values, st.data())
def test_smallest_are_the_k_smallest_lowest_indices_first(x, data):
    x[data.draw(st.integers(0, x.size - 1))] = data.draw(st.sampled_from([np.inf, -np.inf]))
    k = data.draw(st.integers(0, x.size + 2))
    idx = smallest(x, k)
    expected = np.sort(np.argsort(x, kind="stable")[:k])    # stable: ties by lowest index
    np.testing.assert_array_equal(idx, expected)
