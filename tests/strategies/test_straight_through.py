"""StraightThrough: the identity backward, only where a problem opts in, never the default."""

import numpy as np
import pytest

import bilevel as bl

PP = bl.problems.PiecewisePolynomial


def test_straight_through_is_the_identity_and_never_the_default():
    prob = PP(2, 0)
    s, v = np.array([0.0, 0.1, 3.0, 3.2]), np.array([1.0, -2.0, 0.5, 0.0])
    np.testing.assert_array_equal(bl.vjp(prob, s, v, "straight_through"), v)
    assert bl._registry.get_strategy(None, prob).name == "analytic"
    assert "straight_through" not in bl._registry.applicable_strategies(bl.problems.TV1D(1))
    with pytest.raises(bl.NotApplicable, match="straight_through"):
        bl.vjp(bl.problems.TV1D(1), (s, 0.1), v, "straight_through")
    # biased: the exact VJP averages within pieces
    assert not np.allclose(bl.vjp(prob, s, v, "analytic"), v)
