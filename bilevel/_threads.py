"""The process's thread pools (BLAS, OpenMP), through one threadpoolctl controller."""

from __future__ import annotations

import functools

__all__ = ["controller", "serial_blas"]


@functools.cache
def controller():
    """One threadpoolctl controller per process: finding the libraries takes milliseconds."""
    from threadpoolctl import ThreadpoolController  # deferred: keeps `import bilevel` light

    return ThreadpoolController()


def serial_blas():
    """Return a context with one BLAS thread, for loops of vector-sized BLAS calls.

    Multi-threaded OpenBLAS spins on tiny calls: SciPy's L-BFGS-B on a 3-variable energy
    took 39 ms with 2 threads on a busy 2-core machine, 0.7 ms with one.
    """
    return controller().limit(limits=1, user_api="blas")
