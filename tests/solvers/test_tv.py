"""TV1D kernels: Condat's algorithm against the dual projected Newton kernel and BVLS; the
banded LDL^T factorization against a dense solve."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bilevel.solvers.tv import band_ldlt, banded_solve, tv1d_condat, tv_dual_newton


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


@given(st.integers(1, 3), st.integers(1, 60), st.integers(0, 2**31 - 1))
def test_band_ldlt_solves_d_dt_on_any_index_set_like_a_dense_solve(order, n, seed):
    """``(D D^T)_FF x = b`` on a random free set F, against numpy's dense LU solve.

    Tolerance: cond((D D^T)_FF) <= (2n/pi)^(2k) ~ 1e9 at n = 60, k = 3; both solves are
    backward stable, so they agree to ~ cond * eps ~ 1e-7 relative (1e-6 with margin).
    """
    rng = np.random.default_rng(seed)
    m = n + order
    free = np.flatnonzero(rng.uniform(size=m) < 0.7)
    if free.size == 0:
        return
    D = difference_matrix(m + order, order)[free]
    M = D @ D.T
    band = np.array([[M[i, i - d] if d <= i else 0.0 for d in range(order + 1)]
                     for i in range(free.size)])               # A[i, d] = M[i, i - d]
    b = rng.standard_normal(free.size)
    x = banded_solve(band, b.copy())
    ref = np.linalg.solve(M, b)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_band_ldlt_refuses_a_matrix_that_is_not_positive_definite():
    # Band storage A[i, d] = M[i, i - d]: M = [[1, .5, 0], [.5, 1, 1], [0, 1, .1]], whose
    # pivots are 1, 3/4 and 0.1 - 1/(3/4) < 0; its leading 2 x 2 block is positive definite.
    A = np.array([[1.0, 0.0], [1.0, 0.5], [0.1, 1.0]])
    np.testing.assert_allclose(banded_solve(A[:2].copy(), np.ones(2)), [2 / 3, 2 / 3])
    assert band_ldlt(A.copy(), 2) and not band_ldlt(A.copy(), 3)
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        banded_solve(A, np.ones(3))
