"""Input validation shared by the problems (``bilevel.problems.base``)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from bilevel.problems.base import all_finite, check_array, no_kinks


@pytest.mark.parametrize("value", [np.arange(12.0).reshape(3, 4)[:, 1],         # a column
                                   np.asfortranarray(np.arange(12.0).reshape(3, 4)),
                                   np.arange(10, dtype=np.int32)[::2],
                                   np.float64(3.0)])
def test_check_array_returns_c_contiguous_float64_with_the_same_values(value):
    arr = check_array(value, "value")
    assert arr.dtype == np.float64 and arr.flags.c_contiguous
    assert arr.shape == np.shape(value) and np.array_equal(arr, value)


def test_check_array_does_not_copy_what_is_already_contiguous_float64():
    value = np.arange(6.0)
    assert check_array(value, "value") is value


@given(arrays(np.float64, array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
              elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_the_batch_finiteness_test_is_isfinite_all(array):
    assert all_finite(array) == bool(np.isfinite(array).all())
    assert all_finite(np.asfortranarray(array)) == bool(np.isfinite(array).all())


@pytest.mark.parametrize("rows", [0, 1, 5])
def test_rows_without_kinks_have_infinite_margins(rows):
    np.testing.assert_array_equal(no_kinks(rows), np.full(rows, np.inf))
