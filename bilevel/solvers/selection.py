"""Order statistics inside numba kernels, by selection rather than sorting.

Quickselect (Hoare, "Algorithm 65: Find", CACM 1961) finds the k-th smallest of n values in
``O(n)`` expected time. The kernels that need one order statistic (a median, a working
set of the k most promising features) use it instead of ``np.sort`` / ``np.argsort``:
less work, and no sorting library to compile in every new process (numba's quicksort for
one dtype costs seconds of compilation).
"""

import numpy as np
from numba import njit

__all__ = ["median", "select", "smallest"]


@njit(cache=True)
def select(w, k):
    """Return the k-th smallest entry of ``w`` (0-based); reorders ``w`` in place.

    After the call ``w[:k] <= w[k] <= w[k+1:]``. Median-of-three pivots; NaN-free input.
    """
    lo = 0
    hi = w.shape[0] - 1
    while lo < hi:
        mid = (lo + hi) // 2
        a, b, c = w[lo], w[mid], w[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i = lo
        j = hi
        while i <= j:
            while w[i] < pivot:
                i += 1
            while w[j] > pivot:
                j -= 1
            if i <= j:
                w[i], w[j] = w[j], w[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return w[k]
    return w[k]


@njit(cache=True)
def median(x):
    """Return the median of ``x`` (the mean of the two middle entries for even ``n``)."""
    n = x.shape[0]
    w = x.copy()
    upper = select(w, n // 2)
    if n % 2:
        return upper
    lower = w[0]
    for i in range(1, n // 2):                  # after selection w[:n//2] <= upper
        lower = max(lower, w[i])
    return 0.5 * (lower + upper)


@njit(cache=True)
def smallest(values, k):
    """Return the indices of the ``k`` smallest ``values``, in increasing index order.

    Ties at the k-th value go to the lowest indices. ``values`` may hold infinities, not NaN.
    """
    n = values.shape[0]
    k = max(0, min(k, n))
    out = np.empty(k, np.int64)
    if k == 0 or k == n:
        for j in range(k):
            out[j] = j
        return out
    threshold = select(values.copy(), k - 1)
    below = 0
    for j in range(n):
        if values[j] < threshold:
            below += 1
    ties = k - below                            # entries equal to the threshold to keep
    count = 0
    for j in range(n):
        v = values[j]
        if v < threshold or (v == threshold and ties > 0):
            if v == threshold:
                ties -= 1
            out[count] = j
            count += 1
    return out
