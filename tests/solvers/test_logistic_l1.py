"""The l1-logistic prox-Newton's pieces: its duality gap and its polish on the support."""

import warnings

import numpy as np
import scipy.sparse
import scipy.special
from hypothesis import given
from hypothesis import strategies as st

from bilevel.datasets import regression_data
from bilevel.solvers import logistic_l1
from bilevel.solvers.coordinate_descent import designs


def instance(seed, n=40, p=6):
    X, score = regression_data(n, p, seed=seed, noise=1.0)
    y = np.where(score > 0, 1.0, -1.0)
    y[0] = -y[1]
    lam_max = np.max(np.abs(X.T @ y)) / (2 * n)
    return X, y, np.full(p, 0.2 * lam_max)


@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-3.0, 3.0),
       with_extremes=st.booleans())
def test_gap_is_primal_minus_the_entropy_dual(seed, log_scale, with_extremes):
    """Against the module docstring's gap, written with scipy.special: margins up to
    +-1e4 (``a`` exactly 0 or 1) give a finite gap, with no warning."""
    X, y, lam = instance(seed)
    n = y.size
    w = np.random.default_rng(seed).standard_normal(lam.size) * 10.0 ** log_scale
    if with_extremes:
        X = X.copy()
        X[:2] *= 1e4 / max(np.abs(X[:2] @ w).max(), 1e-300)
    dense = designs(X)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, grad, energy, gap = logistic_l1._state(
            logistic_l1._Columns(*dense, n, lam.size), y, lam, w, X @ w)
    margins = y * (X @ w)
    a_ref = scipy.special.expit(-margins)
    grad_ref = X.T @ (-y * a_ref) / n
    primal = np.logaddexp(0.0, -margins).mean() + lam @ np.abs(w)
    t = a_ref / max(1.0, np.max(np.abs(grad_ref) / lam))
    dual = np.mean(scipy.special.entr(t) + scipy.special.entr(1.0 - t))
    # Sums of n = 40 terms of size <= 1e4 (the extreme margins): round-off of 1e-12.
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-12, atol=1e-15)
    assert abs(energy - primal) <= 1e-12 * abs(primal)
    assert np.isfinite(gap) and abs(gap - (primal - dual)) <= 1e-12 * max(1.0, abs(primal))
    assert gap >= -1e-12 * abs(primal)                        # weak duality


@given(seed=st.integers(0, 2**31 - 1), sparse=st.booleans())
def test_polish_finds_the_solution_on_the_right_support_and_rejects_a_wrong_one(seed, sparse):
    X, y, lam = instance(seed)
    n, p = X.shape
    kernel_args = designs(X)[1] if sparse else designs(X)[0]
    w_star, *_ = logistic_l1.logistic_l1_prox_newton(*kernel_args, y, lam, np.zeros(p),
                                                      1e-14, 1000)
    support = np.flatnonzero(w_star)
    design = logistic_l1._Columns(*kernel_args, n, p)
    nudged = w_star.copy()
    nudged[support] *= 1.0 + 1e-3 * np.cos(np.arange(support.size))
    polished, ok = logistic_l1._polish(design, y, lam, nudged)
    assert ok or support.size == 0
    if ok:
        # Newton on a smooth strongly convex problem: w* to round-off.
        np.testing.assert_allclose(polished, w_star, rtol=1e-9, atol=1e-12)
    corr = X.T @ (y * scipy.special.expit(-y * (X @ w_star))) / n
    off = np.flatnonzero((w_star == 0) & (np.abs(corr) < 0.9 * lam))
    if off.size:
        # A strictly inactive feature in the support, with either sign: the support's
        # smooth energy decreases as it moves across zero (|corr_j| < lam_j), a wrong support.
        for sign in (1.0, -1.0):
            spurious = w_star.copy()
            spurious[off[0]] = sign * 1e-6
            assert not logistic_l1._polish(design, y, lam, spurious)[1]


def test_sparse_and_dense_designs_give_the_same_solution():
    X, y, lam = instance(7, n=60, p=12)
    X[np.abs(X) < 0.6] = 0.0
    csc = scipy.sparse.csc_matrix(X)
    sparse_args = (np.empty((0, 0)), csc.data, csc.indices.astype(np.int32),
                   csc.indptr.astype(np.int32), True)
    dense = logistic_l1.logistic_l1_prox_newton(*designs(X)[0], y, lam, np.zeros(12), 1e-13,
                                                1000)
    sparse = logistic_l1.logistic_l1_prox_newton(*sparse_args, y, lam, np.zeros(12), 1e-13,
                                                 1000)
    np.testing.assert_allclose(sparse[0], dense[0], rtol=1e-10, atol=1e-13)
    assert dense[2] <= 1e-13 and sparse[2] <= 1e-13
