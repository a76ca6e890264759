r"""Constrained lower-level problems: user problems in torch, moment layers, QPs and NNLS.

.. math:: x^*(\theta) = \arg\min_x f(x, \theta) \quad\text{s.t.}\quad
          h(x, \theta) = 0, \quad g(x, \theta) \le 0

Each class offers the ``constraints`` capability: the torch maps ``objective(x, theta)``
(``f``), ``eq(x, theta)`` (``h``, or None) and ``ineq(x, theta)`` (``g``, or None), and
puts the multipliers ``nu`` (equalities) and ``lam`` (inequalities, ``>= 0``) in
``Solution.info``; :class:`~bilevel.strategies.Implicit` differentiates the KKT system on
the active set (Gould, Hartley, Campbell, "Deep Declarative Networks", TPAMI 2021,
Propositions 4.5-4.6). The structured problems also have closed-form VJPs
(``analytic_vjp``) and a batched fast path for :class:`bilevel.torch.Layer`:

- :class:`Constrained`: any smooth ``f``, ``h``, ``g`` in torch, solved by SciPy (SLSQP or
  trust-constr) and polished by Newton steps on the KKT system of the active set;
- :class:`EqualityConstrainedLS`: the Euclidean projection onto ``{z : D z = beta}``, the
  moment layer of Maddu et al.'s stencils (:func:`moment_matrix`);
- :class:`QP`: ``1/2 x^T Q x + c^T x`` s.t. ``G x <= h`` (OptNet's layer without
  equalities), Goldfarb-Idnani's dual active-set method;
- :class:`NNLS`: ``1/2 ||A x - b||^2`` s.t. ``x >= 0``, Lawson-Hanson.

References
----------
Gould, Hartley, Campbell, "Deep Declarative Networks", TPAMI 2021.
Amos, Kolter, "OptNet: Differentiable Optimization as a Layer in Neural Networks", ICML 2017.
Maddu, Sturm, Cheeseman, Mueller, Sbalzarini, "STENCIL-NET: Data-driven solution-adaptive
discretization of partial differential equations", arXiv:2101.06182, 2021.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import ConvergenceWarning, SingularSystemError, as_tuple
from bilevel.problems.base import Problem, check_array

__all__ = ["NNLS", "QP", "Constrained", "EqualityConstrainedLS", "moment_matrix"]

# A constraint with slack <= _ACTIVE_TOL max(1, ||x||_inf) is active (the default of
# Implicit's active_tol, so that the closed forms and the generic KKT solve agree).
_ACTIVE_TOL = 1e-9
# Slack below which Constrained's Newton polish considers an inequality (with a positive
# multiplier) as active.
_NEAR_ACTIVE = 1e-6
# Constraint violation above which Constrained reports the problem as infeasible.
_INFEASIBLE_TOL = 1e-6
# Batches with more work (rows x n x m) than this run the prange kernels.
_PARALLEL_MIN = 100_000


def _tensors(theta):
    if isinstance(theta, tuple):
        return tuple(torch.from_numpy(np.asarray(t, dtype=np.float64)) for t in theta)
    return torch.from_numpy(np.asarray(theta, dtype=np.float64))


def _bare(theta):
    """Return the one theta part of a single-parameter problem (bare, or a 1-tuple)."""
    return theta[0] if isinstance(theta, (tuple, list)) and len(theta) == 1 else theta


def _check_theta_parts(theta):
    parts = as_tuple(theta)
    names = ["theta"] if len(parts) == 1 else [f"theta[{i}]" for i in range(len(parts))]
    return tuple(check_array(t, n) for t, n in zip(parts, names))


# --------------------------------------------------------------------------------------
@register_problem
class Constrained(Problem):
    r"""A smooth constrained problem written in torch.

    .. math:: x^* = \arg\min_x f(x, \theta) \ \text{ s.t. } h(x, \theta) = 0,\quad
              g(x, \theta) \le 0

    Parameters
    ----------
    objective : callable
        ``objective(x, theta) -> scalar tensor`` (``f``); ``x`` is a float64 tensor shaped
        like ``x0``, theta a tensor or a tuple of tensors as passed to ``solve``.
    eq : callable, optional
        ``eq(x, theta) -> tensor`` of p equality constraints ``h = 0``.
    ineq : callable, optional
        ``ineq(x, theta) -> tensor`` of q inequality constraints ``g <= 0``.
    x0 : array_like
        Starting point; fixes the shape of ``x``.
    method : {"SLSQP", "trust-constr"}
        The SciPy solver. Its result is then polished by Newton steps on the KKT system of
        the active set (quadratic convergence to round-off).
    affine : bool
        Declare ``h`` and ``g`` affine in ``x`` with ``d_x h``, ``d_x g`` independent of
        theta: :class:`~bilevel.strategies.Implicit` then takes the linear shortcut (no
        multipliers in the Hessian).
    tol : float
        Tolerance on the KKT residual (stationarity, feasibility, complementarity, inf-norm,
        relative to ``max(1, ||grad f||_inf)``).
    max_iter : int
        SciPy iterations.

    Notes
    -----
    ``Solution.info`` holds ``nu`` (p,), ``lam`` (q,) (recovered by non-negative least
    squares from ``grad f + (d_x h)^T nu + (d_x g_A)^T lam_A = 0`` after polishing),
    ``active`` (the active inequalities) and ``violation`` (max constraint violation).
    A violation above 1e-6 after solving raises ``ValueError`` (infeasible constraints,
    or a solver failure: try a feasible ``x0`` or the other ``method``).
    Capabilities: ``constraints``, ``energy``.

    Examples
    --------
    >>> import numpy as np, torch, bilevel as bl
    >>> prob = bl.problems.Constrained(lambda x, t: ((x - t) ** 2).sum(),
    ...                                eq=lambda x, t: x.sum() - 1.0, x0=np.zeros(2))
    >>> sol = prob.solve(np.array([2.0, 0.0]))      # projection onto x1 + x2 = 1
    >>> np.round(sol.x, 12).tolist(), np.round(sol.info["nu"], 12).tolist()
    ([1.5, -0.5], [1.0])
    >>> np.round(bl.vjp(prob, np.array([2.0, 0.0]), np.array([1.0, 0.0]), "implicit"), 12)
    array([ 0.5, -0.5])
    """

    name = "constrained"
    capabilities = frozenset({"constraints", "energy", "dual"})

    def __init__(self, objective, eq=None, ineq=None, x0=None, method="SLSQP", affine=False,
                 tol=1e-10, max_iter=500):
        for label, fn in (("objective", objective), ("eq", eq), ("ineq", ineq)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{label} must be callable {label}(x, theta), got {fn!r}")
        if objective is None:
            raise TypeError("objective must be callable objective(x, theta)")
        if x0 is None:
            raise ValueError("x0 is required: it is the starting point and fixes x's shape")
        if method not in ("SLSQP", "trust-constr"):
            raise ValueError(f"method must be 'SLSQP' or 'trust-constr', got {method!r}")
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        self._objective, self._eq, self._ineq = objective, eq, ineq
        self.x0 = check_array(x0, "x0")
        self.method, self.tol, self.max_iter = method, float(tol), int(max_iter)
        self.constraints_affine = bool(affine)

    def __repr__(self):
        return (f"Constrained(eq={self._eq is not None}, ineq={self._ineq is not None}, "
                f"method={self.method!r})")

    def check_theta(self, theta):
        """Any finite arrays; a bare array or a tuple of them."""
        return _check_theta_parts(theta)

    def init(self, parts):
        """``x0``."""
        return self.x0.copy()

    # torch maps -----------------------------------------------------------------------
    def objective(self, x, theta):
        """``f(x, theta)``, checked to be a scalar tensor."""
        value = self._objective(x, theta)
        if not (isinstance(value, torch.Tensor) and value.numel() == 1):
            raise ValueError("objective(x, theta) must return a scalar torch tensor, "
                             f"got {type(value).__name__}")
        return value.reshape(())

    def energy(self, x, theta):
        """Return the objective (the energy on the feasible set)."""
        return self.objective(x, theta)

    def dual(self, solution):
        """Return the KKT multipliers as the certificate of ``p(theta) = min f`` (value gradient).

        With parameters in the constraints, ``grad p = grad_theta`` of the Lagrangian at
        ``(x*, nu, lam)``, not of ``f`` alone (:func:`bilevel.problems.lad.lagrangian_dual`).
        """
        from bilevel.problems.lad import lagrangian_dual

        return lagrangian_dual(self, solution)

    def eq(self, x, theta):
        """``h(x, theta)`` as a 1-D tensor, or None."""
        return None if self._eq is None else torch.as_tensor(self._eq(x, theta)).reshape(-1)

    def ineq(self, x, theta):
        """``g(x, theta)`` as a 1-D tensor, or None."""
        return None if self._ineq is None else torch.as_tensor(self._ineq(x, theta)).reshape(-1)

    # NumPy evaluations ----------------------------------------------------------------
    def _evaluate(self, flat, theta_t, shape):
        """f, grad f, h, J_h, g, J_g at ``flat`` (NumPy)."""
        x = torch.from_numpy(flat.reshape(shape).copy()).requires_grad_()
        with torch.enable_grad():
            f = self.objective(x, theta_t)
            (gf,) = torch.autograd.grad(f, x)
            out = [float(f.detach()), gf.numpy().ravel().copy()]
            for fn in (self.eq, self.ineq):
                c = fn(x, theta_t)
                if c is None or c.numel() == 0:
                    out += [np.zeros(0), np.zeros((0, flat.size))]
                    continue
                rows = [torch.autograd.grad(c[i], x, retain_graph=True, allow_unused=True)[0]
                        for i in range(c.numel())]
                J = np.stack([np.zeros(flat.size) if r is None else r.numpy().ravel()
                              for r in rows])
                out += [c.detach().numpy().astype(np.float64).copy(), J]
        return out

    def _lagrangian_hessian(self, flat, theta_t, shape, mu, active):
        x = torch.from_numpy(flat.reshape(shape).copy())

        def lagrangian(z):
            value = self.objective(z, theta_t)
            terms = []
            h = self.eq(z, theta_t)
            if h is not None:
                terms.append(h)
            g = self.ineq(z, theta_t)
            if g is not None and active.size:
                terms.append(g[torch.as_tensor(active, dtype=torch.long)])
            if terms:
                value = value + (torch.from_numpy(mu) * torch.cat(terms)).sum()
            return value

        n = flat.size
        return torch.autograd.functional.hessian(lagrangian, x).reshape(n, n).numpy()

    def _solve(self, theta, x0):
        import scipy.optimize

        theta_t = _tensors(theta)
        shape = x0.shape
        cache = {}

        def ev(flat):
            key = flat.tobytes()
            if key not in cache:
                cache.clear()
                cache[key] = self._evaluate(flat, theta_t, shape)
            return cache[key]

        constraints = []
        if self._eq is not None:
            constraints.append({"type": "eq", "fun": lambda z: ev(z)[2], "jac": lambda z: ev(z)[3]})
        if self._ineq is not None:    # SciPy's convention: fun(x) >= 0
            constraints.append({"type": "ineq", "fun": lambda z: -ev(z)[4],
                                "jac": lambda z: -ev(z)[5]})
        options = {"maxiter": self.max_iter}
        if self.method == "SLSQP":
            options["ftol"] = 1e-15
        else:
            options.update(gtol=1e-12, xtol=1e-14)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # SciPy's own warnings; we check below
            result = scipy.optimize.minimize(
                lambda z: ev(z)[0], x0.ravel(), jac=lambda z: ev(z)[1], method=self.method,
                constraints=constraints, options=options)
        x = np.asarray(result.x, dtype=np.float64)
        _, gf, _, _, g, _ = ev(x)
        binding = _binding(result, self._ineq is not None, x, gf, g)
        x, mu_info = self._polish(x, theta_t, shape, ev, binding)
        f, gf, h, Jh, g, Jg = ev(x)
        violation = max(float(np.abs(h).max(initial=0.0)), float(g.max(initial=0.0)))
        if violation > _INFEASIBLE_TOL * max(1.0, float(np.abs(x).max(initial=0.0))):
            raise ValueError(
                f"Constrained: the constraints look infeasible at this theta: {self.method} "
                f"ended with max violation {violation:.1e} ({result.message}). Check eq and "
                "ineq, start from a feasible x0, or try method='trust-constr'")
        active, nu, lam, stationarity = mu_info if mu_info is not None else \
            _multipliers(x, gf, h, Jh, g, Jg)
        scale = max(1.0, float(np.abs(gf).max(initial=0.0)))
        complementarity = float(np.abs(lam * g).max(initial=0.0))
        residual = max(stationarity, violation, complementarity) / scale
        return x.reshape(shape), int(result.nit), residual, {
            "nu": nu, "lam": lam, "active": active, "violation": violation,
            "method": self.method, "scipy_status": int(result.status)}

    def _polish(self, x, theta_t, shape, ev, binding):
        """Newton steps on the KKT system of the active set; keep them if they help.

        ``binding`` (indices of inequalities) joins the working set of the first step: the
        ones SciPy's own multipliers call binding, whatever their slack (an interior-point
        method stops at slacks ~ its barrier parameter, which may exceed ``_NEAR_ACTIVE``).
        """
        best = None
        for _ in range(8):
            f, gf, h, Jh, g, Jg = ev(x)
            active, nu, lam, stationarity = _multipliers(x, gf, h, Jh, g, Jg)
            violation = max(float(np.abs(h).max(initial=0.0)), float(g.max(initial=0.0)))
            score = max(stationarity, violation, float(np.abs(lam * g).max(initial=0.0)))
            if best is None or score < best[0]:
                best = (score, x, (active, nu, lam, stationarity))
            if score <= 1e-15 * max(1.0, float(np.abs(gf).max(initial=0.0))):
                break
            # Newton's working set: the active constraints and the nearly active ones with
            # a positive multiplier (interior-point solvers stop at slacks ~1e-8).
            xscale = max(1.0, float(np.abs(x).max(initial=0.0)))
            near = np.union1d(np.flatnonzero(g >= -_NEAR_ACTIVE * xscale), binding)
            binding = np.zeros(0, dtype=np.intp)     # later steps start from Newton's iterate
            _, nu_w, lam_w, _ = _multipliers(x, gf, h, Jh, g, Jg, near)
            work = near[(lam_w[near] > 1e-10 * max(1.0, float(np.abs(gf).max(initial=0.0))))
                        | (g[near] >= -_ACTIVE_TOL * xscale)]
            if work.size != near.size:
                _, nu_w, lam_w, _ = _multipliers(x, gf, h, Jh, g, Jg, work)
            mu = np.concatenate([nu_w, lam_w[work]])
            active = work
            J = np.vstack([Jh, Jg[active]])
            c = np.concatenate([h, g[active]])
            m, n = J.shape[0], x.size
            H = self._lagrangian_hessian(x, theta_t, shape, mu, active)
            K = np.block([[H, J.T], [J, np.zeros((m, m))]])
            rhs = -np.concatenate([gf + J.T @ mu, c])
            step = np.linalg.lstsq(K, rhs, rcond=1e-13)[0]
            candidate = x + step[:n]
            # stay feasible for the inactive inequalities
            g_new = ev(candidate)[4]
            inactive = np.setdiff1d(np.arange(g.size), active)
            if inactive.size and g_new[inactive].max() > 0:
                break
            x = candidate
        return best[1], best[2]


def _binding(result, has_ineq, x, gf, g):
    """Inequalities that SciPy's own multipliers call binding (trust-constr's ``result.v``).

    An interior-point method stops with ``lam_i * slack_i ~ mu`` (its barrier parameter)
    for every ``i``: binding constraints have the larger multiplier, inactive ones the larger
    slack, each measured on its own scale (``||grad f||`` and ``||x||``). SciPy's inequality
    is ``-g >= 0``, so its multiplier is ``-lam``. SLSQP is an active-set method whose iterate
    lies on its constraints: its slacks suffice and it has no ``v``.
    """
    v = result.get("v")
    if not has_ineq or not v:
        return np.zeros(0, dtype=np.intp)
    lam = -np.asarray(v[-1], dtype=np.float64).ravel()
    lam_scale = max(1.0, float(np.abs(gf).max(initial=0.0)))
    x_scale = max(1.0, float(np.abs(x).max(initial=0.0)))
    return np.flatnonzero(lam / lam_scale > -g / x_scale)


def _multipliers(x, gf, h, Jh, g, Jg, active=None):
    """Active set, multipliers by bounded least squares, and the stationarity residual.

    ``(nu, lam_A) = argmin ||grad f + Jh^T nu + Jg_A^T lam_A||`` with ``lam_A >= 0``;
    ``active`` defaults to the inequalities with slack ``<= _ACTIVE_TOL max(1, ||x||)``.
    """
    if active is None:
        active = _active_set(x, g)
    J = np.vstack([Jh, Jg[active]])
    p, m = Jh.shape[0], J.shape[0]
    if m == 0:
        mu = np.zeros(0)
    elif m == p:
        mu = np.linalg.lstsq(J.T, -gf, rcond=None)[0]
    else:
        from scipy.optimize import lsq_linear

        lower = np.concatenate([np.full(p, -np.inf), np.zeros(m - p)])
        mu = lsq_linear(J.T, -gf, bounds=(lower, np.full(m, np.inf)), method="bvls",
                        tol=1e-14).x
    lam = np.zeros(g.size)
    lam[active] = mu[p:]
    stationarity = float(np.abs(gf + J.T @ mu).max(initial=0.0))
    return active, mu[:p], lam, stationarity


def _active_set(x, g):
    return np.flatnonzero(g >= -_ACTIVE_TOL * max(1.0, float(np.abs(x).max(initial=0.0))))


# --------------------------------------------------------------------------------------
def moment_matrix(stencil, derivative_order, accuracy):
    r"""Vandermonde moment conditions ``D xi = beta`` of a finite-difference stencil.

    For an ``r``-th order approximation of the ``l``-th derivative at ``x_i`` from the
    values at ``x_j = x_i + offset_j``,
    ``d^l f / dx^l (x_i) = sum_j xi_j f(x_j) + O(dx^r)``, the weights must satisfy
    (Maddu et al. 2021; Proposition 3.2.1 of the moment-layer paper)

    .. math:: \sum_j \xi_j (\Delta x_j)^k =
              \begin{cases} (-1)^k k! & k = l \\ 0 & \alpha_{min} \le k \le l + r - 1,
              k \ne l \end{cases}, \qquad \Delta x_j = x_i - x_j,

    with ``alpha_min = 1`` for even ``l`` and 0 for odd ``l`` (the row ``k = l`` is always
    included, so ``l = 0`` starts at ``k = 0``). ``0^0 = 1``.

    Parameters
    ----------
    stencil : array_like, shape (s,)
        Offsets ``x_j - x_i`` of the stencil points (distinct, physical units).
    derivative_order : int
        ``l >= 0``.
    accuracy : int
        ``r >= 1``.

    Returns
    -------
    D : ndarray, shape (k, s)
        ``D[row, j] = (x_i - x_j)^{k_row}``.
    beta : ndarray, shape (k,)

    Raises
    ------
    ValueError
        More conditions than stencil points (``k > s``: no weights satisfy them), or
        repeated offsets.

    Examples
    --------
    The paper's stencil of size 2 for ``l = 0, r = 2`` (its Eq. 9), offsets ``(+dx, -dx)``:

    >>> import bilevel as bl
    >>> D, beta = bl.problems.moment_matrix([0.1, -0.1], 0, 2)
    >>> D.tolist(), beta.tolist()
    ([[1.0, 1.0], [-0.1, 0.1]], [1.0, 0.0])
    """
    offsets = check_array(stencil, "stencil", ndim=1)
    if offsets.size == 0 or np.unique(offsets).size != offsets.size:
        raise ValueError(f"stencil must hold distinct offsets, got {offsets.tolist()}")
    if int(derivative_order) != derivative_order or derivative_order < 0:
        raise ValueError(f"derivative_order must be an integer >= 0, got {derivative_order!r}")
    if int(accuracy) != accuracy or accuracy < 1:
        raise ValueError(f"accuracy must be an integer >= 1, got {accuracy!r}")
    order, r = int(derivative_order), int(accuracy)
    alpha_min = 1 if order % 2 == 0 else 0
    rows = sorted(set(range(alpha_min, order + r)) | {order})
    if len(rows) > offsets.size:
        raise ValueError(f"{len(rows)} moment conditions (derivative_order={order}, "
                         f"accuracy={r}) need at least {len(rows)} stencil points, got "
                         f"{offsets.size}; enlarge the stencil or lower the accuracy")
    dx = -offsets
    D = np.array([dx**k if k else np.ones_like(dx) for k in rows])
    beta = np.array([(-1.0) ** k * math.factorial(k) if k == order else 0.0 for k in rows])
    return D, beta


@register_problem
class EqualityConstrainedLS(Problem):
    r"""Projection onto an affine set: ``||z - xi||^2`` s.t. ``D z = beta``; theta ``xi``.

    .. math:: z^*(\xi) = \arg\min_z \|z - \xi\|^2 \ \text{ s.t. } D z = \beta
              = P\xi + D^+\beta, \qquad P = I - D^\top (D D^\top)^{-1} D,

    so that ``(dz*/dxi)^T v = P v`` (Gould et al. 2021, Corollary 4.9: fixed linear
    equalities), and the multiplier is ``nu = 2 (D D^T)^{-1} (D xi - beta)``.
    With :func:`moment_matrix` it is the moment layer that makes the weights ``xi`` a
    network predicts satisfy a stencil's moment conditions. When ``D`` is square
    (as many conditions as stencil points) the set is a single point: ``z* = D^{-1} beta``
    and the gradient is zero.

    Parameters
    ----------
    D : array_like, shape (k, n)
        Full row rank (``k <= n``).
    beta : array_like, shape (k,)

    Notes
    -----
    Capabilities: ``constraints`` (affine), ``analytic_vjp``; the batched fast path of
    :class:`bilevel.torch.Layer` is two matrix products.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.EqualityConstrainedLS(np.ones((1, 3)), np.array([1.0]))
    >>> prob.solve(np.array([1.0, 1.0, 1.0])).x.round(12)      # onto sum(z) = 1
    array([0.33333333, 0.33333333, 0.33333333])
    """

    name = "equality_constrained_ls"
    capabilities = frozenset({"constraints", "analytic_vjp"})
    constraints_affine = True
    theta_ndim = (1,)
    tol = 1e-10
    batch_strategies = frozenset({"analytic"})

    def __init__(self, D, beta):
        D = check_array(D, "D", ndim=2)
        beta = check_array(beta, "beta", ndim=1)
        if beta.shape[0] != D.shape[0]:
            raise ValueError(f"D has {D.shape[0]} rows but beta has {beta.shape[0]} entries")
        k, n = D.shape
        sv = np.linalg.svd(D, compute_uv=False)
        if k > n or sv.size == 0 or sv.min() <= 1e-12 * sv.max():
            raise ValueError(f"D (shape {D.shape}) must have full row rank: remove linearly "
                             "dependent constraints (or ones beyond the number of unknowns)")
        self.D, self.beta = np.ascontiguousarray(D), beta
        self._Dpinv = np.linalg.solve(D @ D.T, D).T          # D^T (D D^T)^{-1}
        self.P = np.eye(n) - self._Dpinv @ D
        self._z0 = self._Dpinv @ beta

    def __repr__(self):
        return f"EqualityConstrainedLS(D of shape {self.D.shape})"

    def check_theta(self, theta):
        """``xi`` of shape (n,)."""
        return (check_array(_bare(theta), "xi", shape=(self.D.shape[1],)),)

    def init(self, parts):
        """Start from the particular solution ``D^+ beta``."""
        return self._z0.copy()

    def _solve(self, theta, x0):
        xi = np.asarray(_bare(theta), dtype=np.float64)
        z = self.P @ xi + self._z0
        nu = 2.0 * (self._Dpinv.T @ (xi - z))    # 2 (D D^T)^{-1} D (xi - z)
        residual = float(np.abs(self.D @ z - self.beta).max()) / max(1.0, np.abs(self.beta).max())
        return z, 1, residual, {"nu": nu, "lam": np.zeros(0)}

    def objective(self, z, theta):
        """``||z - xi||^2``."""
        return ((z - _bare(theta)) ** 2).sum()

    def eq(self, z, theta):
        """``D z - beta``."""
        return torch.from_numpy(self.D) @ z - torch.from_numpy(self.beta)

    def ineq(self, z, theta):
        """No inequalities."""
        return None

    def analytic_vjp(self, solution, v):
        """``P v``: the projector onto ``null(D)``."""
        return (self.P @ np.asarray(v, dtype=np.float64),)

    def solve_batch(self, Xi):
        """Rows of ``Xi`` (b, n) projected: ``Xi P + 1 (D^+ beta)^T``."""
        return Xi @ self.P + self._z0

    def vjp_batch(self, Xi, Z, V):
        """``((V P,), margins)``; no kinks, margins are infinite."""
        return (V @ self.P,), np.full(Xi.shape[0], np.inf)


# --------------------------------------------------------------------------------------
def _kernel(module, name, rows, work):
    from importlib import import_module

    mod = import_module(f"bilevel.solvers.{module}")
    return getattr(mod, name + ("_batched" if rows * work >= _PARALLEL_MIN else "_rows"))


@register_problem
class QP(Problem):
    r"""A strictly convex QP ``1/2 x^T Q x + c^T x`` s.t. ``G x <= h``.

    .. math:: x^*(c, h) = \arg\min_x \tfrac12 x^\top Q x + c^\top x
              \ \text{ s.t. } G x \le h

    theta is ``c`` when ``h`` is given to the constructor (DESIGN's convention), and
    ``(c, h)`` when ``h`` is None: both differentiable, as in OptNet. On the active set
    ``S`` (strict complementarity, linearly independent ``G_S``), with
    ``M = G_S Q^{-1} G_S^T`` and ``w = M^{-1} G_S Q^{-1} v``:

    .. math:: \nabla_c = -Q^{-1}(v - G_S^\top w), \qquad (\nabla_h)_S = w,
              \quad (\nabla_h)_{\bar S} = 0.

    Parameters
    ----------
    Q : array_like, shape (n, n)
        Symmetric positive definite.
    G : array_like, shape (m, n)
    h : array_like, shape (m,), optional
        Fixed right-hand side; None makes ``h`` part of theta.
    tol : float
        Tolerance of the KKT residual (relative) and of the solver's feasibility test.
    max_iter : int, optional
        Cap on active-set changes (default ``10 (n + m)``).

    Notes
    -----
    Solver: Goldfarb-Idnani's dual active-set method in numba
    (:func:`bilevel.solvers.qp.qp_goldfarb_idnani`), exact active set and multipliers
    ``lam`` (``Solution.info["lam"]``, with ``active``); infeasible ``G x <= h`` raises
    ``ValueError``. Capabilities: ``constraints`` (affine), ``analytic_vjp``;
    :class:`bilevel.torch.Layer` batches rows of ``c`` (and ``h``) through the ``prange``
    kernels. Weakly active constraints (zero multiplier) are kept in ``S``: the gradient is
    then one-sided (``Implicit`` reports ``one_sided``).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.QP(np.eye(2), np.array([[1.0, 1.0]]), np.array([1.0]))
    >>> sol = prob.solve(np.array([-2.0, -2.0]))     # unconstrained (2, 2), projected
    >>> sol.x, sol.info["lam"]
    (array([0.5, 0.5]), array([1.5]))
    """

    name = "qp"
    capabilities = frozenset({"constraints", "analytic_vjp"})
    constraints_affine = True
    batch_strategies = frozenset({"analytic"})

    def __init__(self, Q, G, h=None, tol=1e-10, max_iter=None):
        Q = check_array(Q, "Q", ndim=2)
        n = Q.shape[0]
        if Q.shape != (n, n) or n == 0:
            raise ValueError(f"Q must be square and non-empty, got shape {Q.shape}")
        if not np.allclose(Q, Q.T, rtol=1e-12, atol=1e-12 * np.abs(Q).max()):
            raise ValueError("Q must be symmetric; pass (Q + Q.T) / 2")
        try:
            np.linalg.cholesky(Q)
        except np.linalg.LinAlgError as exc:
            raise ValueError("Q must be positive definite (strictly convex QP); add a small "
                             "multiple of the identity") from exc
        G = check_array(G, "G", ndim=2)
        if G.shape[1] != n:
            raise ValueError(f"G must have {n} columns (Q is {n} x {n}), got shape {G.shape}")
        if h is not None:
            h = check_array(h, "h", shape=(G.shape[0],))
        if not (tol > 0):
            raise ValueError(f"tol must be > 0, got {tol}")
        self.Q, self.G = np.ascontiguousarray(Q), np.ascontiguousarray(G)
        self.h = h
        self.tol = float(tol)
        self.max_iter = int(max_iter) if max_iter is not None else 10 * (n + G.shape[0]) + 10
        self.theta_ndim = (1,) if h is not None else (1, 1)

    def __repr__(self):
        n, m = self.G.shape[1], self.G.shape[0]
        return f"QP(n={n}, m={m}, theta={'c' if self.h is not None else '(c, h)'})"

    def check_theta(self, theta):
        """``c`` (n,), or ``(c, h)`` with h (m,) when the constructor had no ``h``."""
        n, m = self.G.shape[1], self.G.shape[0]
        if self.h is not None:
            theta = _bare(theta)
            if isinstance(theta, (tuple, list)):
                raise ValueError("this QP has a fixed h: theta is c alone; build QP(Q, G) "
                                 "to differentiate with respect to h too")
            return (check_array(theta, "c", shape=(n,)),)
        if not isinstance(theta, (tuple, list)) or len(theta) != 2:
            raise ValueError("QP(Q, G) takes theta = (c, h); pass h to the constructor to "
                             "make theta = c")
        return check_array(theta[0], "c", shape=(n,)), check_array(theta[1], "h", shape=(m,))

    def init(self, parts):
        """Unused (the dual method starts from the unconstrained minimizer)."""
        return np.zeros(self.G.shape[1])

    def _split(self, theta):
        if self.h is not None:
            return np.asarray(_bare(theta), dtype=np.float64), self.h
        return np.asarray(theta[0], dtype=np.float64), np.asarray(theta[1], dtype=np.float64)

    def _solve(self, theta, x0):
        from bilevel.solvers.qp import qp_goldfarb_idnani

        c, h = (np.ascontiguousarray(t) for t in self._split(theta))
        x, lam, n_iter, status = qp_goldfarb_idnani(self.Q, c, self.G, h, 1e-13, self.max_iter)
        if status == 1:
            raise ValueError("QP: the constraints G x <= h are infeasible (h has no feasible "
                             "point); check h, or relax the constraints")
        slack = h - self.G @ x
        residual = _kkt_residual(self.Q @ x + c + self.G.T @ lam, slack, lam, c, h, x)
        active = np.flatnonzero(slack <= _ACTIVE_TOL * max(1.0, np.abs(x).max()))
        return x, n_iter, residual, {"lam": lam, "nu": np.zeros(0), "active": active,
                                     "status": int(status)}

    # torch maps -----------------------------------------------------------------------
    def objective(self, x, theta):
        """``1/2 x^T Q x + c^T x``."""
        c = _bare(theta) if self.h is not None else theta[0]
        return 0.5 * x @ (torch.from_numpy(self.Q) @ x) + c @ x

    def eq(self, x, theta):
        """No equalities."""
        return None

    def ineq(self, x, theta):
        """``G x - h``."""
        h = torch.from_numpy(self.h) if self.h is not None else theta[1]
        return torch.from_numpy(self.G) @ x - h

    # closed forms ---------------------------------------------------------------------
    def analytic_vjp(self, solution, v):
        """Apply the active-set formula of the class docstring (the batched kernel, one row)."""
        c, h = self._split(solution.theta)
        grads, _ = self.vjp_batch(*(p[None] for p in self._parts(c, h)),
                                  solution.x[None], np.asarray(v, dtype=np.float64)[None])
        return tuple(g[0] for g in grads)

    def _parts(self, c, h):
        return (c,) if self.h is not None else (c, h)

    def solve_batch(self, C, H=None):
        """Solve every row of ``C`` (b, n) (with ``H`` (b, m) when theta is ``(c, h)``)."""
        H = np.broadcast_to(self.h, (C.shape[0], self.G.shape[0])) if H is None else H
        H = np.ascontiguousarray(H, dtype=np.float64)
        kernel = _kernel("qp", "qp_goldfarb_idnani", C.shape[0], self.G.size)
        X, _, _, status = kernel(self.Q, np.ascontiguousarray(C), self.G, H, 1e-13,
                                 self.max_iter)
        if np.any(status == 1):
            raise ValueError(f"QP: {int(np.sum(status == 1))} of {C.shape[0]} rows have "
                             "infeasible constraints G x <= h")
        if np.any(status == 2):
            warnings.warn(f"QP: {int(np.sum(status == 2))} rows hit max_iter={self.max_iter}; "
                          "raise max_iter", ConvergenceWarning, stacklevel=3)
        return X

    def vjp_batch(self, *args):
        """``((grad_C[, grad_H]), margins)`` for ``(C[, H], X, V)`` (b rows)."""
        if self.h is not None:
            C, X, V = args
            H = np.broadcast_to(self.h, (C.shape[0], self.G.shape[0]))
        else:
            C, H, X, V = args
        kernel = _kernel("qp", "qp_active_vjp", C.shape[0], self.G.size)
        GC, GH, margins, ok = kernel(self.Q, self.G, np.ascontiguousarray(C),
                                     np.ascontiguousarray(H), np.ascontiguousarray(X),
                                     np.ascontiguousarray(V), _ACTIVE_TOL)
        if not np.all(ok):
            raise SingularSystemError(
                f"QP: the active constraints are linearly dependent in {int(np.sum(~ok))} "
                "row(s) (degenerate vertex: LICQ fails), so the closed form is singular; use "
                "Implicit(pinv=True) for the minimum-norm gradient or Implicit(damping=1e-8)")
        return ((GC,) if self.h is not None else (GC, GH)), margins


def _kkt_residual(stationarity, slack, lam, *scales):
    scale = max(1.0, *(float(np.abs(s).max(initial=0.0)) for s in scales))
    return max(float(np.abs(stationarity).max(initial=0.0)),
               float(np.maximum(-slack, 0.0).max(initial=0.0)),
               float(np.abs(lam * slack).max(initial=0.0)) / max(1.0, np.abs(lam).max(
                   initial=0.0))) / scale


@register_problem
class NNLS(Problem):
    r"""Non-negative least squares ``1/2 ||A x - b||^2`` s.t. ``x >= 0``; theta ``b``.

    .. math:: x^*(b) = \arg\min_{x \ge 0} \tfrac12 \|A x - b\|^2, \qquad
              \Big(\frac{\partial x^*}{\partial b}\Big)^\top v
              = A_F (A_F^\top A_F)^{-1} v_F

    on the free set ``F = {i : x*_i > 0}`` (strict complementarity, ``A_F`` of full
    column rank); the multipliers of ``-x <= 0`` are ``lam = A^T (A x* - b) >= 0``.

    Parameters
    ----------
    A : array_like, shape (m, n)
    tol : float, optional
        Dual tolerance of Lawson-Hanson (default ``10 eps ||A||_1 max(m, n)`` as SciPy).
    max_iter : int, optional
        Cap on inner iterations (default ``3 n + 10``).

    Notes
    -----
    Solver: Lawson-Hanson in numba (:func:`bilevel.solvers.qp.nnls_lawson_hanson`), the
    algorithm of ``scipy.optimize.nnls``. ``Solution.info`` has ``lam`` and ``active`` (the
    zero set). Capabilities: ``constraints`` (affine), ``analytic_vjp``; batched for
    :class:`bilevel.torch.Layer`; ``mirror``: entropic mirror descent on the orthant, for
    :class:`~bilevel.strategies.BregmanUnroll`.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.NNLS(np.eye(2))
    >>> prob.solve(np.array([1.0, -2.0])).x          # the projection onto the orthant
    array([1., 0.])
    """

    name = "nnls"
    capabilities = frozenset({"constraints", "analytic_vjp", "mirror"})
    constraints_affine = True
    theta_ndim = (1,)
    batch_strategies = frozenset({"analytic"})
    tol = 1e-10

    def __init__(self, A, tol=None, max_iter=None):
        A = check_array(A, "A", ndim=2)
        if A.size == 0:
            raise ValueError(f"A must be non-empty, got shape {A.shape}")
        self.A = np.ascontiguousarray(A)
        m, n = A.shape
        eps = np.finfo(np.float64).eps
        self.dual_tol = (10 * eps * np.abs(A).sum(axis=0).max() * max(m, n)
                         if tol is None else float(tol))
        if not (self.dual_tol > 0):
            raise ValueError(f"tol must be > 0, got {tol}")
        self.max_iter = int(max_iter) if max_iter is not None else 3 * n + 10

    def __repr__(self):
        return f"NNLS(A of shape {self.A.shape})"

    def check_theta(self, theta):
        """``b`` of shape (m,)."""
        return (check_array(_bare(theta), "b", shape=(self.A.shape[0],)),)

    def init(self, parts):
        """Zero (Lawson-Hanson starts from the empty passive set)."""
        return np.zeros(self.A.shape[1])

    def _solve(self, theta, x0):
        from bilevel.solvers.qp import nnls_lawson_hanson

        b = np.ascontiguousarray(_bare(theta), dtype=np.float64)
        x, lam, n_iter, ok = nnls_lawson_hanson(self.A, b, self.dual_tol, self.max_iter)
        grad = self.A.T @ (self.A @ x - b)
        free = x > 0
        scale = max(1.0, float(np.abs(self.A.T @ b).max()))
        residual = max(float(np.abs(grad[free]).max(initial=0.0)),
                       float(np.maximum(-grad[~free], 0.0).max(initial=0.0))) / scale
        active = np.flatnonzero(x <= _ACTIVE_TOL * max(1.0, np.abs(x).max()))
        return x, n_iter, residual, {"lam": lam, "nu": np.zeros(0), "active": active}

    # torch maps -----------------------------------------------------------------------
    def objective(self, x, theta):
        """``1/2 ||A x - b||^2``."""
        r = torch.from_numpy(self.A) @ x - _bare(theta)
        return 0.5 * (r * r).sum()

    def eq(self, x, theta):
        """No equalities."""
        return None

    def ineq(self, x, theta):
        """``-x`` (``x >= 0``)."""
        return -x

    def mirror(self, solution):
        """Entropic mirror descent ``x+ = x exp(-tau A^T(Ax - b))``, for ``bregman``.

        From ``x0 = 1`` (independent of theta), ``tau = 1/(||A||_2^2 R)`` with
        ``R = max(1, 2 max x*)`` (without ``x*``: ``2||b|| / sigma_min(A)``, a bound on
        ``||x*||``), so that ``f`` is smooth relative to the entropy on the box ``x <= R``
        where the iterates live (Bauschke, Bolte, Teboulle 2017).
        """
        from bilevel._types import Mirror
        from bilevel.solvers import bregman as kernels

        b = np.asarray(_bare(solution.theta), dtype=np.float64)
        H = self.A.T @ self.A
        eig = np.linalg.eigvalsh(H)
        scale = (2.0 * float(np.linalg.norm(b)) / np.sqrt(max(eig[0], 1e-300))
                 if solution.x is None else 2.0 * float(np.max(solution.x, initial=0.0)))
        radius = max(scale, 1.0)
        x0 = np.ones(self.A.shape[1])
        c = -self.A.T @ b
        At = torch.from_numpy(self.A)

        def forward(n_steps, tol, tau, sigma):
            x, n, r = kernels.bregman_quadratic(H, c, x0.reshape(1, -1), kernels.ENTROPY, tau,
                                                n_steps, tol)
            return (x.ravel(),), n, r

        return Mirror(kind="entropy", scheme="gradient", start=(x0,),
                      step_size=1.0 / (max(eig[-1], 1e-300) * radius),
                      gradient=lambda x, b: At.T @ (At @ x - _bare(b)), forward=forward,
                      info={"method": "entropic mirror descent"})

    # closed forms ---------------------------------------------------------------------
    def analytic_vjp(self, solution, v):
        """``A_F (A_F^T A_F)^{-1} v_F`` (one row of the batched kernel)."""
        b = np.asarray(_bare(solution.theta), dtype=np.float64)
        grads, _ = self.vjp_batch(b[None], solution.x[None],
                                  np.asarray(v, dtype=np.float64)[None])
        return (grads[0][0],)

    def solve_batch(self, B):
        """Solve every row of ``B`` (r, m); return ``X`` (r, n)."""
        kernel = _kernel("qp", "nnls_lawson_hanson", B.shape[0], self.A.size)
        X, _, _, ok = kernel(self.A, np.ascontiguousarray(B), self.dual_tol, self.max_iter)
        if not np.all(ok):
            warnings.warn(f"NNLS: {int(np.sum(~ok))} rows hit max_iter={self.max_iter}; "
                          "raise max_iter", ConvergenceWarning, stacklevel=3)
        return X

    def vjp_batch(self, B, X, V):
        """``((grad_B,), margins)``."""
        kernel = _kernel("qp", "nnls_active_vjp", B.shape[0], self.A.size)
        G, margins, ok = kernel(self.A, np.ascontiguousarray(B), np.ascontiguousarray(X),
                                np.ascontiguousarray(V), _ACTIVE_TOL)
        if not np.all(ok):
            raise SingularSystemError(
                f"NNLS: A restricted to the positive entries is rank-deficient in "
                f"{int(np.sum(~ok))} row(s) (x* not unique); use Implicit(pinv=True) for the "
                "minimum-norm gradient or Implicit(damping=1e-8)")
        return (G,), margins
