r"""A user's smooth energy plus ready non-smooth terms: ``E = f(x, theta) + sum_k g_k(x)``.

.. math:: x^*(\theta) = \arg\min_x f(x, \theta) + \sum_k g_k(x; w_k), \qquad
          x^* = T_t(x^*) = \operatorname{prox}_{t g}\big(x^* - t \nabla_x f(x^*, \theta)\big)

``f`` is written in torch; the terms come from :mod:`bilevel.prox` (their weights constants
or parts of theta). Solved by accelerated proximal gradient with backtracking and gradient
restart (Beck and Teboulle 2009; O'Donoghue and Candes 2015), then semismooth Newton steps on
the fixed-point residual ``x - T_t(x)`` once the active manifold is identified (exact to
round-off), stopping on that residual relative to the problem's own scale.

The derivative on the active manifold needs only the prox's Jacobian ``P`` at
``z* = x* - t grad f(x*)``: symmetric with eigenvalues in ``[0, 1]``, ``P = B D B^T`` on its
range. Differentiating the fixed point and restricting to ``range(P)`` (Vaiter et al. 2017;
Liang, Fadili, Peyre 2014),

.. math:: H_M = B^\top \nabla^2_{xx} f\, B + (D^{-1} - I)/t, \qquad
          H_M\,dz = -B^\top \partial_\theta \nabla_x f\, d\theta
                    + \tfrac1t D^{-1} B^\top \partial_w \operatorname{prox}\, dw,

``dx* = B dz``: the curvature of a term on its manifold is ``(D^{-1} - I)/t`` (zero for
polyhedral terms, where ``P`` is a projector), whatever the step ``t``.
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._autograd import pullback, scalar_tensor
from bilevel._registry import register_problem
from bilevel._types import Manifold, Mirror, StepMap, as_tuple, like_structure
from bilevel.problems.base import Capabilities, Problem, check_array
from bilevel.problems.custom import _check_knobs, _check_theta_ndim, _check_theta_parts, _user_call
from bilevel.problems.kkt import KKT
from bilevel.problems.manifold import restricted_solver

__all__ = ["Composite"]

# Pairs of terms whose prox of the sum is the composition of their proxes, in this order:
# soft-thresholding then clipping or the group shrinkage (the sparse group lasso), TV then
# soft-thresholding (the fused lasso: Friedman et al. 2007).
_COMPOSABLE = {("L1", "NonNegative"), ("L1", "Box"), ("L1", "GroupL1"), ("TV1D", "L1")}
# Eigenvalues of the prox Jacobian above this span the manifold's tangent space.
_RANGE_TOL = 1e-9
# Largest x for the dense prox Jacobian and Hessian (Newton polish, manifold).
_DENSE_MAX = 3000
# FISTA's fixed-point residual below which semismooth Newton steps are tried (a failed try
# waits for FISTA to gain a digit).
_POLISH_FROM = 1e-2
# Backtracking's allowance for round-off in the sufficient-decrease test.
_ROUNDOFF = 1e-13


def _order(terms):
    """Return the proxes in the order whose composition is the prox of the sum (or raise)."""
    if len(terms) == 1:
        return list(terms)
    names = [type(t).__name__ for t in terms]
    if len(terms) == 2:
        for first, second in ((0, 1), (1, 0)):
            pair = (names[first], names[second])
            if pair in _COMPOSABLE and (pair != ("L1", "Box") or _box_holds_zero(
                    terms[second])):
                return [terms[first], terms[second]]
    raise ValueError(f"the prox of the sum {' + '.join(names)} is not known in closed form; "
                     f"Composite combines one term, or a pair whose proxes compose: "
                     f"{sorted(_COMPOSABLE)} (L1 with a Box containing 0)")


def _dense_jacobian(out, inputs):
    """Return ``d out / d inputs`` as a dense (m, n) array.

    One batched backward pass (vmap), or row by row where an operation has no batching rule
    (the numba TV proxes).
    """
    m, n = out.numel(), inputs.numel()
    flat = out.reshape(-1)
    if not flat.requires_grad:
        return np.zeros((m, n))
    try:
        (rows,) = torch.autograd.grad(flat, inputs, torch.eye(m, dtype=flat.dtype),
                                      retain_graph=True, is_grads_batched=True,
                                      allow_unused=True)
    except RuntimeError:
        rows = None
        grads = [torch.autograd.grad(flat[i], inputs, retain_graph=True, allow_unused=True)[0]
                 for i in range(m)]
        return np.stack([np.zeros(n) if r is None else r.reshape(-1).numpy() for r in grads])
    if rows is None:
        return np.zeros((m, n))
    return rows.reshape(m, n).numpy()


def _box_holds_zero(box):
    return bool(np.all(box.lo <= 0) and np.all(box.hi >= 0))


@register_problem
class Composite(Problem):
    r"""``E(x, theta) = smooth(x, theta) + sum_k g_k(x)``, with terms from :mod:`bilevel.prox`.

    Parameters
    ----------
    smooth : callable
        ``smooth(x, theta) -> scalar tensor``, differentiable (twice, for the manifold and
        the Newton polish); ``x`` is a float64 tensor shaped like ``x0``, theta a tensor or
        a tuple of tensors as passed to ``solve``.
    terms : Term or sequence of Term
        One term of :mod:`bilevel.prox`, or a pair whose proxes compose (``L1`` with
        ``NonNegative``, a ``Box`` containing 0 or ``GroupL1``; ``TV1D`` with ``L1``).
    x0 : array_like
        Starting point; fixes the shape of ``x``.
    step_size : float, optional
        A step ``t < 2 / L`` (``L`` the Lipschitz constant of ``grad_x f``). Given, the
        problem offers the prox-gradient step map (``unroll``, ``fixed_point``) and, for a
        single set term with a Bregman view, its mirror (``bregman``); the solver starts
        its backtracking from it.
    tol : float
        Tolerance on the fixed-point residual ``||x - T_t(x)||_inf`` relative to
        ``max(||x||_inf, ||x - t grad f||_inf)``.
    max_iter : int
        Accelerated proximal gradient iterations.
    theta_ndim : tuple of int, optional
        Dimensions of one instance's theta parts, for batches in
        :class:`bilevel.torch.Layer`.

    Notes
    -----
    Capabilities: ``manifold`` (from the prox Jacobian, module docstring), ``energy``,
    ``step`` with ``step_size``, ``constraints`` when every term is a set with a smooth
    description (``NonNegative``, ``Box``, ``Simplex``, ``L2Ball``, ``LinfBall``), ``mirror``
    for one such term with ``step_size``, ``batch`` with ``theta_ndim``.
    ``Solution.info`` holds ``step`` (the final ``t``), ``newton`` (polish steps taken) and
    ``fista`` (accelerated iterations).

    Examples
    --------
    >>> import numpy as np, torch, bilevel as bl
    >>> y = torch.tensor([3.0, -0.2, 1.0], dtype=torch.float64)
    >>> prob = bl.problems.Composite(lambda x, t: 0.5 * ((x - y) ** 2).sum(),
    ...                              bl.prox.L1(weight_part=0), np.zeros(3))
    >>> prob.solve(np.asarray(0.5)).x                  # soft-thresholding of y at 0.5
    array([ 2.5, -0. ,  0.5])
    """

    name = "composite"

    def __init__(self, smooth, terms, x0, step_size=None, tol=1e-12, max_iter=20000,
                 theta_ndim=None):
        from bilevel.prox import Term

        if not callable(smooth):
            raise TypeError(f"smooth must be callable smooth(x, theta), got {smooth!r}")
        terms = [terms] if isinstance(terms, Term) else list(terms)
        if not terms or not all(isinstance(t, Term) for t in terms):
            raise TypeError("terms must be one or two terms of bilevel.prox (e.g. "
                            "bl.prox.L1(weight_part=0)), got " + repr(terms))
        self._smooth, self.terms = smooth, terms
        self._prox_order = _order(terms)
        self.x0 = check_array(x0, "x0")
        self.step_size, self.tol, self.max_iter = _check_knobs(step_size, tol, max_iter)
        self._batch = _check_theta_ndim(theta_ndim)

    def __repr__(self):
        return f"Composite(terms={self.terms!r}, step_size={self.step_size})"

    # capabilities -----------------------------------------------------------------------
    def offers(self):
        """Return the manifold, the energy, and the step map, KKT and mirror where they exist."""
        why_not = {
            "optimality": "the terms are not smooth: no optimality residual (the active "
                          "manifold and the prox-gradient fixed point differentiate it)",
            "analytic_vjp": "a user's energy has no closed-form solution map",
            "straight_through": "x* is not a piecewise-constant map shaped like theta",
            "dual": "the conjugate of a user's torch energy is not available (the envelope "
                    "theorem gives the value's gradient)"}
        probe = torch.zeros(self.x0.shape, dtype=torch.float64)
        descriptions = [t.constraints(probe) if t.is_set else None for t in self.terms]
        kkt = None
        if all(d is not None for d in descriptions):
            has_eq = any(d[0] is not None for d in descriptions)
            affine = all(type(t).__name__ != "L2Ball" for t in self.terms)
            kkt = KKT(self.smooth, eq=self._eq if has_eq else None, ineq=self._ineq,
                      affine=affine)
        else:
            why_not["constraints"] = ("a penalty term (or the l1 ball's corners) has no "
                                      "smooth description as constraints")
        mirror = None
        if self.step_size is None:
            why_not["step"] = ("give step_size (< 2/L of grad f) for the prox-gradient step "
                               "map")
            why_not["mirror"] = "give step_size: the Bregman step is 1/L of grad f"
        elif len(self.terms) == 1 and self.terms[0].mirror_kind is not None:
            mirror = self.mirror
        else:
            why_not["mirror"] = ("no Bregman view: only one NonNegative, Box, Simplex, L2Ball "
                                 "or LinfBall term has a Legendre function on its set")
        return Capabilities(
            manifold=self.manifold, energy=self.energy, constraints=kkt, mirror=mirror,
            step=None if self.step_size is None else StepMap(self.step, start=self.init),
            batch=self._batch, why_not=why_not)

    @classmethod
    def examples(cls):
        """Return the Lasso, a non-negative least squares, the fused lasso and a group lasso."""
        from bilevel import prox
        from bilevel.datasets import regression_data

        X, y = regression_data(30, 3, seed=4)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

        def lasso(x, theta):
            r = Xt @ x - yt
            return 0.5 * (r @ r) / 30

        A = torch.tensor([[1.0, 0.2, 0.1], [0.3, 1.0, -0.2], [0.1, 0.4, 1.0], [0.5, 0.0, 0.3]],
                         dtype=torch.float64)

        def nnls(x, b):
            r = A @ x - b
            return 0.5 * (r @ r)

        def denoise(x, theta):
            return 0.5 * ((x - theta[0]) ** 2).sum()

        lipschitz = float(np.linalg.eigvalsh(X.T @ X / 30)[-1])
        return [
            ("composite-lasso", cls(lasso, prox.L1(weight_part=0), np.zeros(3),
                                    step_size=1.0 / lipschitz), np.asarray(0.1)),
            ("composite-nnls", cls(nnls, prox.NonNegative(), np.zeros(3), step_size=0.5),
             np.array([1.0, -1.0, 0.5, 0.2])),
            ("composite-fused", cls(denoise, [prox.TV1D(1, weight_part=1),
                                              prox.L1(weight=0.05)], np.zeros(5)),
             (np.array([0.0, 2.0, 2.1, 3.0, -1.0]), np.asarray(0.2))),
            ("composite-group", cls(lasso, prox.GroupL1([0, 0, 1], weight_part=0),
                                    np.zeros(3)), np.asarray(0.1)),
        ]

    def check_theta(self, theta):
        """Finite arrays (a bare array or a tuple); the weights it holds are >= 0."""
        parts = _check_theta_parts(theta)
        for term in self.terms:
            w = term.weight(parts)          # names a missing part
            if w is not None:
                try:
                    np.broadcast_shapes(np.shape(w), self.x0.shape)
                except ValueError:
                    raise ValueError(f"the weight of {term!r} (shape {np.shape(w)}) must be a "
                                     f"scalar or broadcast to x's shape {self.x0.shape}") \
                        from None
            term.check_weight(parts)
        return parts

    def init(self, parts):
        """``x0``."""
        return self.x0.copy()

    # torch maps -------------------------------------------------------------------------
    def smooth(self, x, theta):
        """``f(x, theta)``, checked to be a scalar tensor."""
        return scalar_tensor(_user_call(self._smooth, "smooth", x, theta), "smooth")

    def energy(self, x, theta):
        """``f(x, theta) + sum_k g_k(x; w_k)``."""
        parts = as_tuple(theta)
        return self.smooth(x, theta) + sum(t.value(x, t.weight(parts)) for t in self.terms)

    def _gradient(self, x, theta):
        """``grad_x f`` in torch, differentiable in x and theta."""
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_()
            (grad,) = torch.autograd.grad(self.smooth(x_in, theta), x_in, create_graph=True)
        return grad

    def prox(self, z, t, theta):
        """``prox_{t g}(z)``: the terms' proxes composed (module docstring)."""
        parts = as_tuple(theta)
        for term in self._prox_order:
            z = term.prox(z, t, term.weight(parts))
        return z

    def step(self, x, theta):
        """Take the prox-gradient step ``prox_{eta g}(x - eta grad f(x))`` (``step_size``)."""
        return self.prox(x - self.step_size * self._gradient(x, theta), self.step_size, theta)

    def _eq(self, x, theta):
        rows = [c for c in (t.constraints(x)[0] for t in self.terms) if c is not None]
        return torch.cat(rows)

    def _ineq(self, x, theta):
        rows = [c for c in (t.constraints(x)[1] for t in self.terms) if c is not None]
        return torch.cat(rows)

    # solve ------------------------------------------------------------------------------
    def _solve(self, theta, x0):
        theta_t = like_structure(tuple(torch.from_numpy(np.asarray(p, dtype=np.float64))
                                       for p in as_tuple(theta)), theta)
        shape = x0.shape

        def f_and_grad(x):
            x = x.detach().requires_grad_()
            value = self.smooth(x, theta_t)
            (grad,) = torch.autograd.grad(value, x)
            return float(value.detach()), grad

        def f_only(x):
            with torch.no_grad():
                return float(self.smooth(x, theta_t))

        def prox(z, t):
            with torch.no_grad():
                return self.prox(z, t, theta_t)

        def residual(x, t):
            g = f_and_grad(x)[1]
            z = x - t * g
            xp = prox(z, t)
            scale = max(float(x.abs().max()), float(z.abs().max()), 1e-300)
            return float((x - xp).abs().max()) / scale, xp

        L = 1.0 / self.step_size if self.step_size is not None else self._estimate_lipschitz(
            torch.from_numpy(x0.copy()), theta_t)
        x = prox(torch.from_numpy(x0.copy()).reshape(shape), 1.0 / L)
        y, momentum = x.clone(), 1.0
        f_y, g_y = f_and_grad(y)
        res, n_iter, newton, retry = np.inf, 0, 0, np.inf
        for n_iter in range(1, self.max_iter + 1):
            while True:
                x_new = prox(y - g_y / L, 1.0 / L)
                d = x_new - y
                f_new = f_only(x_new)
                bound = f_y + float(g_y.reshape(-1) @ d.reshape(-1)) + 0.5 * L * float(
                    (d * d).sum())
                if f_new <= bound + _ROUNDOFF * max(abs(f_y), 1e-300) or L > 1e300:
                    break
                L *= 2.0
            if float(((y - x_new) * (x_new - x)).sum()) > 0:      # gradient restart
                momentum = 1.0
                y = x_new.clone()
            else:
                nxt = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * momentum**2))
                y = x_new + ((momentum - 1.0) / nxt) * (x_new - x)
                momentum = nxt
            x = x_new
            if n_iter % 10 == 0 or n_iter == self.max_iter:
                res, xp = residual(x, 1.0 / L)
                if res <= self.tol:
                    x = xp
                    if newton == 0 and x.numel() <= _DENSE_MAX:   # to round-off
                        x, res, newton = self._polish(x, 1.0 / L, theta_t, residual)
                    break
                if res <= min(_POLISH_FROM, retry) and x.numel() <= _DENSE_MAX:
                    x, res, steps = self._polish(x, 1.0 / L, theta_t, residual)
                    newton += steps
                    if res <= self.tol:
                        break
                    retry = 0.1 * res         # try again once FISTA gains a digit
                    y, momentum = x.clone(), 1.0
            f_y, g_y = f_and_grad(y)
        res, xp = residual(x, 1.0 / L)
        return xp.numpy().reshape(shape), n_iter, res, {
            "step": 1.0 / L, "newton": newton, "fista": n_iter}

    def _estimate_lipschitz(self, x, theta):
        """``||grad^2 f(x)||_2`` by 20 power iterations on Hessian-vector products (>= 1e-12)."""
        x = x.detach().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.smooth(x, theta), x, create_graph=True)
        v = torch.randn(x.shape, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
        norm = 1.0
        for _ in range(20):
            v = v / max(float(torch.linalg.vector_norm(v)), 1e-300)
            (hv,) = torch.autograd.grad(g, x, v, retain_graph=True)
            norm = float(torch.linalg.vector_norm(hv))
            v = hv
        return max(norm, 1e-12)

    def _polish(self, x, t, theta, residual):
        """Semismooth Newton on ``x - T_t(x) = 0`` with the dense Jacobian ``I - P (I - t H)``."""
        res, _ = residual(x, t)
        steps = 0
        for _ in range(20):
            n = x.numel()
            P, H, fixed = self._jacobians(x, t, theta)
            J = np.eye(n) - P @ (np.eye(n) - t * H)
            delta = np.linalg.lstsq(J, -(x.numpy().ravel() - fixed), rcond=1e-13)[0]
            candidate = x + torch.from_numpy(delta.reshape(x.shape))
            new_res, stepped = residual(candidate, t)
            if new_res > res:       # a wrong active set: one prox-gradient step corrects it
                candidate = stepped
                new_res, _ = residual(candidate, t)
            if new_res > res:                 # never worse
                break
            halved = new_res < 0.5 * res
            x, res, steps = candidate, new_res, steps + 1
            if res <= 1e-3 * self.tol or not halved:
                break
        return x, res, steps

    def _jacobians(self, x, t, theta):
        """``(P, H, T_t(x))``: the prox Jacobian at ``x - t grad f``, the Hessian of f, dense."""
        x_t = x.detach().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.smooth(x_t, theta), x_t, create_graph=True)
            H = _dense_jacobian(g, x_t)
            z = (x_t - t * g).detach().requires_grad_()
            out = self.prox(z, t, theta)
            P = _dense_jacobian(out, z)
        return 0.5 * (P + P.T), 0.5 * (H + H.T), out.detach().numpy().ravel()

    # structure --------------------------------------------------------------------------
    def manifold(self, solution):
        """Return the active manifold from the prox Jacobian at ``z* = x* - t grad f(x*)``.

        ``B`` spans the range of ``P``, ``H_M = B^T H B + (D^{-1} - I)/t`` (module
        docstring); the margin is the smallest of the terms' margins at their prox inputs.
        """
        t = float(solution.info.get("step", self.step_size or 1.0))
        parts = tuple(torch.tensor(np.asarray(p, dtype=np.float64), requires_grad=True)
                      for p in as_tuple(solution.theta))
        theta = like_structure(parts, solution.theta)
        x = torch.from_numpy(np.asarray(solution.x, dtype=np.float64))
        P, H, _ = self._jacobians(x, t, theta)
        d, V = np.linalg.eigh(P)
        keep = d > _RANGE_TOL
        B, D = V[:, keep], d[keep]
        k = int(keep.sum())
        HM = B.T @ H @ B + np.diag((1.0 / D - 1.0) / t)
        solve = restricted_solver(0.5 * (HM + HM.T), f"the active manifold (dimension {k})",
                                  "Add a smooth strongly convex term, or use "
                                  "finite_difference.")
        x_g = x.clone().requires_grad_()
        with torch.enable_grad():
            grad = self._gradient(x_g, theta)                 # depends on theta through f
            z = (x - t * grad.detach()).requires_grad_()
            prox_out = self.prox(z, t, theta)                 # depends on the weights
        margin = self._margin(z.detach(), t, theta)

        def theta_vjp(u):
            y = B @ np.asarray(u, dtype=np.float64)
            from_f = pullback(grad, parts, y.reshape(x.shape), retain_graph=True)
            from_w = pullback(prox_out, parts, (B @ (np.asarray(u) / D)).reshape(x.shape),
                              retain_graph=True)
            return tuple(a - b / t for a, b in zip(from_f, from_w))

        def theta_jvp(dtheta):
            d_parts = tuple(torch.from_numpy(np.broadcast_to(np.asarray(v, np.float64),
                                                             p.shape).copy())
                            for v, p in zip(as_tuple(dtheta), parts))
            g_dot = self._directional(grad, parts, d_parts)
            q_dot = self._directional(prox_out, parts, d_parts)
            return B.T @ g_dot - (B.T @ q_dot) / (D * t)

        return Manifold(kind="active manifold", dim=k, margin=margin,
                        restrict=lambda v: B.T @ np.asarray(v, dtype=np.float64).ravel(),
                        lift=lambda zv: (B @ zv).reshape(x.shape),
                        solve=solve, theta_vjp=theta_vjp, theta_jvp=theta_jvp,
                        info={"step": t, "eigenvalues": D})

    @staticmethod
    def _directional(out, parts, d_parts):
        """``(d out / d theta) . dtheta`` by the double-VJP trick (zeros where unused)."""
        out = out.reshape(-1)
        if not out.requires_grad:
            return np.zeros(out.numel())
        w = torch.zeros(out.numel(), dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            grads = torch.autograd.grad((out * w).sum(), parts, create_graph=True,
                                        allow_unused=True)
            total = sum((g * d).sum() for g, d in zip(grads, d_parts) if g is not None)
            if not torch.is_tensor(total) or not total.requires_grad:
                return np.zeros(out.numel())
            (jv,) = torch.autograd.grad(total, w, retain_graph=True)
        return jv.numpy()

    def _margin(self, z, t, theta):
        parts = as_tuple(theta)
        margin = np.inf
        with torch.no_grad():
            for term in self._prox_order:
                w = term.weight(parts)
                w = None if w is None else w.detach()
                margin = min(margin, term.margin(z, t, w))
                z = term.prox(z, t, w)
        return float(margin)

    def mirror(self, solution):
        """Return the Bregman proximal gradient method of the single set term (its mirror).

        In the mirror's canonical coordinates ``u`` (``x = to_mirror(u)``), ``u+ =
        grad psi*(grad psi(u) - tau grad_u f)``; ``tau = step_size / c`` with ``c`` the
        square of the map's scale (for the entropy, ``R = max(1, 2 max x*)``, the box
        ``x <= R`` its iterates stay in: relative smoothness, Bauschke, Bolte, Teboulle 2017).
        """
        term = self.terms[0]
        kind = term.mirror_kind
        parts = tuple(torch.from_numpy(np.asarray(p, dtype=np.float64))
                      for p in as_tuple(solution.theta))
        theta_fixed = like_structure(parts, solution.theta)
        shape = self.x0.shape
        if kind == "entropy":
            bound = max(1.0, 2.0 * float(np.max(solution.x, initial=0.0)))
            u0, tau = np.ones(shape), self.step_size / bound
        else:       # x = to_mirror(u) is affine with slope c: grad_u f has curvature c^2 L
            zero = torch.zeros(shape, dtype=torch.float64)
            c = float((term.to_mirror(zero + 1.0) - term.to_mirror(zero)).abs().max())
            u0 = np.full(shape, 1.0 / shape[-1]) if kind == "simplex" else np.zeros(shape)
            tau = self.step_size / c**2

        def gradient(u, theta):
            with torch.enable_grad():
                u_in = u if u.requires_grad else u.detach().requires_grad_()
                (g,) = torch.autograd.grad(self.smooth(term.to_mirror(u_in), theta), u_in,
                                           create_graph=True)
            return g

        return Mirror(kind=kind, scheme="gradient", start=(u0,), step_size=tau,
                      gradient=gradient, forward=self._mirror_forward(term, u0, theta_fixed),
                      output=lambda state: term.to_mirror(state[0]),
                      info={"method": "Bregman proximal gradient"})

    def _mirror_forward(self, term, u0, theta):
        """Return the mirror iteration from ``u0`` (NumPy mirror maps, torch ``grad f``)."""
        from bilevel.solvers import bregman as kernels

        code = kernels.KIND_CODES[term.mirror_kind]
        shape = u0.shape

        def gradient(u):
            u_t = torch.from_numpy(u.reshape(shape)).requires_grad_()
            with torch.enable_grad():
                (g,) = torch.autograd.grad(self.smooth(term.to_mirror(u_t), theta), u_t)
            return g.numpy().reshape(-1, shape[-1] if len(shape) else 1)

        def forward(n_steps, tol, tau, sigma):
            rows = (-1, shape[-1] if len(shape) else 1)
            u = np.ascontiguousarray(u0.reshape(rows), dtype=np.float64)
            w = kernels.mirror_dual(u, code)        # the iteration runs in mirror coordinates
            residual, taken = np.inf, 0
            while taken < n_steps:
                g = gradient(u)
                if tol >= 0 and taken % 10 == 0:     # the residual at the current iterate
                    residual = kernels.natural_residual(u, g, code)
                    if residual <= tol:
                        break
                w = w - tau * g
                u = kernels.mirror_primal(w.copy(), code)
                taken += 1
            residual = kernels.natural_residual(u, gradient(u), code)
            if not (np.all(np.isfinite(u)) and np.isfinite(residual)):
                residual = np.inf
            return (u.reshape(shape),), taken, float(residual)

        return forward
