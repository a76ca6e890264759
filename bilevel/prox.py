r"""Ready non-smooth terms for :class:`~bilevel.problems.Composite` energies.

.. math:: E(x, \theta) = f(x, \theta) + \sum_k g_k(x; w_k), \qquad
          \operatorname{prox}_{t g}(z) = \arg\min_x \tfrac{1}{2t}\|x - z\|^2 + g(x)

A term is a penalty ``g = w h`` (its weight ``w`` a constant or a part of theta) or the
indicator of a set. Each offers what the strategies need: its ``value``, its ``prox`` in
torch, differentiable where the prox is (autograd gives the prox's Jacobian-vector products,
or a closed form does for the TV terms), the ``margin`` of its non-degeneracy at a prox input
(how far ``z`` is from a kink of the prox, relative: partial smoothness's condition), and,
where they exist, a smooth description of its set (``constraints``, for implicit
differentiation of the KKT system) and a Bregman view (``mirror``). The prox Jacobian ``P`` at
``z* = x* - t grad f(x*)`` is symmetric with eigenvalues in ``[0, 1]``; its range is the
tangent space of the term's active manifold, on which the solution map is smooth (Vaiter,
Deledalle, Peyre, Fadili, Dossal 2017; Liang, Fadili, Peyre 2014).

Terms: :class:`L1` (weighted), :class:`GroupL1` (the l2,1 norm), :class:`NonNegative`,
:class:`Box`, :class:`Simplex`, :class:`L2Ball`, :class:`L1Ball`, :class:`LinfBall`,
:class:`TV1D` (orders 1-3, the numba TV kernels), :class:`TV2D` (isotropic).
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._types import as_tuple
from bilevel.problems.base import check_array
from bilevel.problems.projections import _torch_simplex, check_radius

__all__ = ["L1", "TV1D", "TV2D", "Box", "GroupL1", "L1Ball", "L2Ball", "LinfBall",
           "NonNegative", "Simplex", "Term"]

# Distances to a kink below this are ties, not margins.
_TINY = 1e-300


def _relative_min(values, scale):
    values = np.asarray(values, dtype=np.float64).ravel()
    return float(values.min() / max(scale, _TINY)) if values.size else np.inf


class Term:
    """Base class of the ready terms.

    A penalty term has a weight: ``weight`` (a constant, scalar or shaped like ``x``) or
    ``weight_part`` (the index of theta's part that holds it, differentiable). A set term
    (``is_set = True``) has neither.
    """

    is_set = False
    #: Bregman mirror of the set (``bilevel.Mirror`` kinds), or None.
    mirror_kind = None

    def __init__(self, weight=1.0, weight_part=None):
        if weight_part is not None:
            if isinstance(weight_part, bool) or not isinstance(weight_part, (int, np.integer)) \
                    or weight_part < 0:
                raise ValueError(f"weight_part must be the index (>= 0) of theta's part that "
                                 f"holds the weight, got {weight_part!r}")
            self.weight_part, self._weight = int(weight_part), None
        else:
            w = check_array(weight, "weight")
            if np.any(w < 0):
                raise ValueError(f"weight must be >= 0, got min {w.min():.3g}")
            self.weight_part, self._weight = None, torch.from_numpy(w)

    def weight(self, parts):
        """Return the weight for theta's parts (a tuple of tensors), or None for a set."""
        if self.is_set:
            return None
        if self.weight_part is None:
            return self._weight
        if self.weight_part >= len(parts):
            raise ValueError(f"{self!r} takes its weight from theta part {self.weight_part}, "
                             f"but theta has {len(parts)} part(s)")
        return parts[self.weight_part]

    def check_weight(self, parts):
        """Validate the weight of a penalty taken from theta: finite and >= 0."""
        if self.is_set or self.weight_part is None:
            return
        w = np.asarray(parts[self.weight_part])
        if np.any(w < 0):
            raise ValueError(f"theta part {self.weight_part}, the weight of {self!r}, must be "
                             f">= 0, got min {w.min():.3g}; optimize its log (log_scale=True)")

    def value(self, x, w):
        """``g(x)`` as a scalar tensor (the indicator of a set is 0 on it)."""
        raise NotImplementedError

    def prox(self, z, t, w):
        """``prox_{t g}(z)`` in torch, differentiable in ``z`` and ``w``."""
        raise NotImplementedError

    def margin(self, z, t, w):
        """Non-degeneracy margin of the prox at ``z`` (relative; ``inf`` away from any kink)."""
        raise NotImplementedError

    def constraints(self, x):
        """``(equalities, inequalities)`` describing the set smoothly in torch, or None."""
        return None

    def to_mirror(self, u):
        """Map a point ``u`` of the mirror kind's canonical set onto this set (torch)."""
        return u

    def from_mirror(self, x):
        """Invert :meth:`to_mirror` (torch)."""
        return x

    def __repr__(self):
        if self.is_set:
            return f"{type(self).__name__}()"
        if self.weight_part is not None:
            return f"{type(self).__name__}(weight_part={self.weight_part})"
        w = self._weight.numpy()
        return f"{type(self).__name__}(weight={w.item() if w.ndim == 0 else w.tolist()})"


class L1(Term):
    r"""``w ||x||_1 = sum_i w_i |x_i|``; prox: soft-thresholding ``sign(z) max(|z| - t w, 0)``."""

    def value(self, x, w):
        """``sum w |x|``."""
        return torch.sum(w * torch.abs(x))

    def prox(self, z, t, w):
        """Soft-thresholding at ``t w``."""
        return torch.sign(z) * torch.relu(torch.abs(z) - t * w)

    def margin(self, z, t, w):
        """``1 - |z_i| / (t w_i)`` off the support, ``|x_i| / max |x|`` on it."""
        z, lam = z.detach().numpy(), np.broadcast_to(t * np.asarray(w), z.shape)
        off = np.abs(z) <= lam
        x = np.abs(z) - lam
        return min(_relative_min(1.0 - np.abs(z[off]) / np.maximum(lam[off], _TINY), 1.0),
                   _relative_min(x[~off], x[~off].max(initial=0.0)))


class GroupL1(Term):
    r"""The group lasso ``w sum_g ||x_g||_2``; prox: ``z_g max(1 - t w / ||z_g||, 0)``.

    Parameters
    ----------
    groups : sequence of int
        The group label of each coordinate of ``x`` (flattened), e.g. ``[0, 0, 1, 1, 1]``.
    weight, weight_part
        The weight (one for all groups, or one per group in label order).
    """

    def __init__(self, groups, weight=1.0, weight_part=None):
        super().__init__(weight, weight_part)
        labels = np.asarray(groups)
        if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"groups must be a 1-D sequence of integer labels, got {groups!r}")
        _, self._index = np.unique(labels, return_inverse=True)
        self.n_groups = int(self._index.max()) + 1
        self._index_t = torch.from_numpy(self._index.astype(np.int64))

    def _norms(self, x):
        sq = torch.zeros(self.n_groups, dtype=x.dtype).index_add(0, self._index_t,
                                                                 x.reshape(-1) ** 2)
        return torch.sqrt(sq)

    def value(self, x, w):
        """``sum_g w_g ||x_g||``."""
        return torch.sum(w * self._norms(x))

    def prox(self, z, t, w):
        """Block soft-thresholding."""
        norms = self._norms(z)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        scale = torch.relu(1.0 - t * w / safe) * (norms > 0)
        return (z.reshape(-1) * scale[self._index_t]).reshape(z.shape)

    def margin(self, z, t, w):
        """``1 - ||z_g|| / (t w_g)`` off the active groups, ``||x_g|| / max`` on them."""
        norms = self._norms(z.detach()).numpy()
        lam = np.broadcast_to(t * np.asarray(w), norms.shape)
        off = norms <= lam
        active = norms - lam
        return min(_relative_min(1.0 - norms[off] / np.maximum(lam[off], _TINY), 1.0),
                   _relative_min(active[~off], active[~off].max(initial=0.0)))


class NonNegative(Term):
    r"""The indicator of ``x >= 0``; prox: ``max(z, 0)``; mirror: the entropy."""

    is_set = True
    mirror_kind = "entropy"

    def __init__(self):
        super().__init__()

    def value(self, x, w):
        """0 on the set."""
        return torch.zeros((), dtype=x.dtype)

    def prox(self, z, t, w):
        """``max(z, 0)``."""
        return torch.relu(z)

    def margin(self, z, t, w):
        """``|z_i| / max |z|``: the distance of every coordinate to the kink at 0."""
        z = z.detach().numpy()
        return _relative_min(np.abs(z), np.abs(z).max(initial=0.0))

    def constraints(self, x):
        """``-x <= 0``."""
        return None, -x.reshape(-1)


class Box(Term):
    r"""The indicator of ``lo <= x <= hi``; prox: clipping; mirror: the box entropy.

    Parameters
    ----------
    lo, hi : float or array
        The bounds (``lo < hi``), finite.
    """

    is_set = True
    mirror_kind = "box"

    def __init__(self, lo, hi):
        super().__init__()
        self.lo, self.hi = check_array(lo, "lo"), check_array(hi, "hi")
        if not np.all(self.lo < self.hi):
            raise ValueError("Box needs lo < hi")
        self._lo, self._hi = torch.from_numpy(self.lo), torch.from_numpy(self.hi)

    def value(self, x, w):
        """0 on the set."""
        return torch.zeros((), dtype=x.dtype)

    def prox(self, z, t, w):
        """``min(max(z, lo), hi)``."""
        return torch.minimum(torch.maximum(z, self._lo), self._hi)

    def margin(self, z, t, w):
        """Return every coordinate's distance to the nearer bound, over ``hi - lo``."""
        z = z.detach().numpy()
        d = np.minimum(np.abs(z - self.lo), np.abs(z - self.hi))
        return _relative_min(d / np.broadcast_to(self.hi - self.lo, d.shape), 1.0)

    def constraints(self, x):
        """``lo - x <= 0`` and ``x - hi <= 0``."""
        flat = x.reshape(-1)
        lo = torch.broadcast_to(self._lo, x.shape).reshape(-1)
        hi = torch.broadcast_to(self._hi, x.shape).reshape(-1)
        return None, torch.cat([lo - flat, flat - hi])

    def to_mirror(self, u):
        """``lo + (hi - lo)(u + 1) / 2`` from ``[-1, 1]``."""
        return self._lo + 0.5 * (self._hi - self._lo) * (u + 1.0)

    def from_mirror(self, x):
        """``2 (x - lo) / (hi - lo) - 1``."""
        return 2.0 * (x - self._lo) / (self._hi - self._lo) - 1.0

    def __repr__(self):
        return f"Box(lo={self.lo.tolist()}, hi={self.hi.tolist()})"


class Simplex(Term):
    r"""The indicator of ``{x >= 0, sum x = r}`` (last axis); prox: the projection."""

    is_set = True
    mirror_kind = "simplex"

    def __init__(self, radius=1.0):
        super().__init__()
        self.radius = check_radius(radius)

    def value(self, x, w):
        """0 on the set."""
        return torch.zeros((), dtype=x.dtype)

    def prox(self, z, t, w):
        """Project onto the simplex (sorting)."""
        return _torch_simplex(z, self.radius)

    def margin(self, z, t, w):
        """Return every ``z_i``'s distance to the threshold ``tau``, over ``max |z - tau|``."""
        z = z.detach()
        d = (z - (z - _torch_simplex(z, self.radius)).amax(dim=-1, keepdim=True)
             ).numpy()          # z - x is tau on the support: z - tau, its sign the support
        return _relative_min(np.abs(d), np.abs(d).max(initial=0.0))

    def constraints(self, x):
        """``sum x - r = 0`` per row, ``-x <= 0``."""
        return (x.sum(dim=-1) - self.radius).reshape(-1), -x.reshape(-1)

    def to_mirror(self, u):
        """``r u`` from the unit simplex."""
        return self.radius * u

    def from_mirror(self, x):
        """``x / r``."""
        return x / self.radius

    def __repr__(self):
        return f"Simplex(radius={self.radius})"


class _Ball(Term):
    is_set = True

    def __init__(self, radius=1.0):
        super().__init__()
        self.radius = check_radius(radius)

    def value(self, x, w):
        """0 on the set."""
        return torch.zeros((), dtype=x.dtype)

    def __repr__(self):
        return f"{type(self).__name__}(radius={self.radius})"


class L2Ball(_Ball):
    r"""The indicator of ``||x||_2 <= r`` (last axis); prox: ``r z / max(||z||, r)``."""

    mirror_kind = "ball"

    def prox(self, z, t, w):
        """Project radially."""
        norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
        return torch.where(norm > self.radius, self.radius * z / norm, z)

    def margin(self, z, t, w):
        """``| ||z|| - r | / r``."""
        norm = torch.linalg.vector_norm(z.detach(), dim=-1).numpy()
        return _relative_min(np.abs(norm - self.radius), self.radius)

    def constraints(self, x):
        """``||x||^2 - r^2 <= 0`` per row."""
        return None, ((x * x).sum(dim=-1) - self.radius**2).reshape(-1)

    def to_mirror(self, u):
        """``r u`` from the unit ball."""
        return self.radius * u

    def from_mirror(self, x):
        """``x / r``."""
        return x / self.radius


class L1Ball(_Ball):
    r"""The indicator of ``||x||_1 <= r`` (last axis); prox: the projection (sorting)."""

    def prox(self, z, t, w):
        """Soft-thresholding at the level that lands on the sphere, when outside."""
        sign = torch.where(z < 0, -torch.ones_like(z), torch.ones_like(z))
        out = sign * _torch_simplex(z.abs(), self.radius)
        return torch.where(z.abs().sum(dim=-1, keepdim=True) > self.radius, out, z)

    def margin(self, z, t, w):
        """``| ||z||_1 - r | / r`` and, outside, every ``|z_i|``'s distance to the level."""
        z = z.detach()
        norm = z.abs().sum(dim=-1).numpy()
        outer = _relative_min(np.abs(norm - self.radius), self.radius)
        x = self.prox(z, t, w)
        level = (z.abs() - x.abs()).amax(dim=-1, keepdim=True)
        d = (z.abs() - level).numpy()[norm > self.radius]
        return min(outer, _relative_min(np.abs(d), np.abs(d).max(initial=0.0)))


class LinfBall(_Ball):
    r"""The indicator of ``||x||_inf <= r``; prox: clipping to ``[-r, r]``."""

    mirror_kind = "box"

    def prox(self, z, t, w):
        """``clip(z, -r, r)``."""
        return torch.clamp(z, -self.radius, self.radius)

    def margin(self, z, t, w):
        """``| |z_i| - r | / r``."""
        return _relative_min(np.abs(np.abs(z.detach().numpy()) - self.radius), self.radius)

    def constraints(self, x):
        """``|x_i| <= r`` as ``x - r <= 0``, ``-x - r <= 0``."""
        flat = x.reshape(-1)
        return None, torch.cat([flat - self.radius, -flat - self.radius])

    def to_mirror(self, u):
        """``r u`` from ``[-1, 1]``."""
        return self.radius * u

    def from_mirror(self, x):
        """``x / r``."""
        return x / self.radius


# --------------------------------------------------------------------------------------
def _tv1d_denoise(s, lam, order, tol, max_iter):
    """Return ``(y, u)``: the TV denoising of ``s`` and its solver's dual.

    ``u`` is empty for order 1, whose direct algorithm has no dual iterate; the manifold then
    recovers it from ``y``, well conditioned at order 1.
    """
    from bilevel.solvers.tv import tv1d_condat, tv_dual_newton

    if order == 1:
        return tv1d_condat(s, lam), np.empty(0)
    return tv_dual_newton(s, lam, order, np.zeros(s.size - order), tol, max_iter)[:2]


class _TV1DProx(torch.autograd.Function):
    """``prox_{lam TV_k}(z)`` by the numba TV kernels; its VJP by the manifold projector."""

    @staticmethod
    def forward(ctx, z, lam, order, tol, max_iter):
        s = np.ascontiguousarray(z.detach().numpy(), dtype=np.float64)
        lam_f = float(lam)
        y, u = _tv1d_denoise(s, lam_f, order, tol, max_iter)
        ctx.order, ctx.s, ctx.y, ctx.u, ctx.lam = order, s, y, u, lam_f
        ctx.lam_shape = lam.shape
        return torch.from_numpy(y)

    @staticmethod
    def backward(ctx, grad):
        from bilevel.solvers.tv import tv_manifold_vjp

        zero_tol = TV1D.zero_tol(ctx.s)
        g_s, g_lam, _ = tv_manifold_vjp(ctx.s, ctx.y, ctx.lam, ctx.order,
                                        np.ascontiguousarray(grad.numpy(), dtype=np.float64),
                                        zero_tol, ctx.u)
        return (torch.from_numpy(g_s), torch.full(ctx.lam_shape, float(g_lam),
                                                  dtype=torch.float64), None, None, None)


class TV1D(Term):
    r"""``w ||D^k x||_1`` of a 1-D ``x``, orders ``k = 1, 2, 3``; prox: TV denoising.

    The prox is solved by the kernels of :class:`~bilevel.problems.TV1D` (Condat's direct
    algorithm for order 1, projected Newton on the dual for orders 2-3) and differentiated
    by its manifold projector: ``dprox/dz = P``, ``dprox/dlam = -P D^T sigma``.
    """

    def __init__(self, order=1, weight=1.0, weight_part=None, tol=1e-13, max_iter=500):
        super().__init__(weight, weight_part)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        self.order, self.tol, self.max_iter = int(order), float(tol), int(max_iter)

    @staticmethod
    def zero_tol(s):
        """``|D^k y|_i`` below this is zero (the same rule as :class:`~bilevel.problems.TV1D`)."""
        return 1e-9 * max(1.0, float(np.max(np.abs(s))))

    def value(self, x, w):
        """``w sum |D^k x|``."""
        return w * torch.sum(torch.abs(torch.diff(x, n=self.order)))

    @staticmethod
    def _scalar(w):
        w = torch.as_tensor(w, dtype=torch.float64)
        if w.ndim:
            raise ValueError("the TV1D term takes a scalar weight")
        return w

    def prox(self, z, t, w):
        """TV denoising of ``z`` at ``t w``."""
        return _TV1DProx.apply(z, t * self._scalar(w), self.order, self.tol, self.max_iter)

    def margin(self, z, t, w):
        """Return the manifold margin of the TV denoising at ``z`` (with its solver's dual)."""
        from bilevel.solvers.tv import tv_manifold

        s = np.ascontiguousarray(z.detach().numpy(), dtype=np.float64)
        lam = float(t * self._scalar(w))
        y, u = _tv1d_denoise(s, lam, self.order, self.tol, self.max_iter)
        return float(tv_manifold(s, y, lam, self.order, self.zero_tol(s), u)[2])

    def __repr__(self):
        return f"TV1D(order={self.order}, {super().__repr__()[5:]}"


class _TV2DProx(torch.autograd.Function):
    """``prox_{lam TV}(z)`` of an image by the primal-dual kernel; VJP by its fixed point."""

    @staticmethod
    def forward(ctx, z, lam, problem):
        f = np.ascontiguousarray(z.detach().numpy(), dtype=np.float64)
        sol = problem.solve((f, np.asarray(float(lam))))
        ctx.problem, ctx.solution, ctx.lam_shape = problem, sol, lam.shape
        return torch.from_numpy(sol.x)

    @staticmethod
    def backward(ctx, grad):
        g_f, g_lam = _fixed_point_vjp(ctx.problem, ctx.solution, grad.numpy())
        return (torch.from_numpy(g_f), torch.full(ctx.lam_shape, float(g_lam),
                                                  dtype=torch.float64), None)


def _fixed_point_vjp(problem, solution, v):
    """VJP of a primal-dual fixed point ``z* = T(z*)``, ``u = R(z)``: one GMRES solve.

    ``(I - T_z)^T w = R_z^T v``, gradient ``T_theta^T w + R_theta^T v`` (the primal-dual
    state of :class:`~bilevel.problems.TV2D`).
    """
    from bilevel._autograd import pullback
    from bilevel.linalg import solve

    step = problem.capabilities.step
    z_star = torch.tensor(step.at_solution(solution), requires_grad=True)
    parts = tuple(torch.tensor(np.asarray(p, dtype=np.float64), requires_grad=True)
                  for p in as_tuple(solution.theta))
    with torch.enable_grad():
        T = step.step(z_star, parts)
        out = step.read(z_star, parts)
    b = pullback(out, (z_star,), v, retain_graph=True)[0].ravel()
    w, _ = solve(lambda u: u - pullback(T, (z_star,), u, retain_graph=True)[0].ravel(), b,
                 method="gmres", tol=1e-12)
    grads = pullback(T, parts, w, retain_graph=True)
    return tuple(g + h for g, h in zip(grads, pullback(out, parts, v)))


class TV2D(Term):
    r"""Isotropic TV ``w sum_ij ||(grad x)_ij||_2`` of an image; prox: ROF denoising.

    The prox is :class:`~bilevel.problems.TV2D`'s primal-dual solve (to ``tol``), its
    derivative the implicit derivative of that iteration's fixed point (GMRES). For small
    images: the strategies form dense Jacobians of the prox.
    """

    def __init__(self, weight=1.0, weight_part=None, tol=1e-12, max_iter=200_000):
        super().__init__(weight, weight_part)
        from bilevel.problems.tv2d import TV2D as _Problem

        self._problem = _Problem(tol=tol, max_iter=max_iter)

    def value(self, x, w):
        """``w sum |grad x|``."""
        from bilevel.problems.tv2d import _torch_grad

        gx, gy = _torch_grad(x)
        return w * torch.sum(torch.sqrt(gx * gx + gy * gy))

    def prox(self, z, t, w):
        """ROF denoising of ``z`` at ``t w``."""
        w = torch.as_tensor(w, dtype=torch.float64)
        if w.ndim:
            raise ValueError("the TV2D term takes a scalar weight")
        return _TV2DProx.apply(z, t * w, self._problem)

    def margin(self, z, t, w):
        """``1 - |p_ij| / lam`` where ``grad x = 0``, ``|grad x| / max`` where not."""
        from bilevel.problems.tv2d import _torch_grad

        f = np.ascontiguousarray(z.detach().numpy(), dtype=np.float64)
        lam = float(t * np.asarray(w))
        sol = self._problem.solve((f, np.asarray(lam)))
        gx, gy = (g.numpy() for g in _torch_grad(torch.from_numpy(sol.x)))
        mag = np.hypot(gx, gy)
        p = np.hypot(*sol.info["dual"])
        flat = mag <= 1e-9 * max(1.0, float(np.abs(f).max()))
        return min(_relative_min(1.0 - p[flat] / lam, 1.0),
                   _relative_min(mag[~flat], mag[~flat].max(initial=0.0)))
