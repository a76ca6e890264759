"""``max |x_i|``, ``sum |x_i|`` and the mean of a 1-D array inside numba kernels, as loops.

``np.max(np.abs(x))`` makes numba compile, once per process, its array maximum (with the
``np.take`` beneath it) and the ``abs`` array expression: about 1.5 s of a new process's
first compilation, for a loop that compiles in a tenth of that; ``x.mean()`` costs 0.4 s.
A NaN propagates as it does through NumPy's: a residual of a diverged iterate is NaN, never
small (Python's and numba's ``max(a, b)`` return ``a`` when ``b`` is NaN).
"""

from numba import njit

__all__ = ["max_abs", "max_nan", "mean", "sum_abs"]


@njit(cache=True)
def max_nan(a, b):
    """``max(a, b)``, NaN if either is NaN (as ``np.maximum``)."""
    return b if (b > a or b != b) else a


@njit(cache=True)
def max_abs(x):
    """``max_i |x_i|`` of a 1-D array (0 for an empty one; NaN if an entry is NaN)."""
    out = 0.0
    for i in range(x.shape[0]):
        out = max_nan(out, abs(x[i]))
    return out


@njit(cache=True)
def sum_abs(x):
    """``sum_i |x_i|`` of a 1-D array."""
    out = 0.0
    for i in range(x.shape[0]):
        out += abs(x[i])
    return out


@njit(cache=True)
def mean(x):
    """``sum_i x_i / n`` of a non-empty 1-D array."""
    total = 0.0
    for i in range(x.shape[0]):
        total += x[i]
    return total / x.shape[0]
