"""Numba-jitted inner solvers: pure functions on float64 arrays, no torch.

Every kernel is ``@njit(cache=True)`` and compiles on first call, never at import. Each
module owns its kernels (``KERNELS``) and compiles them on a tiny instance (``warmup()``);
problems import a kernel from its module (``from bilevel.solvers.tv import tv1d_condat``).
This package collects the lists: :data:`KERNELS` and :func:`warmup` cover every module.
"""

from bilevel.solvers import (
    bregman,
    coordinate_descent,
    logistic,
    logistic_l1,
    piecewise,
    pooling,
    projections,
    qp,
    ridge,
    tv,
    tv2d,
)

__all__ = ["KERNELS", "MODULES", "warmup"]

MODULES = (bregman, coordinate_descent, logistic, logistic_l1, piecewise, pooling,
           projections, qp, ridge, tv, tv2d)
KERNELS = tuple(kernel for module in MODULES for kernel in module.KERNELS)


def warmup():
    """Compile every kernel once on a tiny float64 instance (a cache hit after the first run)."""
    for module in MODULES:
        module.warmup()
