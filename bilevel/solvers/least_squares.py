"""Dense linear least squares inside numba kernels, by Householder QR.

By hand rather than ``np.linalg.lstsq``: numba's LAPACK binding of it compiles for about
6 s in every new process (its workspace queries, copies and error formatting), longer
than the active-set kernels that call it on a few columns.
"""

import numpy as np
from numba import njit

__all__ = ["lstsq_qr"]


@njit(cache=True)
def lstsq_qr(A, b):
    r"""Return ``x = argmin ||A x - b||`` for ``A`` (m, k) by Householder QR.

    ``A = Q R`` with ``k`` reflections ``H_j = I - 2 v v^T / v^T v`` (Golub, Van Loan,
    "Matrix Computations", 4th ed., section 5.3.3); then ``R x = (Q^T b)_{:k}`` by back
    substitution. A column whose pivot falls below ``1e-13 max_j |R_jj|`` (rank deficiency:
    it lies in the span of the others), and every column past ``m``, gets ``x_j = 0``.
    """
    m, k = A.shape
    R = A.copy()
    y = b.copy()
    steps = min(m, k)
    for j in range(steps):
        norm = 0.0
        for i in range(j, m):
            norm += R[i, j] * R[i, j]
        norm = np.sqrt(norm)
        if norm == 0.0:
            continue
        alpha = -norm if R[j, j] > 0.0 else norm    # no cancellation in v_0 = R_jj - alpha
        v = R[j:, j].copy()
        v[0] -= alpha
        vv = 0.0
        for i in range(v.shape[0]):
            vv += v[i] * v[i]
        for c in range(j, k):
            s = 0.0
            for i in range(v.shape[0]):
                s += v[i] * R[j + i, c]
            f = 2.0 * s / vv
            for i in range(v.shape[0]):
                R[j + i, c] -= f * v[i]
        s = 0.0
        for i in range(v.shape[0]):
            s += v[i] * y[j + i]
        f = 2.0 * s / vv
        for i in range(v.shape[0]):
            y[j + i] -= f * v[i]
    scale = 0.0
    for j in range(steps):
        scale = max(scale, abs(R[j, j]))
    x = np.zeros(k)
    for j in range(steps - 1, -1, -1):
        if not abs(R[j, j]) > 1e-13 * scale:
            continue
        t = y[j]
        for c in range(j + 1, k):
            t -= R[j, c] * x[c]
        x[j] = t / R[j, j]
    return x
