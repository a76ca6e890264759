"""Numba-jitted inner solvers: pure functions on float64 arrays, no torch.

Every kernel is ``@njit(cache=True)`` and compiles on first call, never at import;
:func:`warmup` compiles (or loads from the on-disk cache) each one on a tiny instance.
"""

from bilevel.solvers.logistic import (
    logistic_l2_energy,
    logistic_l2_hessian,
    newton_logistic_l2,
    newton_logistic_l2_batched,
)
from bilevel.solvers.ridge import ridge_cholesky, ridge_cholesky_batched

__all__ = [
    "KERNELS",
    "logistic_l2_energy",
    "logistic_l2_hessian",
    "newton_logistic_l2",
    "newton_logistic_l2_batched",
    "ridge_cholesky",
    "ridge_cholesky_batched",
    "warmup",
]

KERNELS = (
    logistic_l2_energy,
    logistic_l2_hessian,
    newton_logistic_l2,
    newton_logistic_l2_batched,
    ridge_cholesky,
    ridge_cholesky_batched,
)


def warmup():
    """Compile every kernel once on a tiny float64 instance (a cache hit after the first run)."""
    import numpy as np

    X = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -1.0]])
    y = np.array([1.0, -1.0, 1.0])
    w0 = np.zeros(2)
    ridge_cholesky(X, y, np.ones(2))
    ridge_cholesky_batched(X, y, np.ones((2, 2)))
    newton_logistic_l2(X, y, 1.0, w0, 1e-8, 50)
    newton_logistic_l2_batched(X, y, np.ones(2), np.zeros((2, 2)), 1e-8, 50)
    logistic_l2_energy(X, y, 1.0, w0)
    logistic_l2_hessian(X, y, 1.0, w0)
