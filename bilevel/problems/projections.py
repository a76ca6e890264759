r"""Euclidean projections onto l2 / l1 spheres and balls, the linf ball and the simplex.

.. math:: y^*(x) = \arg\min_{u \in C} \tfrac12 \|u - x\|^2, \qquad
          C \in \{\|u\|_2 = r,\ \|u\|_2 \le r,\ \|u\|_1 = r,\ \|u\|_1 \le r,\
          \|u\|_\infty \le r,\ u \ge 0 \text{ and } \textstyle\sum_i u_i = r\}

over the last axis of ``x``. Where the projection is differentiable its Jacobian is a
(scaled) orthogonal projector: ``(r/||x||)(I - u u^T)`` on the l2 sphere, ``diag(1_S) -
s s^T / |S|`` on the l1 sphere (``S`` the support of ``y``, ``s = sign(y)``), ``diag(1_S) -
1_S 1_S^T / |S|`` on the simplex, ``diag(|x_i| < r)`` on the linf ball, ``I`` inside a ball.

On the non-smooth sets the coordinates pinned to a face (``y_i = 0`` on the l1 sets and
the simplex, ``|y_i| = r`` on the linf ball) are *plateau* dimensions: ``y`` does not move
when they move. Gould et al. (section 5.2) note that the gradient of their Proposition 4.5,
with the constraint ``h(u) = ||u||_p - r`` treated as smooth at ``y``, is a valid descent
direction there, and that masking it to zero on the plateau dimensions makes it identical to
the gradient numerical differentiation gives. ``plateau="zero"`` (default) is the masked one,
the exact Jacobian; ``plateau="tangent"`` is the unmasked Proposition 4.5 gradient
``I - a a^T / ||a||^2`` (the projector onto the tangent plane of ``h = 0``, ``a`` the
minimum-norm subgradient of ``h`` at ``y``).
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import Batch, BatchSolution, StepMap
from bilevel.problems.base import Capabilities, Problem, check_array

__all__ = ["Projection"]

SET_NAMES = ("l2_sphere", "l2_ball", "l1_sphere", "l1_ball", "linf_ball", "simplex")
PLATEAU = ("zero", "tangent")
_PARALLEL_MIN = 200_000


def _kernel(name, X):
    from bilevel.solvers import projections

    return getattr(projections, name + ("_batched" if X.size >= _PARALLEL_MIN else "_rows"))


def check_radius(radius):
    """Return ``radius`` as a finite float > 0, or raise ValueError."""
    try:
        radius = float(radius)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"radius must be a positive number, got {radius!r}") from exc
    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be finite and > 0, got {radius}")
    return radius


def _torch_simplex(x, r):
    """``max(x - tau, 0)`` with ``sum = r``, by sorting (Duchi et al. 2008), in torch."""
    mu = torch.sort(x, dim=-1, descending=True).values
    css = torch.cumsum(mu, dim=-1)
    j = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device)
    rho = torch.sum(mu * j > css - r, dim=-1, keepdim=True)
    tau = (torch.gather(css, -1, rho - 1) - r) / rho.to(x.dtype)
    return torch.clamp(x - tau, min=0.0)


@register_problem
class Projection(Problem):
    r"""Euclidean projection ``y* = argmin_{u in C} 1/2 ||u - x||^2`` (last axis); theta ``x``.

    Parameters
    ----------
    set : {"l2_sphere", "l2_ball", "l1_sphere", "l1_ball", "linf_ball", "simplex"}
        The set ``C``, of radius ``radius`` (the simplex ``{u >= 0, sum u = radius}``).
    radius : float
        > 0.
    plateau : {"zero", "tangent"}
        The derivative on plateau dimensions (module docstring): "zero", the exact Jacobian
        (equal to finite differences away from kinks); "tangent", Gould et al.'s unmasked
        Proposition 4.5 gradient, the identity on the plateau dimensions of the l1 sets,
        ``I - 1 1^T / n`` on the simplex, ``I - s_M s_M^T / |M|`` on the clipped
        coordinates of the linf ball. The l2 sets have no plateau: both agree.

    Notes
    -----
    ``x`` has shape ``(..., n)``; ``y*`` has its shape. Solvers
    (:mod:`bilevel.solvers.projections`): closed forms for the l2 and linf sets, sorting for
    the l1 sets and the simplex (Duchi et al. 2008; Condat 2016), ``O(n log n)``, exact to
    round-off. The projection of ``0`` onto the l2 sphere is not unique: ``r 1 / sqrt(n)``
    is returned, with a zero gradient (margin 0). On the l1 sphere a zero coordinate of an
    ``x`` inside the ball takes the sign ``+``. ``Solution.info["margin"]`` is the smallest
    relative distance of a row to a kink (a coordinate at the threshold, the norm at the
    radius); :class:`bilevel.torch.Layer` warns with :class:`~bilevel.DegeneracyWarning`
    below ``1e-6``.

    Capabilities: ``analytic_vjp``, ``step`` (the projected gradient step
    ``P_C((y + x) / 2)``, written in torch, for ``fixed_point`` and ``unroll``) and
    ``energy`` (``1/2 ||u - x||^2``); the layer uses the batched numba kernels.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.Projection("l1_ball", radius=1.0)
    >>> prob.solve(np.array([2.0, 0.5, -0.1])).x
    array([1., 0., 0.])
    >>> bl.vjp(prob, np.array([1.0, 0.8, -0.1]), np.array([1.0, 0.0, 0.0]), "analytic")
    array([ 0.5, -0.5,  0. ])

    References
    ----------
    S. Gould, R. Hartley, D. Campbell, "Deep Declarative Networks", IEEE TPAMI 2021,
    section 5.2. J. Duchi, S. Shalev-Shwartz, Y. Singer, T. Chandra, "Efficient
    projections onto the l1-ball for learning in high dimensions", ICML 2008.
    L. Condat, "Fast projection onto the simplex and the l1 ball", Math. Program. 2016.
    """

    name = "projection"
    tol = 1e-10

    def __init__(self, set="l2_ball", radius=1.0, plateau="zero"):  # noqa: A002
        if set not in SET_NAMES:
            raise ValueError(f"set must be one of {', '.join(SET_NAMES)}, got {set!r}")
        if plateau not in PLATEAU:
            raise ValueError(f"plateau must be 'zero' or 'tangent', got {plateau!r}")
        self.set, self.radius, self.plateau = set, check_radius(radius), plateau
        self._code, self._plateau = SET_NAMES.index(set), PLATEAU.index(plateau)

    def __repr__(self):
        return f"Projection(set={self.set!r}, radius={self.radius}, plateau={self.plateau!r})"

    def offers(self):
        """Return the projector closed form, a projected gradient step, the energy, batches."""
        return Capabilities(analytic_vjp=self.analytic_vjp,
                            step=StepMap(self.step, start=self.init), energy=self.energy,
                            batch=Batch(theta_ndim=(1,), solve=self._solve_batch,
                                        analytic_vjp=self._vjp_batch))

    @classmethod
    def examples(cls):
        """Return the l1 ball away from its kinks (support {0, 1}, margin 0.3), an l2 sphere."""
        return [("projection-l1_ball", cls("l1_ball", 1.0), np.array([1.0, 0.8, -0.1])),
                ("projection-l2_sphere", cls("l2_sphere", 2.0), np.array([1.0, -2.0, 0.5]))]

    def check_theta(self, theta):
        """``x`` of shape ``(..., n)``, ``n >= 1``, finite."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError("Projection takes theta = x, one array (projected along its "
                                 "last axis)")
            theta = theta[0]
        x = check_array(theta, "x")
        if x.ndim < 1 or x.shape[-1] < 1:
            raise ValueError(f"x must have at least one dimension with >= 1 entries (the "
                             f"projected axis is the last), got shape {x.shape}")
        return (x,)

    def init(self, parts):
        """Start at the point itself (the solvers are direct; ``init`` is unused)."""
        return parts[0].copy()

    def _solve(self, theta, x0):
        x = theta[0] if isinstance(theta, tuple) else theta
        X = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        Y, tau, res = _kernel("proj", X)(X, self._code, self.radius)
        _, margins = _kernel("proj_vjp", X)(X, Y, self._code, self.radius, self._plateau, X)
        return Y.reshape(x.shape), 1, float(res.max()), {"margin": float(margins.min()),
                                                         "tau": tau.reshape(x.shape[:-1])}

    def project(self, x):
        """Project ``x`` in torch (sorting for the l1 sets and the simplex), differentiably."""
        r = self.radius
        if self.set in ("l2_sphere", "l2_ball"):
            nx = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            out = r * x / nx
            return out if self.set == "l2_sphere" else torch.where(nx > r, out, x)
        if self.set == "linf_ball":
            return torch.clamp(x, -r, r)
        if self.set == "simplex":
            return _torch_simplex(x, r)
        sign = torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))
        out = sign * _torch_simplex(x.abs(), r)
        if self.set == "l1_sphere":
            return out
        return torch.where(x.abs().sum(dim=-1, keepdim=True) > r, out, x)

    def step(self, y, theta):
        """Projected gradient step ``P_C(y - (y - x)/2) = P_C((y + x)/2)``; fixed point ``y*``.

        Its Jacobians at ``y*`` are half the projection's Jacobian at the midpoint, so that
        :class:`~bilevel.strategies.FixedPoint` and ``Unroll`` recover ``J`` through torch's
        own differentiation of :meth:`project`: an independent check of ``analytic``.
        """
        x = theta[0] if isinstance(theta, tuple) else theta
        return self.project(0.5 * (y + x))

    def energy(self, y, theta):
        """``1/2 ||u - x||^2`` (the set is the constraint, not part of the energy)."""
        x = theta[0] if isinstance(theta, tuple) else theta
        return 0.5 * torch.sum((y - x) ** 2)

    def analytic_vjp(self, solution, v):
        """``J v`` with the Jacobian of the module docstring (symmetric), row by row."""
        x = solution.theta[0] if isinstance(solution.theta, tuple) else solution.theta
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[-1]
        G, _ = self._rows_vjp(np.ascontiguousarray(x.reshape(-1, n)),
                              np.ascontiguousarray(solution.x.reshape(-1, n)),
                              np.ascontiguousarray(np.asarray(v, np.float64).reshape(-1, n)))
        return (G[0].reshape(x.shape),)

    # batched kernels for bl.torch.Layer ------------------------------------------------
    def _solve_batch(self, X):
        """Project every row of ``X`` (b, n)."""
        return BatchSolution(x=_kernel("proj", X)(X, self._code, self.radius)[0], parts=(X,))

    def _vjp_batch(self, batch, V):
        """Exact (or, ``plateau="tangent"``, Proposition 4.5) VJPs: ``((G,), margins)``."""
        return self._rows_vjp(batch.parts[0], batch.x, V)

    def _rows_vjp(self, X, Y, V):
        G, margins = _kernel("proj_vjp", X)(X, Y, self._code, self.radius, self._plateau, V)
        return (G,), margins
