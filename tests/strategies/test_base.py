"""What every strategy shares (``bilevel.strategies.base``)."""

import warnings

import numpy as np
import pytest

import bilevel as bl
from bilevel.strategies.base import warn_degenerate_rows


def test_degenerate_rows_are_counted():
    margins = np.array([np.inf, 1e-9, 0.5, 0.0, np.nan])
    with pytest.warns(bl.DegeneracyWarning, match="s: 2 of 5 batch rows are degenerate"):
        warn_degenerate_rows("s", margins, 1e-6)


@pytest.mark.parametrize("margins", [np.full(3, np.inf), np.array([0.5, 1e-5]), np.zeros(0)])
def test_no_warning_without_a_degenerate_row(margins):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_degenerate_rows("s", margins, 1e-6)
