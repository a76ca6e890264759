"""Dense symmetric positive definite solves inside numba kernels."""

import numpy as np
from numba import njit

__all__ = ["cholesky_solve"]


@njit(cache=True)
def cholesky_solve(H, b):
    """Solve ``H x = b`` for symmetric positive definite H by Cholesky and substitution.

    Returns ``(x, ok)``; ``ok`` is False (and x NaN) at a pivot below ``1e-14 |H_jj|``,
    i.e. when H is not numerically positive definite. By hand rather than
    ``np.linalg.cholesky``, whose failure raises, which a jitted caller cannot catch.
    """
    p = b.shape[0]
    L = np.empty((p, p))            # only its lower triangle is written and read
    for j in range(p):
        s = H[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        if s <= 1e-14 * (abs(H[j, j]) + 1e-300):
            nan = np.empty(p)
            for i in range(p):
                nan[i] = np.nan
            return nan, False
        L[j, j] = np.sqrt(s)
        for i in range(j + 1, p):
            t = H[i, j]
            for k in range(j):
                t -= L[i, k] * L[j, k]
            L[i, j] = t / L[j, j]
    z = np.empty(p)
    for i in range(p):
        t = b[i]
        for k in range(i):
            t -= L[i, k] * z[k]
        z[i] = t / L[i, i]
    x = np.empty(p)
    for i in range(p - 1, -1, -1):
        t = z[i]
        for k in range(i + 1, p):
            t -= L[k, i] * x[k]
        x[i] = t / L[i, i]
    return x, True
