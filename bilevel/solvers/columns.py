"""Column access to a design matrix held dense or in CSC form, for coordinate methods.

A design is passed as ``(Xt, data, indices, indptr, sparse)``: dense columns are the rows
of the C-contiguous ``Xt = X.T``; a sparse design gives scipy's CSC arrays. The unused
representation is an empty array, so that one compiled kernel serves both.
"""

import numpy as np
from numba import njit

from bilevel.solvers.assign import assign

__all__ = ["col_axpy", "col_dot", "col_sq_norms", "dense_columns", "matvec"]


@njit(cache=True)
def col_dot(j, Xt, data, indices, indptr, sparse, v):
    """``X[:, j] @ v``."""
    s = 0.0
    if sparse:
        for k in range(indptr[j], indptr[j + 1]):
            s += data[k] * v[indices[k]]
    else:
        for i in range(Xt.shape[1]):
            s += Xt[j, i] * v[i]
    return s


@njit(cache=True)
def col_axpy(j, a, Xt, data, indices, indptr, sparse, v):
    """``v += a * X[:, j]`` in place."""
    if sparse:
        for k in range(indptr[j], indptr[j + 1]):
            v[indices[k]] += a * data[k]
    else:
        for i in range(Xt.shape[1]):
            v[i] += a * Xt[j, i]


@njit(cache=True)
def col_sq_norms(Xt, data, indices, indptr, sparse, p):
    """``||X[:, j]||^2`` for every column."""
    out = np.zeros(p)
    for j in range(p):
        if sparse:
            for k in range(indptr[j], indptr[j + 1]):
                out[j] += data[k] * data[k]
        else:
            out[j] = np.dot(Xt[j], Xt[j])
    return out


@njit(cache=True)
def matvec(Xt, data, indices, indptr, sparse, w, n):
    """``X @ w`` using only the non-zero entries of ``w``."""
    out = np.zeros(n)
    for j in range(w.shape[0]):
        if w[j] != 0.0:
            col_axpy(j, w[j], Xt, data, indices, indptr, sparse, out)
    return out


@njit(cache=True)
def dense_columns(Xt, data, indices, indptr, sparse, cols, n):
    """Return the selected columns as a dense C-contiguous array of shape ``(len(cols), n)``."""
    out = np.zeros((cols.shape[0], n))
    for a in range(cols.shape[0]):
        j = cols[a]
        if sparse:
            for k in range(indptr[j], indptr[j + 1]):
                out[a, indices[k]] = data[k]
        else:
            assign(out[a], Xt[j])
    return out
