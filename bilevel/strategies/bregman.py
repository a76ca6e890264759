r"""Unrolling a smooth Bregman method that solves a non-smooth problem.

A Bregman proximal-gradient step for ``min_{x in C} f(x, theta)`` with a Legendre function
``psi`` whose domain is ``C``,

.. math:: x_{k+1} = \arg\min_x \langle \tau\nabla_x f(x_k, \theta), x\rangle
          + D_\psi(x, x_k) = \nabla\psi^*\big(\nabla\psi(x_k) - \tau\nabla_x f(x_k,\theta)\big),

is a smooth map of ``(x_k, theta)`` with values in the interior of ``C`` (Ochs et al.
2016): the entropy gives ``x_k exp(-tau g)`` on ``x >= 0`` and the softmax update on the
simplex; ``psi(x) = ((1+x)log(1+x) + (1-x)log(1-x))/2`` gives ``tanh(atanh(x) - tau g)``
on ``[-1, 1]``. A non-smooth convex term enters through its dual, ``lam ||Dx||_1 =
max_{|z| <= 1} lam <Dx, z>``, and the Bregman primal-dual method (Chambolle and Pock
2016) takes the box mirror step on ``z``. The derivative of the ``n``-th iterate exists at
every iteration, and reverse mode through the ``n`` steps gives it exactly:

.. math:: \frac{\partial x_n}{\partial\theta}
          = \sum_{k=1}^{n} \Big(\prod_{j=k}^{n-1}\partial_x\mathcal A(x_j,\theta)\Big)
            \partial_\theta\mathcal A(x_{k-1},\theta),

which tends to ``dx*/dtheta`` where it exists.

References
----------
Ochs, Ranftl, Brox, Pock, "Techniques for gradient-based bilevel optimization with
non-smooth lower level problems", J. Math. Imaging Vis. 2016.
Ochs, "Towards differentiation of solution mappings of non-smooth optimization problems",
lecture notes, 2021.
Chambolle, Pock, "On the ergodic convergence rates of a first-order primal-dual
algorithm", Math. Program. 2016.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from bilevel._autograd import pullback
from bilevel._registry import check_applicable, register_strategy
from bilevel._threads import torch_threads
from bilevel._types import ConvergenceWarning, like_structure
from bilevel.strategies.base import Strategy, theta_tensors

__all__ = ["BregmanUnroll", "mirror_dual", "mirror_primal"]


def mirror_dual(x, kind):
    """``grad psi(x)`` in torch: the mirror coordinates of an interior point ``x``."""
    if kind in ("entropy", "simplex"):
        return torch.log(x)
    if kind == "box":
        return torch.atanh(x)
    if kind == "ball":
        return x * _radial(x, _atanh_ratio)
    return x


def mirror_primal(w, kind):
    """``grad psi*(w)`` in torch, the inverse of :func:`mirror_dual` (softmax for the simplex)."""
    if kind == "simplex":
        return torch.softmax(w, dim=-1)
    if kind == "entropy":
        return torch.exp(w)
    if kind == "box":
        return torch.tanh(w)
    if kind == "ball":
        return w * _radial(w, _tanh_ratio)
    return w


def _atanh_ratio(r):
    return torch.atanh(r) / r


def _tanh_ratio(r):
    return torch.tanh(r) / r


def _radial(x, ratio):
    """``ratio(|x|)`` over the last axis, with its series near 0 (no NaN gradient at 0)."""
    sq = (x * x).sum(dim=-1, keepdim=True)
    small = sq < 1e-16
    r = torch.sqrt(torch.where(small, torch.ones_like(sq), sq))
    sign = 1.0 if ratio is _atanh_ratio else -1.0       # atanh r / r = 1 + r^2/3, tanh: 1 - r^2/3
    return torch.where(small, 1.0 + sign * sq / 3.0, ratio(r))


# States smaller than this replay on one torch thread: a thread team costs more than the
# small operations it shares (10x slower on two busy cores).
_SERIAL_MAX = 100_000


def _normalize(w, kind):
    """Remove the softmax's invariant shift (keeps simplex coordinates bounded)."""
    return w - torch.logsumexp(w, dim=-1, keepdim=True) if kind == "simplex" else w


@register_strategy
@dataclass(frozen=True)
class BregmanUnroll(Strategy):
    """Backpropagate through the problem's smooth Bregman method (its ``mirror``).

    Parameters
    ----------
    n_steps : int
        Most steps; the forward pass (numba) stops earlier once the optimality residual is
        ``<= tol``, and the replay (torch) repeats exactly the steps it took.
    tol : float or None
        Residual at which the forward pass stops; None runs all ``n_steps``.
    step_scale : float
        Multiplies the problem's step sizes ``tau`` (and ``sigma``); at most 1 keeps their
        convergence guarantee.

    Notes
    -----
    The replay runs in the mirror coordinates ``w = grad psi(x)``: ``w+ = w - tau g``,
    ``x = grad psi*(w)``, the same map as ``x+ = grad psi*(grad psi(x) - tau g)`` without
    ``log 0`` or ``atanh(1)`` where an iterate nears the boundary. Memory grows linearly
    with the steps. ``info``: ``iterations`` (steps replayed), ``residual`` (the forward
    pass's optimality residual), ``replay_error`` (``||x_n^torch - x_n^numba||_inf``),
    ``distance`` (``||x_n - x*||_inf``), ``time``.
    A forward pass that stops above ``tol`` warns with :class:`~bilevel.ConvergenceWarning`.
    """

    name = "bregman"
    requires = frozenset({"mirror"})
    iterative = True

    n_steps: int = 20000
    tol: float | None = 1e-12
    step_scale: float = 1.0

    def __post_init__(self):
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if self.tol is not None and not (self.tol >= 0):
            raise ValueError(f"tol must be >= 0 or None, got {self.tol}")
        if not (np.isfinite(self.step_scale) and self.step_scale > 0):
            raise ValueError(f"step_scale must be finite and > 0, got {self.step_scale}")

    def with_budget(self, budget):
        """Exactly ``budget`` steps (no early stop)."""
        return replace(self, n_steps=int(budget), tol=None)

    def replay(self, mirror, theta, n_iter, tau, sigma):
        """Replay ``n_iter`` steps in torch from ``mirror.start``; return the final state."""
        w = mirror_dual(torch.from_numpy(np.asarray(mirror.start[0], np.float64)), mirror.kind)
        x = mirror_primal(w, mirror.kind)
        if mirror.scheme == "gradient":
            for _ in range(n_iter):
                w = _normalize(w - tau * mirror.gradient(x, theta), mirror.kind)
                x = mirror_primal(w, mirror.kind)
            return (x,)
        dk = mirror.dual_kind
        u = mirror_dual(torch.from_numpy(np.asarray(mirror.start[1], np.float64)), dk)
        z = mirror_primal(u, dk)
        for _ in range(n_iter):
            w = _normalize(w - tau * (mirror.gradient(x, theta) + mirror.adjoint(z, theta)),
                           mirror.kind)
            x_new = mirror_primal(w, mirror.kind)
            u = _normalize(u + sigma * mirror.operator(2.0 * x_new - x, theta), dk)
            z = mirror_primal(u, dk)
            x = x_new
        return x, z

    def vjp(self, problem, solution, v, warm_start=None):
        """VJP of the method's ``n``-th iterate; see the class docstring."""
        check_applicable(self, problem)
        begin = time.perf_counter()
        mirror = problem.capabilities.mirror(solution)
        tau = mirror.step_size * self.step_scale
        sigma = None if mirror.dual_step_size is None else mirror.dual_step_size * self.step_scale
        tol = -1.0 if self.tol is None else self.tol
        state, n_iter, residual = mirror.forward(self.n_steps, tol, tau, sigma)
        if self.tol is not None and residual > self.tol:
            warnings.warn(
                f"bregman: the {mirror.info.get('method', 'Bregman method')} stopped at "
                f"residual {residual:.1e} > tol={self.tol:.0e} after {n_iter} steps; the "
                "derivative is that of an unconverged iterate. Raise n_steps or loosen tol.",
                ConvergenceWarning, stacklevel=3)
        parts, theta = theta_tensors(solution.theta, requires_grad=True)
        size = sum(np.size(s) for s in mirror.start)
        with torch_threads(1 if size < _SERIAL_MAX else torch.get_num_threads()), \
                torch.enable_grad():
            final = self.replay(mirror, theta, n_iter, tau, sigma)
            x = mirror.output(final) if mirror.output is not None else final[0]
            grads = pullback(x, parts, v) if x.requires_grad else \
                tuple(np.zeros(np.shape(p)) for p in parts)
        x_numba = (np.asarray(mirror.output(tuple(torch.from_numpy(s) for s in state)))
                   if mirror.output is not None else state[0])
        x_np = x.detach().numpy()
        info = {"iterations": int(n_iter), "residual": float(residual),
                "replay_error": float(np.max(np.abs(x_np - np.reshape(x_numba, x_np.shape)))),
                "distance": float(np.max(np.abs(x_np - np.reshape(solution.x, x_np.shape)))),
                "method": mirror.info.get("method"), "time": time.perf_counter() - begin}
        return like_structure(grads, solution.theta), info
