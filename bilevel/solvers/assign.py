"""Array assignment inside numba kernels without numba's slice-assignment machinery.

``a[i] = b`` or ``a[:] = b`` with an array ``b`` makes numba compile, once per process, the
formatting of its shape-mismatch error (strings, ``str`` of integers, joins): about 3.5 s
of a new process's first compilation, more than most kernels cost. The kernels copy
arrays with :func:`assign` instead, a loop that compiles in milliseconds.
"""

from numba import njit

__all__ = ["assign"]


@njit(cache=True)
def assign(dst, src):
    """``dst[...] = src`` for 1-D or 2-D arrays of the same shape (views included)."""
    if dst.ndim == 1:
        if dst.shape[0] != src.shape[0]:
            raise ValueError("assign: dst and src differ in shape")
        for i in range(dst.shape[0]):
            dst[i] = src[i]
    else:
        if dst.shape[0] != src.shape[0] or dst.shape[1] != src.shape[1]:
            raise ValueError("assign: dst and src differ in shape")
        for i in range(dst.shape[0]):
            for j in range(dst.shape[1]):
                dst[i, j] = src[i, j]
