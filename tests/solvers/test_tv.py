"""TV1D kernels: Condat's algorithm against the dual projected Newton kernel and BVLS."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from bilevel.solvers.tv import tv1d_condat, tv_dual_newton


def difference_matrix(n, order):
    return np.diff(np.eye(n), order, axis=0)


@st.composite
def signals(draw, max_segments=5, noise=0.3):
    """Piecewise-constant signals with well-separated jumps (>= 3) plus small noise."""
    k = draw(st.integers(1, max_segments))
    lengths = draw(st.lists(st.integers(4, 12), min_size=k, max_size=k))
    levels = np.cumsum([0.0] + [draw(st.sampled_from([-1, 1])) * draw(st.floats(3, 8))
                                for _ in range(k - 1)])
    seed = draw(st.integers(0, 2**31 - 1))
    s = np.repeat(levels, lengths) + noise * np.random.default_rng(seed).standard_normal(
        sum(lengths))
    return s, draw(st.floats(0.05, 1.0))


@given(signals())
def test_condat_equals_dual_newton_and_bvls(instance):
    from scipy.optimize import lsq_linear

    s, lam = instance
    D = difference_matrix(s.size, 1)
    ref = s - D.T @ lsq_linear(D.T, s, bounds=(-lam, lam), method="bvls", tol=1e-15).x
    y_newton = tv_dual_newton(s, lam, 1, np.zeros(s.size - 1), 1e-14, 500)[0]
    for y in (tv1d_condat(s, lam), y_newton):
        np.testing.assert_allclose(y, ref, atol=1e-10 * np.abs(s).max())
