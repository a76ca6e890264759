"""Design matrices held dense or as ``scipy.sparse``, with the products sparse models need."""

from __future__ import annotations

import sys

import numpy as np
import torch

from bilevel.problems.base import check_array

__all__ = ["Design"]

_EMPTY_F = np.empty(0)
_EMPTY_I = np.empty(0, dtype=np.int32)
_EMPTY_2D = np.empty((0, 0))


class Design:
    """A design matrix ``X`` (n, p), dense or CSC, validated (finite, float64).

    ``kernel_args`` is the ``(Xt, data, indices, indptr, sparse)`` tuple the numba
    coordinate solvers take (:mod:`bilevel.solvers.columns`); ``sq_norms`` the squared
    column norms.
    """

    def __init__(self, X, name="X"):
        # A scipy.sparse X means scipy.sparse is loaded: do not import it (0.25 s) otherwise.
        if "scipy.sparse" in sys.modules and sys.modules["scipy.sparse"].issparse(X):
            import scipy.sparse

            X = scipy.sparse.csc_matrix(X, dtype=np.float64)
            X.sum_duplicates()
            X.sort_indices()
            if X.ndim != 2:
                raise ValueError(f"{name} must be 2-D, got shape {X.shape}")
            check_array(X.data, f"{name}.data")
            self.sparse = True
            self.kernel_args = (_EMPTY_2D, X.data, X.indices.astype(np.int32),
                                X.indptr.astype(np.int32), True)
            coo = X.tocoo()
            idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
            self._torch = torch.sparse_coo_tensor(idx, torch.from_numpy(coo.data), X.shape,
                                                  check_invariants=True)
            self._torch_t = self._torch.t().coalesce()
        else:
            X = check_array(X, name, ndim=2)
            self.sparse = False
            self.kernel_args = (np.ascontiguousarray(X.T), _EMPTY_F, _EMPTY_I, _EMPTY_I, False)
            self._torch = torch.from_numpy(np.ascontiguousarray(X))
            self._torch_t = self._torch.T
        self.X = X
        self.shape = X.shape
        self.sq_norms = np.asarray(X.multiply(X).sum(axis=0) if self.sparse
                                   else np.einsum("ij,ij->j", X, X)).ravel()
        if 0 in X.shape:
            raise ValueError(f"{name} must have at least one row and one column, "
                             f"got shape {X.shape}")
        self._sigma_max = None

    def matvec(self, w):
        """``X @ w``."""
        return np.asarray(self.X @ w).ravel()

    def rmatvec(self, r):
        """``X.T @ r``."""
        return np.asarray(self.X.T @ r).ravel()

    def columns(self, cols):
        """Return the dense submatrix ``X[:, cols]`` of shape (n, len(cols))."""
        if self.sparse:
            return self.X[:, cols].toarray()
        return self.kernel_args[0][cols].T     # rows of the C-ordered X^T: a contiguous gather

    def sigma_max(self):
        """Largest singular value of ``X`` (cached)."""
        if self._sigma_max is None:
            if self.sparse or min(self.shape) > 2000:
                import scipy.sparse.linalg

                op = scipy.sparse.linalg.aslinearoperator(self.X)
                s = scipy.sparse.linalg.svds(op, k=1, return_singular_vectors=False,
                                             random_state=0)[0]
            else:
                s = np.linalg.norm(self.X, 2)
            self._sigma_max = float(s)
        return self._sigma_max

    def torch_matvec(self, w):
        """``X @ w`` for a float64 torch vector, differentiable in ``w``."""
        if self.sparse:
            return torch.sparse.mm(self._torch, w.unsqueeze(1)).squeeze(1)
        return self._torch @ w

    def torch_rmatvec(self, r):
        """``X.T @ r`` for a float64 torch vector, differentiable in ``r``."""
        if self.sparse:
            return torch.sparse.mm(self._torch_t, r.unsqueeze(1)).squeeze(1)
        return self._torch_t @ r
