"""Solve ``A u = b`` for an operator given by its matvec, by one of several methods.

``cg`` (symmetric positive definite), ``minres`` (symmetric indefinite), ``gmres``
(non-symmetric) come from :mod:`scipy.sparse.linalg`; ``direct`` forms the dense matrix
(from ``matrix`` or by applying ``matvec`` to the identity) and solves it by LU with a
condition-number check.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from bilevel._types import ConvergenceWarning, SingularSystemError

__all__ = ["METHODS", "solve"]

METHODS = ("cg", "minres", "gmres", "direct")


# Beyond this condition number LU loses every digit of a float64 solution.
_COND_LIMIT = 1e13


def solve(matvec, b, *, method="cg", tol=1e-10, maxiter=None, x0=None, damping=0.0,
          matrix=None):
    """Solve ``(A + damping I) u = b``.

    Parameters
    ----------
    matvec : callable
        ``u -> A u`` on 1-D float64 arrays.
    b : ndarray, shape (n,)
        Right-hand side.
    method : {"cg", "minres", "gmres", "direct"}
        Solver. CG needs A symmetric positive definite; MINRES symmetric; GMRES none.
    tol : float
        Relative residual tolerance ``||A u - b|| <= tol ||b||`` (Krylov methods).
    maxiter : int, optional
        Iteration cap (Krylov methods); default ``10 n``.
    x0 : ndarray, optional
        Warm start (Krylov methods).
    damping : float
        Tikhonov damping added to the diagonal; regularizes singular systems.
    matrix : ndarray, shape (n, n), optional
        The dense A when the caller has it; ``direct`` then skips forming it.

    Returns
    -------
    u : ndarray, shape (n,)
    info : dict
        ``iterations``, ``residual`` (relative), ``method``, ``time``.

    Raises
    ------
    SingularSystemError
        ``direct`` on a matrix whose condition number exceeds 1e13.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if damping < 0 or not np.isfinite(damping):
        raise ValueError(f"damping must be finite and >= 0, got {damping}")
    start = time.perf_counter()
    b = np.asarray(b, dtype=np.float64)
    n = b.shape[0]
    bnorm = np.linalg.norm(b)
    if bnorm == 0.0:
        return np.zeros(n), {"iterations": 0, "residual": 0.0, "method": method,
                             "time": time.perf_counter() - start}

    if method == "direct":
        A = np.array(matrix, dtype=np.float64) if matrix is not None else _dense(matvec, n)
        A[np.diag_indices(n)] += damping
        u, rcond = _lu_solve(A, b)
        if not rcond > 1.0 / _COND_LIMIT:
            raise SingularSystemError(
                    f"the linear system is singular (condition number "
                    f"~{1 / max(rcond, 1e-300):.1e}); add damping (e.g. damping=1e-8) or solve "
                    "it by a pseudo-inverse")
        residual = np.linalg.norm(A @ u - b) / bnorm
        return u, {"iterations": 1, "residual": residual, "method": method,
                   "time": time.perf_counter() - start}

    count = [0]

    def damped(u):
        count[0] += 1
        return matvec(u) + damping * u

    import scipy.sparse.linalg as spla  # lazily: 0.25 s of import, not paid by direct solves

    op = spla.LinearOperator((n, n), matvec=damped, dtype=np.float64)
    maxiter = 10 * n if maxiter is None else maxiter
    kwargs = {"rtol": tol, "maxiter": maxiter, "x0": x0}
    if method == "gmres":
        kwargs["atol"] = 0.0
        kwargs["restart"] = min(n, 50)
    elif method == "cg":
        kwargs["atol"] = 0.0
    u, flag = getattr(spla, method)(op, b, **kwargs)
    residual = np.linalg.norm(damped(u) - b) / bnorm
    count[0] -= 1
    if not np.all(np.isfinite(u)):
        raise SingularSystemError(
            f"{method} broke down (non-finite iterate): the system is singular or indefinite; "
            "add damping, or use method='gmres' / 'direct'")
    if flag != 0 or residual > 10 * tol:
        warnings.warn(
            f"{method} stopped at relative residual {residual:.1e} after {count[0]} matvecs "
            f"(tol={tol:.0e}); raise maxiter, add damping if the system is ill-conditioned, "
            "or use method='direct' for small systems", ConvergenceWarning, stacklevel=3)
    return u, {"iterations": count[0], "residual": residual, "method": method,
               "time": time.perf_counter() - start}


def _dense(matvec, n):
    """Form the matrix of a linear operator column by column."""
    eye = np.eye(n)
    return np.column_stack([matvec(eye[:, j]) for j in range(n)])


def _lu_solve(A, b):
    """LU solve with LAPACK getrf/getrs and gecon's estimate of ``1 / cond_1(A)``."""
    import scipy.linalg

    getrf, getrs, gecon = scipy.linalg.get_lapack_funcs(("getrf", "getrs", "gecon"), (A,))
    anorm = np.abs(A).sum(axis=0).max()
    lu, piv, info = getrf(A)
    if info > 0 or not np.isfinite(anorm):
        return np.full(b.shape, np.nan), 0.0
    rcond, _ = gecon(lu, anorm, norm="1")
    u, _ = getrs(lu, piv, b)
    return u, rcond
