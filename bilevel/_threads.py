"""The process's thread pools: BLAS and OpenMP (one threadpoolctl controller), torch's."""

from __future__ import annotations

import contextlib
import functools

__all__ = ["controller", "serial_blas", "torch_threads"]


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


@contextlib.contextmanager
def torch_threads(n):
    """Run torch on ``n`` intra-op threads, restoring the previous count."""
    import torch

    previous = torch.get_num_threads()
    if n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != previous:
            torch.set_num_threads(previous)
