r"""The l1 penalty's math, shared by the sparse models: its prox and its active manifold.

The l1 norm is partly smooth relative to ``M_S = {x : supp(x) = S}``: at a non-degenerate
minimizer of ``f(x) + sum_j lam_j |x_j|`` (``|grad_j f| < lam_j`` off the support) the
support and signs are locally constant, and the solution map is differentiated on ``M_S``
with the Hessian of ``f`` restricted to ``S`` (Vaiter, Deledalle, Peyre, Fadili, Dossal,
"The degrees of freedom of partly smooth regularizers", Ann. Inst. Stat. Math. 2017).
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._types import Manifold
from bilevel.problems.base import check_nonnegative
from bilevel.problems.manifold import restricted_solver

__all__ = ["check_positive", "l1_manifold", "per_feature", "soft_threshold"]


def soft_threshold(z, t):
    """``sign(z) max(|z| - t, 0)`` in torch: the prox of ``t |.|``."""
    return torch.sign(z) * torch.relu(torch.abs(z) - t)


def check_positive(value, name, p):
    """Validate a penalty weight: a scalar or shape (p,), finite and > 0."""
    arr = check_nonnegative(value, name, shapes=((), (p,)))
    if np.any(arr == 0):
        raise ValueError(f"{name} must be > 0: at 0 the l1 penalty vanishes and the minimizer "
                         "need not be unique; use Ridge for a pure l2 penalty")
    return arr


def l1_manifold(x, corr, lam, hessian, theta_vjp, theta_jvp, remedy):
    """Build the support manifold of an l1-penalized energy at its minimizer ``x``.

    Parameters
    ----------
    x : ndarray
        The minimizer.
    corr : ndarray
        ``-grad f(x)`` of the smooth part: ``lam_j s_j`` on the support, and
        ``|corr_j| <= lam_j`` off it. The margin is the smallest of ``1 - |corr_j|/lam_j``
        off the support and ``|x_j| / max|x|`` on it: 0 when a feature is about to enter
        or leave the support.
    lam : ndarray
        The l1 weights per feature.
    hessian : callable
        ``(support) -> (k, k)`` Hessian of the smooth part restricted to the support.
    theta_vjp, theta_jvp : callable
        ``(support, signs, u)`` and ``(support, signs, dtheta)`` per the :class:`Manifold`
        contract.
    remedy : str
        What to do when the restricted Hessian is singular (named in the error).
    """
    p = x.shape[0]
    magnitude = np.abs(x)
    active = magnitude > 0
    support = np.flatnonzero(active)
    signs = np.sign(x[support])
    # Margins, relative: inactive features below their kink, active ones away from zero.
    slack = np.abs(corr)
    slack /= lam
    np.subtract(1.0, slack, out=slack)
    if support.size:
        slack[support] = magnitude[support] / magnitude[support].max()
    margin_index = int(np.argmin(slack))
    margin = float(slack[margin_index])
    k = support.size
    H = hessian(support) if k else np.zeros((0, 0))
    solve = restricted_solver(H, f"the support ({k} features, collinear active features)",
                              remedy)

    def restrict(v):
        return np.asarray(v, dtype=np.float64).ravel()[support]

    def lift(z):
        out = np.zeros(p)
        out[support] = z
        return out

    return Manifold(
        kind="support", dim=k, margin=margin, restrict=restrict, lift=lift, solve=solve,
        theta_vjp=lambda u: theta_vjp(support, signs, u),
        theta_jvp=lambda dtheta: theta_jvp(support, signs, dtheta),
        info={"support": support, "signs": signs, "margin_index": margin_index},
        coordinates=support)


def per_feature(support, values, lam, p):
    """Return the gradient in ``lam`` from its ``values`` on the support.

    Their sum when ``lam`` is one shared scalar, else the vector of the ``p`` features.
    """
    if lam.ndim == 0:
        return np.asarray(values.sum())
    full = np.zeros(p)
    full[support] = values
    return full


