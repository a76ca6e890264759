r"""The constraints capability: a KKT description of ``argmin f`` s.t. ``h = 0``, ``g <= 0``.

.. math:: x^*(\theta) = \arg\min_x f(x, \theta) \quad\text{s.t.}\quad
          h(x, \theta) = 0, \quad g(x, \theta) \le 0

With ``c = (h, g_A)`` the equalities and the active inequalities and multipliers
``mu = (nu, lam_A)``, ``lam_A >= 0``, the Lagrangian residual

.. math:: K(x, \mu, \theta) = \big(\nabla_x f + (\partial_x c)^\top \mu,\ c\big)

vanishes at the solution. It is built once, here, and shared: the constrained solvers'
Newton polish solves ``K = 0`` on a working set, :class:`~bilevel.strategies.Implicit`
solves the adjoint of its Jacobian ``[[H, A^T], [A, 0]]`` (Gould, Hartley, Campbell, "Deep
Declarative Networks", TPAMI 2021, Propositions 4.5-4.6), and the value gradient of
``p(theta) = min f`` is its theta-gradient at ``(x*, mu*)`` (the envelope theorem for
constrained problems).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from bilevel._autograd import envelope, pullback
from bilevel._types import ConvergenceWarning, Dual, KKTSystem, as_tuple, like_structure

__all__ = ["KKT", "least_squares_multipliers"]

# Stationarity ||grad f + A^T mu||_inf above this (relative to max(1, ||grad f||_inf)):
# x* is not a KKT point of the declared constraints, and the gradient is unreliable.
_KKT_TOL = 1e-6


def least_squares_multipliers(grad_f, J, p):
    """``argmin ||grad_f + J^T mu||`` with ``mu[p:] >= 0`` (the inequality multipliers).

    ``J`` stacks the ``p`` equality gradients, then the active inequalities'; bounded least
    squares (BVLS) when inequalities are present.
    """
    m = J.shape[0]
    if m == 0:
        return np.zeros(0)
    if m == p:
        return np.linalg.lstsq(J.T, -grad_f, rcond=None)[0]
    from scipy.optimize import lsq_linear

    lower = np.concatenate([np.full(p, -np.inf), np.zeros(m - p)])
    return lsq_linear(J.T, -grad_f, bounds=(lower, np.full(m, np.inf)), method="bvls",
                      tol=1e-14).x


def active_set(x, g, active_tol):
    """Inequalities with slack ``<= active_tol max(1, ||x||_inf)``."""
    return np.flatnonzero(g >= -active_tol * max(1.0, float(np.abs(x).max(initial=0.0))))


def _flat(t):
    """Return a constraint map's value as a 1-D tensor (empty for None)."""
    return torch.zeros(0, dtype=torch.float64) if t is None else t.reshape(-1)


class KKT:
    r"""The ``constraints`` capability: torch maps of ``f``, ``h``, ``g`` and their KKT system.

    Parameters
    ----------
    objective : callable
        ``(x, theta) -> f``, a scalar tensor.
    eq, ineq : callable, optional
        ``(x, theta) -> h`` and ``-> g``, tensors of the p equalities ``h = 0`` and q
        inequalities ``g <= 0`` (None: none).
    affine : bool
        ``h`` and ``g`` are affine in ``x`` with Jacobians independent of theta: the KKT
        system then needs no multipliers (``H = grad^2 f``, Gould et al.'s Corollary 4.9).

    Notes
    -----
    A solver that knows the multipliers puts ``nu`` (p,) and ``lam`` (q,) in
    ``Solution.info``; otherwise :meth:`system` recovers them by bounded least squares from
    ``grad f + (d_x c)^T mu = 0``.
    """

    def __init__(self, objective, eq=None, ineq=None, affine=False):
        self.objective, self.eq, self.ineq = objective, eq, ineq
        self.affine = bool(affine)

    def constraints(self, x, theta):
        """``(h, g)`` as 1-D tensors (empty when absent)."""
        h = None if self.eq is None else self.eq(x, theta)
        g = None if self.ineq is None else self.ineq(x, theta)
        return _flat(h), _flat(g)

    def residual(self, x, mu, theta, active):
        """``K(x, mu) = (grad_x f + (d_x c)^T mu, c)`` with ``c = (h, g[active])``, in torch.

        Differentiable in ``x``, ``mu`` and theta (built with ``create_graph``).
        """
        with torch.enable_grad():
            h, g = self.constraints(x, theta)
            c = torch.cat([h, g[torch.as_tensor(active, dtype=torch.long)]])
            lagrangian = self.objective(x, theta).reshape(()) + (mu * c).sum()
            (grad_l,) = torch.autograd.grad(lagrangian, x, create_graph=True)
        return torch.cat([grad_l.reshape(-1), c])

    def evaluate(self, x, theta):
        """``f, grad f, h, J_h, g, J_g`` at ``x`` (NumPy; ``x`` of any shape, flattened)."""
        x = torch.from_numpy(np.array(x, dtype=np.float64)).requires_grad_()
        n = x.numel()
        with torch.enable_grad():
            f = self.objective(x, theta).reshape(())
            (gf,) = torch.autograd.grad(f, x)
            out = [float(f.detach()), gf.numpy().ravel().copy()]
            for c in self.constraints(x, theta):
                if c.numel() == 0:
                    out += [np.zeros(0), np.zeros((0, n))]
                    continue
                rows = [torch.autograd.grad(c[i], x, retain_graph=True, allow_unused=True)[0]
                        for i in range(c.numel())]
                J = np.stack([np.zeros(n) if r is None else r.numpy().ravel() for r in rows])
                out += [c.detach().numpy().astype(np.float64).copy(), J]
        return out

    def multipliers(self, x, gf, h, Jh, g, Jg, active):
        """``(nu, lam, stationarity)``: least-squares multipliers on ``active``, ``lam`` (q,)."""
        J = np.vstack([Jh, Jg[active]])
        p = Jh.shape[0]
        mu = least_squares_multipliers(gf, J, p)
        lam = np.zeros(g.size)
        lam[active] = mu[p:]
        stationarity = float(np.abs(gf + J.T @ mu).max(initial=0.0))
        return mu[:p], lam, stationarity

    def newton_step(self, x, mu, theta, active):
        """One Newton step on ``K(x, mu) = 0`` restricted to ``active``: ``(dx, dmu)``.

        Solved in the least-squares sense (``rcond=1e-13``): rank-deficient working sets
        take the minimum-norm step.
        """
        x_t = torch.from_numpy(np.array(x, dtype=np.float64)).requires_grad_()
        mu_t = torch.from_numpy(np.asarray(mu, dtype=np.float64)).requires_grad_()
        K = self.residual(x_t, mu_t, theta, active)
        rows = [torch.autograd.grad(K[i], (x_t, mu_t), retain_graph=True, allow_unused=True)
                for i in range(K.numel())]
        jac = np.stack([np.concatenate([
            (np.zeros(x_t.numel()) if gx is None else gx.numpy().ravel()),
            (np.zeros(mu_t.numel()) if gm is None else gm.numpy().ravel())])
            for gx, gm in rows])
        step = np.linalg.lstsq(jac, -K.detach().numpy(), rcond=1e-13)[0]
        n = x_t.numel()
        return step[:n].reshape(np.shape(x)), step[n:]

    def system(self, solution, active_tol=1e-9, multiplier_tol=1e-10):
        """Return the KKT system at ``solution``, for the adjoint solve of implicit differentiation.

        Parameters
        ----------
        solution : Solution
        active_tol : float
            An inequality is active when ``g_i(x*) >= -active_tol max(1, ||x*||_inf)``.
        multiplier_tol : float
            An active inequality is weakly active (a one-sided derivative) when its
            multiplier is ``<= multiplier_tol max(1, ||grad_x f||_inf)``.

        Returns
        -------
        KKTSystem
            Warns with :class:`~bilevel.ConvergenceWarning` when ``x*`` is not a KKT point
            of the declared constraints (the gradient is then unreliable).
        """
        x = np.asarray(solution.x, dtype=np.float64)
        parts = tuple(torch.tensor(np.asarray(t, dtype=np.float64), requires_grad=True)
                      for t in as_tuple(solution.theta))
        theta = like_structure(parts, solution.theta)
        f, gf, h, Jh, g, Jg = self.evaluate(x, theta)
        p, q = h.size, g.size
        active = active_set(x, g, active_tol)
        nu_s, lam_s = solution.info.get("nu"), solution.info.get("lam")
        from_solver = ((p == 0 or (nu_s is not None and np.size(nu_s) == p))
                       and (q == 0 or (lam_s is not None and np.size(lam_s) == q)))
        J = np.vstack([Jh, Jg[active]])
        if from_solver:
            nu = np.asarray(nu_s, dtype=np.float64).ravel() if p else np.zeros(0)
            lam = np.asarray(lam_s, dtype=np.float64).ravel() if q else np.zeros(0)
            mu = np.concatenate([nu, lam[active]])
            source = "solver"
        else:
            nu, lam, _ = self.multipliers(x, gf, h, Jh, g, Jg, active)
            mu = np.concatenate([nu, lam[active]])
            source = "recovered"
        scale = max(1.0, float(np.abs(gf).max(initial=0.0)))
        stationarity = float(np.abs(gf + J.T @ mu).max(initial=0.0)) if x.size else 0.0
        if stationarity > _KKT_TOL * scale or np.any(mu[p:] < -_KKT_TOL * scale):
            warnings.warn(
                f"implicit: x* is not a KKT point of the declared constraints "
                f"(||grad f + A^T mu||_inf = {stationarity:.1e}, min multiplier of an active "
                f"inequality {mu[p:].min(initial=0.0):.1e}); the gradient is unreliable. "
                "Solve more accurately, or check that objective/eq/ineq match the solver's "
                "problem", ConvergenceWarning, stacklevel=4)
        weak = active[lam[active] <= multiplier_tol * scale]
        x_t = torch.tensor(x, requires_grad=True)
        mu_t = torch.tensor(np.zeros(mu.size) if self.affine else mu, requires_grad=True)
        K = self.residual(x_t, mu_t, theta, active)
        unknowns = (x_t, mu_t)

        def matvec(w):  # the KKT matrix is symmetric: K^T w = K w
            gx, gm = pullback(K, unknowns, w, retain_graph=True)
            return np.concatenate([gx.ravel(), gm.ravel()])

        def theta_vjp(w):
            return pullback(K, parts, w, retain_graph=True)

        multipliers = "not needed" if (self.affine and source == "recovered" and q == 0) \
            else source
        return KKTSystem(n_x=x.size, size=x.size + mu.size, matvec=matvec, theta_vjp=theta_vjp,
                         info={"active": active, "nu": nu, "lam": lam,
                               "multipliers": multipliers, "stationarity": stationarity,
                               "one_sided": bool(weak.size), "weakly_active": weak})

    def dual(self, solution):
        r"""Return the value gradient from the multipliers, ``grad_theta L(x*, nu*, lam*)``.

        For ``p(theta) = min f`` s.t. ``h = 0``, ``g <= 0`` the theta-gradient of the
        Lagrangian ``f + nu^T h + lam^T g`` at the KKT point (parameters may sit in the
        constraints), with ``Solution.info["nu"]`` and ``["lam"]``.
        """
        nu = np.asarray(solution.info.get("nu", np.zeros(0)), dtype=np.float64)
        lam = np.asarray(solution.info.get("lam", np.zeros(0)), dtype=np.float64)

        def lagrangian(x, theta):
            h, g = self.constraints(x, theta)
            value = self.objective(x, theta).reshape(())
            if nu.size:
                value = value + (torch.from_numpy(nu) * h).sum()
            if lam.size:
                value = value + (torch.from_numpy(lam) * g).sum()
            return value

        _, grad = envelope(lagrangian, solution)
        value, _ = envelope(self.objective, solution, gradient=False)
        return Dual(value=value, gradient=grad, y=np.concatenate([nu, lam]),
                    gap=float(solution.info.get("residual", 0.0)),
                    info={"method": "Lagrange multipliers"})
