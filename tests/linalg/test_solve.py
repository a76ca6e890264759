"""The linear solvers against numpy.linalg.solve."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bilevel.linalg import solve


@pytest.mark.parametrize("method", ["cg", "minres", "gmres", "direct"])
@given(n=st.integers(1, 30), seed=st.integers(0, 2**31 - 1))
def test_spd_systems(method, n, seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n, n))
    A = B @ B.T + n * np.eye(n)                       # cond <= ~5: every method converges
    b = rng.standard_normal(n)
    u, info = solve(A.__matmul__, b, method=method, tol=1e-12)
    np.testing.assert_allclose(u, np.linalg.solve(A, b), rtol=1e-9, atol=1e-12)
    assert info["residual"] <= 1e-11 and info["method"] == method


def test_gmres_nonsymmetric_with_warm_start():
    rng = np.random.default_rng(0)
    A = np.eye(20) + 0.3 * rng.standard_normal((20, 20)) / np.sqrt(20)
    b = rng.standard_normal(20)
    exact = np.linalg.solve(A, b)
    u, info = solve(A.__matmul__, b, method="gmres", tol=1e-12)
    np.testing.assert_allclose(u, exact, rtol=1e-9)
    _, warm = solve(A.__matmul__, b, method="gmres", tol=1e-12, x0=exact)
    assert warm["iterations"] < info["iterations"]


def test_damping_and_zero_rhs():
    A = np.diag([2.0, 0.0])
    u, _ = solve(A.__matmul__, np.array([2.0, 1.0]), method="direct", damping=1.0)
    np.testing.assert_allclose(u, [2 / 3, 1.0])
    u, info = solve(A.__matmul__, np.zeros(2), method="cg")
    assert np.all(u == 0) and info["iterations"] == 0
