"""assign: the loop copy the kernels use instead of numba's slice assignment."""

import numpy as np
import pytest

from bilevel.solvers.assign import assign


def test_copies_rows_columns_and_whole_arrays():
    a = np.zeros((3, 4))
    assign(a[1], np.arange(4.0))
    assign(a[:, 2], np.full(3, 7.0))
    expected = np.zeros((3, 4))
    expected[1] = np.arange(4.0)
    expected[:, 2] = 7.0
    np.testing.assert_array_equal(a, expected)
    b = np.empty((3, 4))
    assign(b, a)
    np.testing.assert_array_equal(b, a)


def test_a_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in shape"):
        assign(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="differ in shape"):
        assign(np.zeros((2, 3)), np.zeros((3, 2)))
