"""Householder least squares against LAPACK's (NumPy's lstsq)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from bilevel.solvers.least_squares import lstsq_qr


@given(st.integers(1, 12), st.integers(0, 12), st.integers(0, 2**32 - 1),
       st.floats(-6, 6), st.booleans())
def test_full_column_rank_matches_lapack(k, extra, seed, log_scale, fortran):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((k + extra, k)) * 10.0 ** log_scale
    A = np.asfortranarray(A) if fortran else A
    b = rng.standard_normal(k + extra)
    x = lstsq_qr(A, b)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    # Backward-stable QR: the error is cond(A) eps relative (cond of a Gaussian A
    # this size is below ~1e3 unless it is square, where it can reach ~1e5).
    cond = np.linalg.cond(A)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-13 * cond * np.abs(ref).max())


@given(st.integers(2, 8), st.integers(0, 2**32 - 1))
def test_a_repeated_column_gets_zero_and_the_residual_is_least(k, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((k + 3, k))
    A = np.hstack([A, A[:, :1]])
    b = rng.standard_normal(k + 3)
    x = lstsq_qr(A, b)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    assert x[-1] == 0.0
    np.testing.assert_allclose(np.linalg.norm(A @ x - b), np.linalg.norm(A @ ref - b),
                               rtol=1e-12)
