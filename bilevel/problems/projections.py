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

The l2 sets, the linf ball and the simplex have smooth descriptions (``||u||^2 - r^2 <= 0``
or ``= 0``; ``-r <= u <= r``; ``u >= 0``, ``sum u = r``) whose multipliers are known in
closed form, so implicit differentiation of their KKT system applies; the l1 sets are
polytopes' faces (or their union) described only by the non-smooth ``||u||_1``.
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import Batch, BatchSolution, Dual, Manifold, Mirror, StepMap
from bilevel.problems.base import Capabilities, Problem, check_array, pick_kernel
from bilevel.problems.kkt import KKT

__all__ = ["Projection"]

SET_NAMES = ("l2_sphere", "l2_ball", "l1_sphere", "l1_ball", "linf_ball", "simplex")
PLATEAU = ("zero", "tangent")
_PARALLEL_MIN = 200_000
# Sets with a smooth constraint description (a KKT system), and those with a mirror kind
# whose Bregman iteration converges linearly to x* (the box and the simplex entropies).
_SMOOTH_SETS = ("l2_sphere", "l2_ball", "linf_ball", "simplex")
_MIRROR_KINDS = {"linf_ball": "box", "simplex": "simplex"}
# Why a set lacks a capability (Capabilities.why_not).
_STRAIGHT_THROUGH = ("the projection is continuous (away from x = 0 on the spheres) and "
                     "differentiable almost everywhere, with its exact Jacobian in closed form "
                     "(analytic): the identity backward is a baseline for discontinuous maps "
                     "(partitions, quantizers)")
_L1_NOT_SMOOTH = ("the l1 {what} is described only by ||u||_1 {rel} r, not differentiable where "
                  "a coordinate vanishes (x* lies on such a face): no smooth constraint for a "
                  "KKT system nor an optimality residual (partial_smoothness differentiates "
                  "the face)")
_CONSTRAINED = ("x* minimizes 1/2||u - x||^2 over the set, not freely: no unconstrained "
                "optimality residual (implicit differentiates the KKT system of constraints)")
_NO_MIRROR = {
    "l2_sphere": "the sphere is not convex and has an empty interior: no Legendre function "
                 "has it as its domain, so no Bregman method solves the projection",
    "l1_sphere": "the l1 sphere is not convex and has an empty interior: no Legendre "
                 "function has it as its domain, so no Bregman method solves the projection",
    "l2_ball": "the ball's Legendre function (the box entropy of the radius) has a metric "
               "atanh(|u|)/|u| that blows up tangentially at the sphere, where every x outside "
               "the ball projects: the Bregman iteration converges sublinearly there, and its "
               "unrolled derivative does not reach dx*/dx in practical step counts",
    "l1_ball": "no Legendre function on the cross-polytope ||u||_1 <= r has a closed-form "
               "mirror step (a Bregman method would run on a lifting u = r (w+ - w-) onto a "
               "(2n+1)-simplex, a different variable)",
}


def _why_not(name):
    """Why the projection onto set ``name`` lacks a capability."""
    reasons = {"straight_through": _STRAIGHT_THROUGH}
    if name in _SMOOTH_SETS:
        reasons["optimality"] = _CONSTRAINED
    else:
        text = _L1_NOT_SMOOTH.format(what=name.split("_")[1], rel="=" if "sphere" in name
                                     else "<=")
        reasons.update(optimality=text, constraints=text)
    if name not in _MIRROR_KINDS:
        reasons["mirror"] = _NO_MIRROR[name]
    return reasons


def _kernel(name, X):
    from bilevel.solvers import projections

    return pick_kernel(projections, name, X.size >= _PARALLEL_MIN)


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
    (:mod:`bilevel.solvers.projections`): closed forms for the l2 and linf sets, the
    threshold of Duchi et al. (2008) for the l1 sets and the simplex, found by Michelot's
    algorithm (Condat 2016; a few ``O(n)`` passes), exact to round-off. The projection of
    ``0`` onto the l2 sphere is not unique: ``r 1 / sqrt(n)`` is returned, with a zero
    gradient (margin 0). On the l1 sphere a zero coordinate of an
    ``x`` inside the ball takes the sign ``+``. ``Solution.info["margin"]`` is the smallest
    relative distance of a row to a kink (a coordinate at the threshold, the norm at the
    radius); :class:`bilevel.torch.Layer` warns with :class:`~bilevel.DegeneracyWarning`
    below ``1e-6``.

    Capabilities: ``analytic_vjp``, ``step`` (the projected gradient step
    ``P_C((y + x) / 2)``, written in torch, for ``fixed_point`` and ``unroll``), ``energy``
    (``1/2 ||u - x||^2``), ``manifold`` (the face ``y*`` lies on, for
    ``partial_smoothness``), ``dual`` (``x - y*``, the gradient of ``d_C(x)^2 / 2``);
    on the l2 sets, the linf ball and the simplex ``constraints`` (``||u||^2 - r^2 = 0``
    or ``<= 0``, ``-r <= u <= r``, ``u >= 0`` with ``sum u = r``, over every row; the
    multipliers, exact, in ``Solution.info["nu"]`` and ``["lam"]``) for ``implicit``; on
    the linf ball and the simplex ``mirror`` (the box and simplex entropies) for
    ``bregman``. ``capabilities.why_not`` gives the reasons for the others (the l1 sets
    have no smooth description). The layer uses the batched numba kernels.

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
        self._kkt = self._constraints()

    def __repr__(self):
        return f"Projection(set={self.set!r}, radius={self.radius}, plateau={self.plateau!r})"

    def offers(self):
        """Return the projector, a projected gradient step, E, the face, the dual, batches.

        With a smooth description of the set (l2 sets, linf ball, simplex) its KKT system
        (``constraints``); with the box or simplex entropy a Bregman method (``mirror``).
        """
        return Capabilities(
            analytic_vjp=self.analytic_vjp, step=StepMap(self.step, start=self.init),
            energy=self.energy, constraints=self._kkt, manifold=self.manifold, dual=self.dual,
            mirror=self.mirror if self.set in _MIRROR_KINDS else None,
            batch=Batch(theta_ndim=(1,), solve=self._solve_batch,
                        analytic_vjp=self._vjp_batch, manifold_vjp=self._manifold_vjp_batch),
            why_not=_why_not(self.set))

    @classmethod
    def examples(cls):
        """Return every set at a point away from its kinks (margins >= 0.25).

        The l1 ball (support {0, 1}), the l1 sphere from inside, the l2 sphere, the l2 ball
        on two rows (one outside, one inside), the linf ball (two clipped coordinates), the
        simplex (support {0, 3}).
        """
        return [("projection-l1_ball", cls("l1_ball", 1.0), np.array([1.0, 0.8, -0.1])),
                ("projection-l1_sphere", cls("l1_sphere", 1.0), np.array([0.3, -0.2, 0.1])),
                ("projection-l2_sphere", cls("l2_sphere", 2.0), np.array([1.0, -2.0, 0.5])),
                ("projection-l2_ball", cls("l2_ball", 1.0),
                 np.array([[1.5, -1.0, 0.5], [0.3, 0.2, -0.4]])),
                ("projection-linf_ball", cls("linf_ball", 1.0),
                 np.array([1.4, -0.3, -2.0, 0.6])),
                ("projection-simplex", cls("simplex", 1.0), np.array([0.9, 0.0, -0.5, 0.6]))]

    check_batch = Problem.check_batch_finite    # check_theta: shapes and finiteness only

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
        x = _point(theta)
        X = _rows(x)
        Y, tau, res = _kernel("proj", X)(X, self._code, self.radius)
        _, margins = _kernel("proj_vjp", X)(X, Y, self._code, self.radius, self._plateau, X)
        info = {"margin": float(margins.min()), "tau": tau.reshape(x.shape[:-1])}
        if self._kkt is not None:
            info.update(self._multipliers(X, tau))
        return Y.reshape(x.shape), 1, float(res.max()), info

    # the constraints capability -------------------------------------------------------
    def _constraints(self):
        """Return the KKT description of the set, over every row (None for the l1 sets)."""
        if self.set == "l2_sphere":
            return KKT(self.energy, eq=self._norm_gap)
        if self.set == "l2_ball":
            return KKT(self.energy, ineq=self._norm_gap)
        if self.set == "linf_ball":
            return KKT(self.energy, ineq=self._box, affine=True)
        if self.set == "simplex":
            return KKT(self.energy, eq=self._total, ineq=self._nonnegative, affine=True)
        return None

    def _norm_gap(self, u, theta):
        """``||u||^2 - r^2`` of every row (the l2 sphere ``= 0``, the l2 ball ``<= 0``)."""
        return (u * u).sum(dim=-1) - self.radius**2

    def _box(self, u, theta):
        """``(u - r, -u - r)`` of every row (``<= 0``: the linf ball)."""
        return torch.cat([u - self.radius, -u - self.radius], dim=-1)

    def _total(self, u, theta):
        """``sum u - r`` of every row (the simplex's equality)."""
        return u.sum(dim=-1) - self.radius

    def _nonnegative(self, u, theta):
        """``-u`` (the simplex's ``u >= 0``)."""
        return -u

    def _multipliers(self, X, tau):
        """Exact multipliers ``nu`` (equalities), ``lam`` (inequalities), in the KKT's order.

        From ``u - x + (d_u c)^T mu = 0``: on the l2 sets ``1 + 2 mu = ||x|| / r``; on the
        linf ball ``lam = (x - r)_+, (-r - x)_+``; on the simplex ``nu = tau`` (the
        threshold) and ``lam = (tau - x)_+``.
        """
        r, none = self.radius, np.zeros(0)
        if self.set in ("l2_sphere", "l2_ball"):
            mu = 0.5 * (tau / r - 1.0)            # tau = ||x||, taken without overflow
            return ({"nu": mu, "lam": none} if self.set == "l2_sphere"
                    else {"nu": none, "lam": np.maximum(mu, 0.0)})
        if self.set == "linf_ball":
            return {"nu": none, "lam": np.concatenate([np.maximum(X - r, 0.0),
                                                       np.maximum(-r - X, 0.0)], axis=1).ravel()}
        return {"nu": tau.copy(), "lam": np.maximum(tau[:, None] - X, 0.0).ravel()}

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
        x = np.asarray(_point(solution.theta), dtype=np.float64)
        G, _ = self._rows_vjp(_rows(x), _rows(solution.x), _rows(np.asarray(v, np.float64)))
        return (G[0].reshape(x.shape),)

    def manifold(self, solution):
        r"""Return the face of the set that ``y*`` lies on, in full coordinates.

        Every row's ``y*`` minimizes ``1/2 ||u - x||^2`` on a manifold ``M`` near which the
        set is smooth: the sphere (the l2 sets outside the ball), the signed support's face
        ``{u_S = s_S |u_S|, s^T u_S = r}`` (l1 sets), the free coordinates (linf ball), the
        support's face ``{u_{S^c} = 0, 1^T u_S = r}`` (simplex), or the whole space (inside
        a ball). With ``P_T`` the projector onto its tangent space the restricted (Riemannian)
        Hessian is ``(||x|| / r) P_T`` on the spheres and ``P_T`` on the flat faces, so
        ``H_M^{-1}`` is the exact Jacobian (``plateau="zero"``): ``solve`` applies it, and
        ``d_x grad_M E = -P_T``.
        """
        x = np.asarray(_point(solution.theta), dtype=np.float64)
        X, Y = _rows(x), _rows(solution.x)
        kernel = _kernel("proj_vjp", X)
        _, margins = kernel(X, Y, self._code, self.radius, 0, X)
        dims = self._face_dims(X, Y)

        def solve(b, pinv=False):
            G, _ = kernel(X, Y, self._code, self.radius, 0, _rows(np.reshape(b, x.shape)))
            return G.ravel()

        return Manifold(kind=f"face of the {self.set}", dim=int(dims.sum()),
                        margin=float(margins.min()),
                        restrict=lambda v: np.asarray(v, dtype=np.float64).ravel(),
                        lift=lambda z: np.asarray(z, dtype=np.float64).reshape(x.shape),
                        solve=solve,
                        theta_vjp=lambda u: (-np.asarray(u, dtype=np.float64).reshape(x.shape),),
                        theta_jvp=lambda dtheta: -np.asarray(dtheta[0], np.float64).ravel(),
                        info={"face_dims": dims.reshape(x.shape[:-1])})

    def _face_dims(self, X, Y):
        """Dimension of each row's face (the tangent space of :meth:`manifold`)."""
        n = X.shape[1]
        r = self.radius
        if self.set in ("l2_sphere", "l2_ball"):
            inside = (np.linalg.norm(X, axis=1) <= r) & (self.set == "l2_ball")
            return np.where(inside, n, n - 1)
        if self.set == "linf_ball":
            return n - np.sum(np.abs(X) > r, axis=1)
        support = np.sum(Y != 0.0, axis=1) - 1
        if self.set == "l1_ball":
            return np.where(np.abs(X).sum(axis=1) <= r, n, support)
        return support

    def dual(self, solution):
        r"""Return the value's gradient ``grad (1/2) d_C(x)^2 = x - P_C(x)`` (Moreau).

        ``p(x) = min_{u in C} 1/2 ||u - x||^2`` is jointly convex in ``(u, x)`` on the convex
        sets, and ``x - y*`` is the solution of its Fenchel dual
        ``max_y <x, y> - ||y||^2/2 - sigma_C(y)``; on the spheres it is the gradient of
        ``d_C^2 / 2`` wherever the projection is unique (``x != 0``).
        """
        x = np.asarray(_point(solution.theta), dtype=np.float64)
        y = x - solution.x
        return Dual(value=0.5 * float(np.sum(y * y)), gradient=y.copy(), y=y,
                    gap=float(solution.info.get("residual", 0.0)),
                    info={"method": "Moreau: x - P_C(x)"})

    def mirror(self, solution):
        r"""Bregman projected gradient in ``w = u / r`` (linf ball: box; simplex: entropy).

        ``f(w) = 1/2 ||r w - x||^2`` over the unit box ``[-1, 1]^n`` or the unit simplex, each
        row: ``w+ = M(w, tau r (r w - x))`` with the box mirror ``tanh(atanh(w) - g)`` or the
        softmax update, ``tau = 1 / r^2`` (``f`` is ``r^2``-smooth relative to both
        entropies, whose Hessians are ``>= I`` on the unit sets), from ``0`` or the
        barycentre. Both converge linearly: clipped (or zero) coordinates reach the face
        geometrically, the others are interior. ``u = r w``.
        """
        from bilevel.solvers import bregman as kernels

        x = np.asarray(_point(solution.theta), dtype=np.float64)
        r, kind = self.radius, _MIRROR_KINDS[self.set]
        code = kernels.KIND_CODES[kind]
        X = _rows(x)
        w0 = np.zeros(x.shape) if kind == "box" else np.full(x.shape, 1.0 / x.shape[-1])

        def forward(n_steps, tol, tau, sigma):
            W = _rows(w0).copy()
            D = np.arctanh(W) if kind == "box" else np.log(W)   # mirror coordinates
            k = 0
            while True:
                G = r * (r * W - X)
                residual = kernels.natural_residual(W, G, code)
                if residual <= tol or k >= n_steps:
                    break
                D = D - tau * G
                if kind == "box":
                    W = np.tanh(D)
                else:
                    D = D - (D.max(axis=1, keepdims=True) + np.log(np.exp(
                        D - D.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)))
                    W = np.exp(D)
                k += 1
            return (W.reshape(x.shape),), k, residual

        return Mirror(kind=kind, scheme="gradient", start=(w0,), step_size=1.0 / r**2,
                      gradient=lambda w, theta: r * (r * w - _point(theta)), forward=forward,
                      output=lambda state: r * state[0],
                      info={"method": f"Bregman projected gradient ({kind} mirror)"})

    # batched kernels for bl.torch.Layer ------------------------------------------------
    def _solve_batch(self, X):
        """Project every row of ``X`` (b, n)."""
        return BatchSolution(x=_kernel("proj", X)(X, self._code, self.radius)[0], parts=(X,))

    def _vjp_batch(self, batch, V):
        """Exact (or, ``plateau="tangent"``, Proposition 4.5) VJPs: ``((G,), margins)``."""
        return self._rows_vjp(batch.parts[0], batch.x, V)

    def _manifold_vjp_batch(self, batch, V, pinv=False):
        """Exact VJPs on every row's face (``plateau="zero"``; ``pinv`` is moot)."""
        X = batch.parts[0]
        G, margins = _kernel("proj_vjp", X)(X, batch.x, self._code, self.radius, 0, V)
        return (G,), margins

    def _rows_vjp(self, X, Y, V):
        G, margins = _kernel("proj_vjp", X)(X, Y, self._code, self.radius, self._plateau, V)
        return (G,), margins


def _point(theta):
    """Return the point ``x`` (theta bare or a 1-tuple)."""
    return theta[0] if isinstance(theta, (tuple, list)) else theta


def _rows(a):
    """Return ``a`` as C-contiguous rows ``(b, n)`` of its last axis."""
    a = np.asarray(a, dtype=np.float64)
    return np.ascontiguousarray(a.reshape(-1, a.shape[-1]))
