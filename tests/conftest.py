"""Hypothesis profiles, and the fixtures the test folders share."""

import os

import numpy as np
import pytest
from hypothesis import settings

import bilevel as bl
from bilevel.testing import regression_data

# "ci": few examples and no deadline (the first example pays numba compilation or cache load).
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Helpers shared by test modules in different folders: each fixture returns the function of
# its name (session scope, so that hypothesis tests may use them).


def _qp_instance(seed, n, m, n_active, weak=()):
    """A QP with known solution: active rows ``S`` (first ``n_active``), multipliers in
    [0.5, 2] (0 on ``weak``), inactive slacks in [0.3, 1]."""
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n + 2, n))
    Q = B.T @ B + 0.5 * np.eye(n)
    G = rng.standard_normal((m, n))
    if n_active:    # well-conditioned active normals: the kinks stay far (cond(G_S) <= 4)
        basis = np.linalg.qr(rng.standard_normal((n, n_active)))[0].T
        G[:n_active] = basis * rng.uniform(0.5, 2.0, (n_active, 1))
    x = rng.standard_normal(n)
    lam = np.zeros(m)
    lam[:n_active] = rng.uniform(0.5, 2.0, n_active)
    lam[list(weak)] = 0.0
    slack = rng.uniform(0.3, 1.0, m)
    slack[:n_active] = 0.0
    c = -Q @ x - G.T @ lam
    h = G @ x + slack
    return Q, G, c, h, x, lam


@pytest.fixture(scope="session")
def qp_instance():
    """A QP built from a prescribed KKT point: known solution, active set, multipliers."""
    return _qp_instance


def _nnls_instance(seed, m, n, n_zero, weak=()):
    """NNLS with known solution: x*_i = 0 for i < n_zero with multipliers in [0.5, 2]
    (0 on ``weak``), x*_i in [0.5, 2] elsewhere."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    x = rng.uniform(0.5, 2.0, n)
    x[:n_zero] = 0.0
    lam = np.zeros(n)
    lam[:n_zero] = rng.uniform(0.5, 2.0, n_zero)
    lam[list(weak)] = 0.0
    b = A @ x - A @ np.linalg.solve(A.T @ A, lam)      # A^T (A x - b) = lam
    return A, b, x, lam


@pytest.fixture(scope="session")
def nnls_instance():
    """An NNLS instance built from a prescribed solution and multipliers."""
    return _nnls_instance


def _kkt_vjp(Q, G_S, v):
    """The closed form by a dense KKT solve (independent of the package's formulas)."""
    n, k = Q.shape[0], G_S.shape[0]
    K = np.block([[Q, G_S.T], [G_S, np.zeros((k, k))]])
    uw = np.linalg.solve(K, np.concatenate([v, np.zeros(k)]))
    return -uw[:n], uw[n:]


@pytest.fixture(scope="session")
def kkt_vjp():
    """The QP's VJP by a dense KKT solve, independent of the package's formulas."""
    return _kkt_vjp


def _closed_form(problem, lam, v):
    """(dx*/dlam)^T v = -x* . H^{-1} v, with H = X^T X / n + diag(lam)."""
    X, y = problem.X, problem.y
    n, p = X.shape
    H = X.T @ X / n + np.diag(np.broadcast_to(lam, (p,)))
    x = np.linalg.solve(H, X.T @ y / n)
    g = -x * np.linalg.solve(H, v)
    return x, (g.sum() if np.ndim(lam) == 0 else g)


@pytest.fixture(scope="session")
def closed_form():
    """Ridge's solution and hypergradient in closed form (problems/test_sparse.py has its
    own ``closed_form``, the sparse models' support)."""
    return _closed_form


def _rel_err(a, b):
    return np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b))


@pytest.fixture(scope="session")
def rel_err():
    """Relative error of two arrays in the 2-norm."""
    return _rel_err


def _spread_instance():
    """Ridge whose gradient step contracts slowly (rho ~ 0.9): errors of truncated
    strategies stay far above round-off over a hundred iterations."""
    X, y = regression_data(60, 5, seed=3)
    X = X * np.array([1.0, 0.8, 0.6, 0.45, 0.3])
    return bl.problems.Ridge(X, y), 0.01


@pytest.fixture(scope="session")
def spread_instance():
    """A ridge instance whose gradient step contracts slowly (rho ~ 0.9)."""
    return _spread_instance


def _value_fd(problem, theta, direction, h=1e-6):
    """Central difference of p(theta) = E(x*(theta), theta) along ``direction``."""
    def p(t):
        if isinstance(theta, tuple):
            moved = tuple(a + t * d for a, d in zip(theta, direction))
        else:
            moved = theta + t * direction
        return bl.value_gradient(problem, moved, "value_function")[0]
    return (p(h) - p(-h)) / (2 * h)


@pytest.fixture(scope="session")
def value_fd():
    """Central differences of the optimal value along a direction."""
    return _value_fd


def _blocks(rng, shape=(6, 6), noise=0.05):
    img = np.zeros(shape)
    img[1:4, 2:5] = 1.0
    img[3:, :2] = -0.5
    return img + noise * rng.standard_normal(shape)


@pytest.fixture(scope="session")
def blocks():
    """A blocky 2-D image with a little noise, for TV2D."""
    return _blocks


def _batch(seed=2, b=4, n=24):
    rng = np.random.default_rng(seed)
    S = np.repeat(rng.uniform(-8, 8, (b, 4)), n // 4, axis=1)
    return S + 0.2 * rng.standard_normal((b, n))


@pytest.fixture(scope="session")
def batch():
    """A batch of noisy piecewise-constant signals, for PiecewisePolynomial."""
    return _batch
