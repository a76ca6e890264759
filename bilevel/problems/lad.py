r"""Linear programs whose optimal value is differentiated through the dual solution.

.. math:: p(u) = \min_x \|Ax - u\|_1
          = \max_{y}\ \{\langle u, y\rangle : A^\top y = 0,\ \|y\|_\infty \le 1\},
          \qquad \nabla p(u) = y^*,

and, in standard form, ``p(b, c) = min {c^T x : A x = b, x >= 0}`` with
``grad_b p = y*`` (the equality multipliers) and ``grad_c p = x*``. Neither energy is
strongly convex in ``x``: the minimizer may be a face, but the value is differentiable
wherever the dual solution is unique (Mehmood and Ochs, "Differentiating the value
function by using convex duality", AISTATS 2021).
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import Batch, Dual, as_tuple
from bilevel.problems.base import Capabilities, Problem, check_array
from bilevel.problems.kkt import KKT

__all__ = ["LeastAbsoluteDeviation", "LinearProgram"]

# Residuals below this (relative to max(1, |u|_inf)) count as interpolated rows.
_ZERO_TOL = 1e-9

_LAD_WHY_NOT = {
    "manifold": "at a vertex the active manifold {x : A_Z x = u_Z} is a point that moves with "
                "u (an affine manifold whose offset depends on theta, which Manifold does not "
                "describe); analytic differentiates it: dx*/du = A_Z^{-1}",
    "optimality": "||A x - u||_1 is not differentiable where residuals vanish (n of them do at "
                  "x*) and not strongly convex: no optimality residual; the linear program's "
                  "KKT system lives in (x, t), not in x",
    "step": "no step map in x alone: the prox of ||A x - u||_1 has no closed form (A is not "
            "orthogonal) and a subgradient step has no fixed point; first-order methods reach "
            "the vertex only through a dual variable (a primal-dual state (x, y))",
    "mirror": "the energy is linear in x on each piece, with no smooth part for a Bregman "
              "proximal-gradient step; a primal-dual method carries the dual y (a box mirror "
              "on |y| <= 1), whose convergence on a linear saddle point is guaranteed only "
              "ergodically (Chambolle and Pock 2016), not for the unrolled last iterate",
    "straight_through": "theta is u (m,) and x* the fit (n < m): no identity backward",
    "energy": "||A x - u||_1 has no gradient in u where a residual vanishes (at x*, n do): the "
              "envelope theorem does not give the value's gradient; the dual solution does "
              "(value_function)",
}
_LP_WHY_NOT = {
    "optimality": "a linear objective: stationarity c + A^T nu = lam needs the multipliers of "
                  "A x = b and x >= 0 (the KKT system of constraints, implicit), no residual "
                  "in x alone",
    "manifold": "the active manifold at a vertex is the point {x_N = 0, A_B x_B = b}, which "
                "moves with b (an affine manifold whose offset depends on theta, which "
                "Manifold does not describe); implicit and analytic differentiate it",
    "step": "the minimizer of a linear program is a vertex: no smooth step map (x*(b, c) is "
            "piecewise affine in b and piecewise constant in c, and a projected gradient step "
            "would need the projection onto {A x = b, x >= 0}, itself a QP)",
    "mirror": "the entropy's mirror step keeps x > 0 but not A x = b: no Legendre function "
              "with a closed-form mirror step has the polyhedron {A x = b, x >= 0} as its "
              "domain, and the linear objective has no smooth part to step on",
    "straight_through": "x*(b, c) jumps between vertices as c moves (dx*/dc = 0 almost "
                        "everywhere), but theta = (b, c) is not x-shaped: no identity backward",
}


def _pow2_scale(a):
    """Return a power of two near ``max|a|`` (1.0 for no or zero data).

    Always applied: HiGHS's tolerances are absolute (1e-7), so data of size 1e-5 would
    already be solved to 1% only.
    """
    top = 0.0 if a is None or np.size(a) == 0 else float(np.max(np.abs(a)))
    if top == 0.0:
        return 1.0
    return float(2.0 ** np.round(np.log2(top)))


def _linprog(c, *, b_ub=None, b_eq=None, **kwargs):
    """HiGHS on ``c``, ``b`` rescaled by powers of two (exact) when far from unit size.

    With the bounds 0 or none used here, ``x*`` scales with ``b`` and the multipliers with
    ``c``; HiGHS's absolute tolerances and its infinity (1e20) then see unit-size data, so
    that data near 1e150 or 1e-150 solve as their rescaled versions do.
    """
    import scipy.optimize  # deferred: keeps `import bilevel` light

    parts = [np.ravel(b) for b in (b_ub, b_eq) if b is not None]
    sc, sb = _pow2_scale(c), _pow2_scale(np.concatenate(parts) if parts else None)
    result = scipy.optimize.linprog(
        np.asarray(c) / sc, method="highs", b_ub=None if b_ub is None else np.asarray(b_ub) / sb,
        b_eq=None if b_eq is None else np.asarray(b_eq) / sb, **kwargs)
    if result.status != 0:
        raise ValueError(f"the linear program could not be solved: {result.message}")
    if sc != 1.0 or sb != 1.0:
        result.x = result.x * sb
        result.fun = result.fun * sb * sc
        for key in ("ineqlin", "eqlin"):
            if result.get(key) is not None and np.size(result[key].marginals):
                result[key].marginals = result[key].marginals * sc
    return result


@register_problem
class LeastAbsoluteDeviation(Problem):
    r"""Least absolute deviations ``min_x ||A x - u||_1``; theta is ``u``.

    Parameters
    ----------
    A : ndarray, shape (m, n)
        Design, ``m > n``, full column rank.

    Notes
    -----
    Solved as the linear program ``min 1^T t`` s.t. ``-t <= A x - u <= t`` by HiGHS
    (:func:`scipy.optimize.linprog`), whose inequality multipliers give the dual solution
    ``y*`` and so ``grad p(u) = y*`` (``dual``). The dual iterates of a primal-dual method
    (:func:`bilevel.solvers.lad_pdhg`) give a derivative sequence ``Dual.iterates`` that
    converges to it. At a non-degenerate vertex, ``n`` rows ``Z`` are interpolated,
    ``A_Z x* = u_Z``, so ``dx*/du = A_Z^{-1}`` on those rows (``analytic_vjp``).
    Capabilities: ``dual``, ``analytic_vjp``.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.LeastAbsoluteDeviation(np.ones((3, 1)))   # the median
    >>> u = np.array([0.0, 1.0, 5.0])
    >>> float(prob.solve(u).x[0]), bl.value_gradient(prob, u)[1]      # sign(u - median)
    (1.0, array([-1.,  0.,  1.]))
    """

    name = "lad"
    tol = 1e-9

    def __init__(self, A):
        self.A = np.ascontiguousarray(check_array(A, "A", ndim=2))
        m, n = self.A.shape
        if m <= n:
            raise ValueError(f"A must have more rows than columns for a unique fit, got {A.shape}")
        self._At = torch.from_numpy(self.A)
        self._norm = float(np.linalg.norm(self.A, 2))

    def __repr__(self):
        return f"LeastAbsoluteDeviation(A of shape {self.A.shape})"

    def offers(self):
        """Return the dual solution (value gradient) and the vertex's closed form.

        Not ``energy``: ``||A x - u||_1`` has no gradient in ``u`` where a residual vanishes,
        so the envelope theorem does not give the value's gradient; the dual does.
        """
        return Capabilities(dual=self.dual, analytic_vjp=self.analytic_vjp,
                            batch=Batch(theta_ndim=(1,)), why_not=_LAD_WHY_NOT)

    @classmethod
    def examples(cls):
        """Return a line fit with 5 rows: a non-degenerate vertex."""
        A = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0], [1.0, 4.0]])
        return [("lad-u", cls(A), np.array([0.1, 1.3, 1.9, 3.4, 3.8]))]

    def check_theta(self, theta):
        """``u`` of shape (m,), finite."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError("LeastAbsoluteDeviation takes theta = u of shape (m,)")
            theta = theta[0]
        return (check_array(theta, "u", shape=(self.A.shape[0],)),)

    def init(self, parts):
        """Zeros."""
        return np.zeros(self.A.shape[1])

    def _lp(self, u):
        m, n = self.A.shape
        eye = np.eye(m)
        result = _linprog(np.r_[np.zeros(n), np.ones(m)],
                          A_ub=np.block([[self.A, -eye], [-self.A, -eye]]), b_ub=np.r_[u, -u],
                          bounds=[(None, None)] * n + [(0, None)] * m)
        y = result.ineqlin.marginals[:m] - result.ineqlin.marginals[m:]
        return result.x[:n], y, int(result.nit)

    def _solve(self, theta, x0):
        u = np.asarray(as_tuple(theta)[0], dtype=np.float64)
        x, y, n_iter = self._lp(u)
        primal = float(np.abs(self.A @ x - u).sum())
        # Certificate: dual feasibility and the duality gap, relative to the value.
        residual = max(float(np.abs(self.A.T @ y).max()), max(np.abs(y).max() - 1.0, 0.0),
                       abs(primal - float(u @ y)) / (primal or 1.0))
        return x, n_iter, residual, {"dual": y, "value": primal}

    # torch maps -----------------------------------------------------------------------
    def energy(self, x, theta):
        """Evaluate ``||A x - u||_1``."""
        return torch.abs(self._At @ x - as_tuple(theta)[0]).sum()

    def dual(self, solution):
        """``grad p(u) = y*`` from HiGHS; ``iterates(n)``: ``-y_k`` of the primal-dual method."""
        from bilevel.solvers.bregman import lad_pdhg

        u = np.asarray(as_tuple(solution.theta)[0], dtype=np.float64)
        m, n = self.A.shape
        step = 0.99 / max(self._norm, 1e-300)

        def iterates(n_steps):
            _, _, Y = lad_pdhg(self.A, u, np.zeros(n), np.zeros(m), step, step, int(n_steps))
            return list(-Y)

        y = solution.info["dual"]
        return Dual(value=solution.info["value"], gradient=y.copy(), y=y,
                    gap=solution.info["residual"], iterates=iterates,
                    info={"method": "HiGHS dual simplex multipliers"})

    def analytic_vjp(self, solution, v):
        """``dx*/du = A_Z^{-1}`` on the interpolated rows ``Z``."""
        u = np.asarray(as_tuple(solution.theta)[0], dtype=np.float64)
        r = self.A @ solution.x - u
        Z = np.flatnonzero(np.abs(r) <= _ZERO_TOL * (float(np.abs(u).max()) or 1.0))
        n = self.A.shape[1]
        if Z.size != n:
            raise ValueError(f"the LAD fit is degenerate ({Z.size} interpolated rows for {n} "
                             "unknowns): x* may not be differentiable; use finite_difference")
        g = np.zeros(u.shape)
        g[Z] = np.linalg.solve(self.A[Z].T, np.asarray(v, dtype=np.float64))
        return (g,)


@register_problem
class LinearProgram(Problem):
    r"""A linear program in standard form, ``min c^T x`` s.t. ``A x = b``, ``x >= 0``.

    theta is ``(b, c)``: a parameter in the constraints and one in the objective.

    Parameters
    ----------
    A : ndarray, shape (m, n)
        Constraint matrix of full row rank.

    Notes
    -----
    Solved by HiGHS (:func:`scipy.optimize.linprog`). The value ``p(b, c)`` has
    ``grad_b p = y*`` (the multipliers of ``A x = b``) and ``grad_c p = x*`` wherever
    they are unique (``dual``). At a non-degenerate basis ``B``, ``x*_B = A_B^{-1} b``:
    ``dx*/db = A_B^{-1}`` and ``dx*/dc = 0`` (``analytic_vjp``). ``constraints``: the KKT
    system of ``A x = b``, ``x >= 0`` (affine; ``Solution.info`` holds the exact
    multipliers ``nu = -y*`` and the reduced costs ``lam = c - A^T y*``), nonsingular at a
    non-degenerate vertex although the objective's Hessian is zero: ``implicit`` applies.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.LinearProgram(np.ones((1, 2)))    # min c^T x, x1 + x2 = b
    >>> value, (g_b, g_c) = bl.value_gradient(prob, (np.array([2.0]), np.array([1.0, 3.0])))
    >>> value, g_b, g_c
    (2.0, array([1.]), array([2., 0.]))
    """

    name = "linear_program"
    tol = 1e-9

    def __init__(self, A):
        self.A = np.ascontiguousarray(check_array(A, "A", ndim=2))
        self._kkt = KKT(self.objective, eq=self.eq, ineq=self.ineq, affine=True)

    def __repr__(self):
        return f"LinearProgram(A of shape {self.A.shape})"

    def offers(self):
        """Return the multipliers (value gradient), the basis's closed form, the KKT system."""
        return Capabilities(dual=self.dual, analytic_vjp=self.analytic_vjp,
                            constraints=self._kkt, batch=Batch(theta_ndim=(1, 1)),
                            why_not=_LP_WHY_NOT)

    @classmethod
    def examples(cls):
        """Two constraints, a non-degenerate basis."""
        A = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, -1.0, 0.0, 1.0]])
        return [("linear_program-tuple", cls(A),
                 (np.array([2.0, 0.5]), np.array([1.0, 2.0, 3.0, 2.5])))]

    def check_theta(self, theta):
        """``(b, c)``: b of shape (m,), c of shape (n,)."""
        if not isinstance(theta, (tuple, list)) or len(theta) != 2:
            raise ValueError("LinearProgram takes theta = (b, c)")
        m, n = self.A.shape
        return check_array(theta[0], "b", shape=(m,)), check_array(theta[1], "c", shape=(n,))

    def init(self, parts):
        """Zeros."""
        return np.zeros(self.A.shape[1])

    def _solve(self, theta, x0):
        b, c = (np.asarray(t, dtype=np.float64) for t in theta)
        result = _linprog(c, A_eq=self.A, b_eq=b, bounds=[(0, None)] * self.A.shape[1])
        x, y = result.x, result.eqlin.marginals
        reduced = c - self.A.T @ y
        # Relative to the data's scales (x* scales with b, the multipliers with c).
        scale = float(np.abs(c).max()) or 1.0
        b_scale = max(float(np.abs(b).max()), float(np.abs(x).max())) or 1.0
        residual = max(float(np.abs(self.A @ x - b).max()) / b_scale,
                       max(-float(reduced.min()), 0.0) / scale,
                       float(np.abs(reduced * x).max()) / (scale * b_scale))
        return x, int(result.nit), residual, {"dual": y, "value": float(result.fun),
                                              "nu": -y, "lam": np.maximum(reduced, 0.0)}

    # torch maps -----------------------------------------------------------------------
    def objective(self, x, theta):
        """``c^T x``."""
        return theta[1] @ x

    def eq(self, x, theta):
        """Return ``A x - b``."""
        return torch.from_numpy(self.A) @ x - theta[0]

    def ineq(self, x, theta):
        """``-x`` (``x >= 0``)."""
        return -x

    def dual(self, solution):
        """``(grad_b p, grad_c p) = (y*, x*)``."""
        y = solution.info["dual"]
        return Dual(value=solution.info["value"], gradient=(y.copy(), solution.x.copy()), y=y,
                    gap=solution.info["residual"], info={"method": "HiGHS multipliers"})

    def analytic_vjp(self, solution, v):
        """``(A_B^{-T} v_B, 0)`` on the basis ``B`` (the positive entries of ``x*``)."""
        b, c = (np.asarray(t, dtype=np.float64) for t in as_tuple(solution.theta))
        basis = np.flatnonzero(solution.x > _ZERO_TOL * (float(np.abs(solution.x).max()) or 1.0))
        if basis.size != self.A.shape[0]:
            raise ValueError(f"the basis is degenerate ({basis.size} positive entries for "
                             f"{self.A.shape[0]} constraints); use finite_difference")
        g_b = np.linalg.solve(self.A[:, basis].T, np.asarray(v, dtype=np.float64)[basis])
        return g_b, np.zeros(c.shape)
