"""Input validation shared by the problems (``bilevel.problems.base``)."""

import numpy as np
import pytest

from bilevel.problems.base import check_array


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
