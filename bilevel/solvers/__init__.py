"""Numba-jitted inner solvers: pure functions on float64 arrays, no torch.

Every kernel is ``@njit(cache=True)`` and compiles on first call, never at import;
:func:`warmup` compiles (or loads from the on-disk cache) each one on a tiny instance.
"""

from bilevel.solvers.bregman import (
    bregman_pd_game,
    bregman_pd_tv1d,
    bregman_pd_tv2d,
    bregman_quadratic,
    bregman_segmentation,
    lad_pdhg,
    projection_simplex,
)
from bilevel.solvers.coordinate_descent import enet_cd, enet_cd_batched, enet_gap
from bilevel.solvers.logistic import (
    logistic_l2_energy,
    logistic_l2_hessian,
    newton_logistic_l2,
    newton_logistic_l2_batched,
)
from bilevel.solvers.logistic_l1 import (
    logistic_l1_gap,
    logistic_l1_prox_newton,
    logistic_l1_prox_newton_batched,
)
from bilevel.solvers.piecewise import (
    pp_basis,
    pp_basis_table,
    pp_dp,
    pp_dp_batched,
    pp_dp_rows,
    pp_hat_vjp_batched,
    pp_hat_vjp_rows,
)
from bilevel.solvers.pooling import (
    pool_solve_batched,
    pool_solve_rows,
    pool_vjp_batched,
    pool_vjp_rows,
)
from bilevel.solvers.projections import (
    proj_batched,
    proj_rows,
    proj_vjp_batched,
    proj_vjp_rows,
    softmax_batched,
    softmax_rows,
    softmax_vjp_batched,
    softmax_vjp_rows,
)
from bilevel.solvers.qp import (
    nnls_active_vjp_batched,
    nnls_active_vjp_rows,
    nnls_lawson_hanson,
    nnls_lawson_hanson_batched,
    nnls_lawson_hanson_rows,
    qp_active_vjp_batched,
    qp_active_vjp_rows,
    qp_goldfarb_idnani,
    qp_goldfarb_idnani_batched,
    qp_goldfarb_idnani_rows,
)
from bilevel.solvers.ridge import ridge_cholesky, ridge_cholesky_batched
from bilevel.solvers.tv import (
    diff_adjoint,
    diff_forward,
    tv1d_condat,
    tv1d_condat_batched,
    tv1d_condat_rows,
    tv_dual_from_primal,
    tv_dual_newton,
    tv_dual_newton_batched,
    tv_dual_newton_rows,
    tv_l2,
    tv_l2_batched,
    tv_l2_rows,
    tv_l2_vjp,
    tv_l2_vjp_batched,
    tv_l2_vjp_rows,
    tv_manifold,
    tv_manifold_vjp,
    tv_manifold_vjp_batched,
    tv_manifold_vjp_rows,
    tv_project,
)
from bilevel.solvers.tv2d import tv2d_kkt_residual, tv2d_solve, tv2d_solve_batched

__all__ = [
    "tv2d_kkt_residual",
    "tv2d_solve",
    "tv2d_solve_batched",
    "KERNELS",
    "bregman_pd_game",
    "bregman_pd_tv1d",
    "bregman_pd_tv2d",
    "bregman_quadratic",
    "bregman_segmentation",
    "lad_pdhg",
    "projection_simplex",
    "enet_cd",
    "enet_cd_batched",
    "enet_gap",
    "logistic_l1_gap",
    "logistic_l1_prox_newton",
    "logistic_l1_prox_newton_batched",
    "logistic_l2_energy",
    "logistic_l2_hessian",
    "newton_logistic_l2",
    "newton_logistic_l2_batched",
    "pp_basis",
    "pp_basis_table",
    "pp_dp",
    "pp_dp_batched",
    "pp_dp_rows",
    "pp_hat_vjp_batched",
    "pp_hat_vjp_rows",
    "ridge_cholesky",
    "ridge_cholesky_batched",
    "diff_adjoint",
    "diff_forward",
    "tv1d_condat",
    "tv1d_condat_batched",
    "tv_dual_from_primal",
    "tv_dual_newton",
    "tv_dual_newton_batched",
    "tv_l2",
    "tv_l2_batched",
    "tv_l2_vjp",
    "tv_l2_vjp_batched",
    "tv_manifold",
    "tv_manifold_vjp",
    "tv_manifold_vjp_batched",
    "tv_project",
    "tv1d_condat_rows",
    "tv_dual_newton_rows",
    "tv_l2_rows",
    "tv_l2_vjp_rows",
    "tv_manifold_vjp_rows",
    "pool_solve_batched",
    "pool_solve_rows",
    "pool_vjp_batched",
    "pool_vjp_rows",
    "proj_batched",
    "proj_rows",
    "proj_vjp_batched",
    "proj_vjp_rows",
    "softmax_batched",
    "softmax_rows",
    "softmax_vjp_batched",
    "softmax_vjp_rows",
    "nnls_active_vjp_batched",
    "nnls_active_vjp_rows",
    "nnls_lawson_hanson",
    "nnls_lawson_hanson_batched",
    "nnls_lawson_hanson_rows",
    "qp_active_vjp_batched",
    "qp_active_vjp_rows",
    "qp_goldfarb_idnani",
    "qp_goldfarb_idnani_batched",
    "qp_goldfarb_idnani_rows",
    "warmup",
]

KERNELS = (
    tv2d_kkt_residual,
    tv2d_solve,
    tv2d_solve_batched,
    bregman_pd_game,
    bregman_pd_tv1d,
    bregman_pd_tv2d,
    bregman_quadratic,
    bregman_segmentation,
    lad_pdhg,
    projection_simplex,
    enet_cd,
    enet_cd_batched,
    enet_gap,
    logistic_l1_gap,
    logistic_l1_prox_newton,
    logistic_l1_prox_newton_batched,
    logistic_l2_energy,
    logistic_l2_hessian,
    newton_logistic_l2,
    newton_logistic_l2_batched,
    pp_basis,
    pp_basis_table,
    pp_dp,
    pp_dp_batched,
    pp_dp_rows,
    pp_hat_vjp_batched,
    pp_hat_vjp_rows,
    ridge_cholesky,
    ridge_cholesky_batched,
    diff_adjoint,
    diff_forward,
    tv1d_condat,
    tv1d_condat_batched,
    tv_dual_from_primal,
    tv_dual_newton,
    tv_dual_newton_batched,
    tv_l2,
    tv_l2_batched,
    tv_l2_vjp,
    tv_l2_vjp_batched,
    tv_manifold,
    tv_manifold_vjp,
    tv_manifold_vjp_batched,
    tv_project,
    tv1d_condat_rows,
    tv_dual_newton_rows,
    tv_l2_rows,
    tv_l2_vjp_rows,
    tv_manifold_vjp_rows,
    pool_solve_batched,
    pool_solve_rows,
    pool_vjp_batched,
    pool_vjp_rows,
    proj_batched,
    proj_rows,
    proj_vjp_batched,
    proj_vjp_rows,
    softmax_batched,
    softmax_rows,
    softmax_vjp_batched,
    softmax_vjp_rows,
    nnls_active_vjp_batched,
    nnls_active_vjp_rows,
    nnls_lawson_hanson,
    nnls_lawson_hanson_batched,
    nnls_lawson_hanson_rows,
    qp_active_vjp_batched,
    qp_active_vjp_rows,
    qp_goldfarb_idnani,
    qp_goldfarb_idnani_batched,
    qp_goldfarb_idnani_rows,
)


def warmup():
    """Compile every kernel once on a tiny float64 instance (a cache hit after the first run)."""
    import numpy as np

    X = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -1.0]])
    y = np.array([1.0, -1.0, 1.0])
    w0 = np.zeros(2)
    ridge_cholesky(X, y, np.ones(2))
    ridge_cholesky_batched(X, y, np.ones((2, 2)))
    newton_logistic_l2(X, y, 1.0, w0, 1e-8, 50)
    newton_logistic_l2_batched(X, y, np.ones(2), np.zeros((2, 2)), 1e-8, 50)
    logistic_l2_energy(X, y, 1.0, w0)
    logistic_l2_hessian(X, y, 1.0, w0)
    Xt, empty, no_index = np.ascontiguousarray(X.T), np.empty(0), np.empty(0, np.int32)
    for design in ((Xt, empty, no_index, no_index, False),
                   (np.empty((0, 0)), X.ravel(order="F"), np.tile(np.arange(3, dtype=np.int32), 2),
                    np.array([0, 3, 6], dtype=np.int32), True)):
        lam = np.full(2, 0.1)
        sq_norms = (X * X).sum(axis=0)
        enet_cd(*design, sq_norms, y, lam, lam, w0, 1e-8, 100)
        enet_cd_batched(*design, sq_norms, y, lam[None], lam[None], w0[None], 1e-8, 100)
        enet_gap(w0, y, X.T @ y, y, lam, lam)
        logistic_l1_prox_newton(*design, y, lam, w0, 1e-8, 50)
        logistic_l1_prox_newton_batched(*design, y, lam[None], w0[None], 1e-8, 50)
        logistic_l1_gap(X @ w0, y, lam, w0, X.T @ y)
    s = np.array([0.0, 1.0, 3.0, 2.0, 2.5])
    S, lams, zero_tol = np.stack([s, -s]), np.array([0.5, 0.5]), np.array([1e-9, 1e-9])
    for order in (1, 2, 3):
        y = tv_l2(s, 0.5, order)
        tv_l2_batched(S, lams, order)
        tv_l2_vjp(y, 0.5, order, s)
        tv_l2_vjp_batched(S, lams, order, S)
        u0 = np.zeros(5 - order)
        y, u, _, _ = tv_dual_newton(s, 0.5, order, u0, 1e-12, 50)
        tv_dual_newton_batched(S, lams, order, np.zeros((2, 5 - order)), 1e-12, 50)
        tv_dual_from_primal(s, y, order)
        tv_manifold(s, y, 0.5, order, 1e-9)
        tv_manifold_vjp(s, y, 0.5, order, s, 1e-9)
        tv_manifold_vjp_batched(S, S, lams, order, S, zero_tol)
        tv_manifold_vjp_rows(S, S, lams, order, S, zero_tol)
        tv_l2_rows(S, lams, order)
        tv_l2_vjp_rows(S, lams, order, S)
        tv_dual_newton_rows(S, lams, order, np.zeros((2, 5 - order)), 1e-12, 50)
        tv_project(s, np.arange(5 - order), order)
        diff_adjoint(diff_forward(s, order), order)
    tv1d_condat(s, 0.5)
    tv1d_condat_batched(S, lams)
    tv1d_condat_rows(S, lams)
    from bilevel.solvers.bregman import _warmup as _warmup_bregman

    _warmup_bregman()
    from bilevel.solvers.piecewise import _warmup as _warmup_piecewise

    _warmup_piecewise()
    from bilevel.solvers.pooling import _warmup as _warmup_pooling

    _warmup_pooling()
    from bilevel.solvers.projections import _warmup as _warmup_projections

    _warmup_projections()
    from bilevel.solvers.qp import _warmup as _warmup_qp

    _warmup_qp()
    from bilevel.solvers.tv2d import _warmup as _warmup_tv2d

    _warmup_tv2d()
