"""Serial twins of ``prange`` kernels, for batches too small to pay for a thread team.

Numba's parallel regions leave worker threads spinning after they return; with torch
threads on the same cores, small batched calls inside a training loop then slow down by
an order of magnitude. The twin runs the same code with ``prange`` as ``range``.
"""

import types

from numba import njit

__all__ = ["serial_twin"]


def serial_twin(kernel, name):
    """Compile ``kernel``'s Python function again without ``parallel``, as ``name``.

    The distinct name keeps numba's on-disk cache entries of the two apart.
    """
    fn = kernel.py_func
    twin = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = name
    twin.__doc__ = f"Serial twin of :func:`{fn.__name__}` (same arguments and results)."
    return njit(cache=True)(twin)
