r"""The user's own energies, written in torch: smooth ones and constrained ones.

.. math:: x^*(\theta) = \arg\min_x E(x, \theta) \qquad\text{and}\qquad
          x^*(\theta) = \arg\min_x f(x, \theta) \ \text{ s.t. } h(x, \theta) = 0,\
          g(x, \theta) \le 0

:class:`Smooth` is solved by SciPy's L-BFGS-B on torch gradients, polished by a few
Newton-CG steps on torch Hessian-vector products; ``grad_x E`` is the optimality residual
and, given a step size, ``x - eta grad_x E`` the fixed-point map. :class:`Constrained` is
solved by SciPy (SLSQP or trust-constr) and polished by Newton steps on the Lagrangian
residual of its working set (:mod:`bilevel.problems.kkt`), which also gives implicit
differentiation its KKT system (Gould, Hartley, Campbell, "Deep Declarative Networks",
TPAMI 2021, Propositions 4.5-4.6).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from bilevel._autograd import pullback, scalar_tensor
from bilevel._registry import register_problem
from bilevel._threads import serial_blas
from bilevel._types import (
    Batch,
    ConvergenceWarning,
    Optimality,
    SingularSystemError,
    StepMap,
    as_tuple,
)
from bilevel.problems.base import Capabilities, Problem, check_array
from bilevel.problems.kkt import KKT, active_set

__all__ = ["Constrained", "Smooth"]

# Newton steps after L-BFGS when it stalls above tol.
_NEWTON_POLISH = 5
# Smooth's second-order check at x*: dense Hessians up to this size (x.size HVPs), and the
# relative size of a negative eigenvalue that is no round-off (sqrt of float64's epsilon).
_CURVATURE_MAX_SIZE = 256
_CURVATURE_RTOL = 1.5e-8
# Up to this size the Hessian's columns are taken one product at a time (no vmap to load).
_CURVATURE_LOOP_SIZE = 32
# An unconverged Smooth solve whose iterate grew this many times beyond max(|x0|, 1) reports
# an energy unbounded below.
_RUNAWAY = 1e8
# A constraint with slack <= _ACTIVE_TOL max(1, ||x||_inf) is active (the default of
# Implicit's active_tol, so that the closed forms and the generic KKT solve agree).
_ACTIVE_TOL = 1e-9
# Slack below which Constrained's Newton polish considers an inequality (with a positive
# multiplier) as active.
_NEAR_ACTIVE = 1e-6
# Constraint violation above which Constrained reports the problem as infeasible.
_INFEASIBLE_TOL = 1e-6


# Why a user's energy lacks a capability (Capabilities.why_not).
_NOT_A_SURROGATE = ("x* of a general energy is a smooth map of theta with its exact derivative "
                    "(implicit), and x need not approximate theta (nor share its shape): no "
                    "identity backward")
_SMOOTH_WHY_NOT = {
    "analytic_vjp": "a user energy has no closed-form Jacobian: its derivative is implicit "
                    "differentiation of grad_x E (implicit)",
    "manifold": "the energy is smooth: x* has no active manifold but the whole space, on "
                "which partial smoothness is implicit differentiation (implicit)",
    "mirror": "x is unconstrained: there is no constraint set for a Legendre function, and "
              "the Euclidean Bregman step is the gradient step (step, given a step_size)",
    "straight_through": _NOT_A_SURROGATE,
    "dual": "a user energy declares no convex dual (joint convexity in (x, theta) is not "
            "known): its value's gradient is the envelope theorem's grad_theta E(x*, theta) "
            "(envelope)",
    "constraints": "x is unconstrained: no KKT system (implicit differentiates grad_x E)",
}
_NO_STEP_SIZE = ("no step_size given: the gradient step x - eta grad_x E is a contraction only "
                 "for eta < 2/L, and the Lipschitz constant L of a user energy is unknown "
                 "(pass step_size)")
_CONSTRAINED_WHY_NOT = {
    "optimality": "x* is constrained: its stationarity carries the multipliers (the KKT "
                  "system of constraints, implicit), not a residual in x alone",
    "analytic_vjp": "user constraints have no closed-form Jacobian: implicit differentiates "
                    "their KKT system",
    "manifold": "partial smoothness on the active set {h = 0, g_A = 0} of user constraints "
                "is the reduced form of the KKT system implicit solves (a curved manifold in "
                "general, whose restricted Hessian needs the multipliers' curvature terms)",
    "step": "a projected step needs the projection onto the user's feasible set, which has no "
            "closed form (and an SLSQP or trust-constr iteration is no smooth map)",
    "mirror": "no Legendre function with a closed-form mirror step is known for a user's "
              "feasible set",
    "straight_through": _NOT_A_SURROGATE.replace("(implicit)", "(implicit, on its KKT system)"),
}


def _user_call(fn, name, x, theta):
    """``fn(x, theta)``; torch's shape errors become a ValueError naming the user's map."""
    try:
        return fn(x, theta)
    except (RuntimeError, IndexError) as exc:
        shapes = [tuple(t.shape) for t in as_tuple(theta)]
        raise ValueError(f"{name}(x, theta) failed on x of shape {tuple(x.shape)} and theta "
                         f"of shape(s) {shapes}: {exc}; check that theta (and x0) have the "
                         f"shapes {name} expects") from exc


def _check_knobs(step_size, tol, max_iter):
    """Return ``(step_size, tol, max_iter)`` validated: None or > 0, > 0, >= 1."""
    if step_size is not None and not (np.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be finite and > 0, got {step_size}")
    if not (tol > 0 and max_iter >= 1):
        raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
    return step_size, float(tol), int(max_iter)


def _check_theta_ndim(theta_ndim):
    """Return a user's instance dimensions, or None; a :class:`~bilevel.Batch` for the layer."""
    if theta_ndim is None:
        return None
    return Batch(theta_ndim=tuple(int(d) for d in np.atleast_1d(theta_ndim)))


def _check_theta_parts(theta):
    parts = as_tuple(theta)
    names = ["theta"] if len(parts) == 1 else [f"theta[{i}]" for i in range(len(parts))]
    return tuple(check_array(t, n) for t, n in zip(parts, names))



@register_problem
class Smooth(Problem):
    """A smooth, locally strongly convex energy ``energy(x, theta)`` written in torch.

    Parameters
    ----------
    energy : callable
        ``energy(x, theta) -> scalar tensor``; ``x`` is a float64 tensor shaped like
        ``x0`` and ``theta`` a tensor or a tuple of tensors, as passed to ``solve``.
    x0 : array_like
        Default starting point; fixes the shape of ``x``.
    step_size : float, optional
        A step ``eta < 2 / L`` (``L`` the Lipschitz constant of ``grad_x E``). Given, the
        problem offers the ``step`` capability (``x - eta grad_x E``) for unrolling and
        fixed-point strategies.
    tol : float
        Tolerance on ``||grad_x E(x)||_inf / ||grad_x E(x0)||_inf`` (relative to the
        energy's own scale at the constructor's ``x0``, or at a warm start if larger:
        ``c E`` has the minimizer of ``E`` for every ``c > 0``).
    max_iter : int
        L-BFGS iterations.
    theta_ndim : tuple of int, optional
        Dimensions of one instance's theta parts, for batches in
        :class:`bilevel.torch.Layer` (``(1,)``: theta a vector, leading dimensions batch).

    Notes
    -----
    Capabilities: ``optimality`` (``grad_x E`` by autograd), ``energy``, ``step`` with
    ``step_size``, ``batch`` with ``theta_ndim``.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.Smooth(lambda x, t: ((x - t) ** 2).sum() + (x ** 4).sum(), np.zeros(2))
    >>> x = prob.solve(np.array([1.0, 2.0])).x
    >>> bool(np.allclose(x + 2 * x**3, [1.0, 2.0]))    # stationarity: x + 2 x^3 = theta
    True
    """

    name = "smooth"

    def __init__(self, energy, x0, step_size=None, tol=1e-11, max_iter=1000, theta_ndim=None):
        if not callable(energy):
            raise TypeError(f"energy must be callable energy(x, theta), got {energy!r}")
        self._energy = energy
        self.x0 = check_array(x0, "x0")
        self.step_size, self.tol, self.max_iter = _check_knobs(step_size, tol, max_iter)
        self._batch = _check_theta_ndim(theta_ndim)

    def __repr__(self):
        return f"Smooth(x0 of shape {self.x0.shape}, step_size={self.step_size})"

    def offers(self):
        """``grad_x E`` as the optimality residual, the energy; a gradient step with a step size."""
        why_not = dict(_SMOOTH_WHY_NOT)
        if self.step_size is None:
            why_not["step"] = _NO_STEP_SIZE
        return Capabilities(
            optimality=Optimality(self.optimality), energy=self.energy,
            step=None if self.step_size is None else StepMap(self.step, start=self.init),
            batch=self._batch, why_not=why_not)

    @classmethod
    def examples(cls):
        """Return a quartic energy in a tuple theta ``(a, b)``, without and with a step size."""
        def quartic(x, t):
            return 0.5 * (x @ x) * t[0] - t[1] @ x + 0.1 * (x**4).sum()

        theta = (np.asarray(2.0), np.array([1.0, -1.0, 0.5]))
        # tol 1e-12 (Newton-polished): finite differences divide solver error by h ~ 7e-4.
        return [("smooth-tuple", cls(quartic, np.zeros(3), step_size=0.2, tol=1e-12), theta),
                ("smooth-no_step", cls(quartic, np.zeros(3), tol=1e-12), theta)]

    def check_theta(self, theta):
        """Any finite arrays; a bare array or a tuple of them."""
        return _check_theta_parts(theta)

    def init(self, parts):
        """``x0``."""
        return self.x0.copy()

    def _solve(self, theta, x0):
        import scipy.optimize  # deferred: keeps `import bilevel` light

        theta_t = _tensors(theta)
        shape = x0.shape

        def fun(flat):
            x = torch.from_numpy(flat.reshape(shape)).requires_grad_()
            value = self.energy(x, theta_t)
            grad = (torch.autograd.grad(value, x, allow_unused=True)[0]
                    if value.requires_grad else None)
            if grad is None:
                raise ValueError("energy does not depend on x (its value carries no gradient "
                                 "in x): write it with torch operations on x, not on a copy")
            return float(value.detach()), grad.numpy().ravel().astype(np.float64)

        value, grad = fun(x0.ravel())
        if not (np.isfinite(value) and np.all(np.isfinite(grad))):
            raise ValueError(f"energy or its gradient is not finite at the starting point "
                             f"(energy={value}): check the energy, or start elsewhere (init, x0)")
        # The energy's own gradient scale, its gradient at the problem's x0 (and at a warm
        # start, which alone may be nearly stationary): tol is relative to it, so that
        # c E(x, theta) has the minimizer of E for any c > 0, warm-started or not.
        at_x0 = grad if np.array_equal(x0, self.x0) else fun(self.x0.ravel())[1]
        gscale = max(float(np.max(np.abs(grad), initial=0.0)),
                     float(np.max(np.abs(at_x0), initial=0.0, where=np.isfinite(at_x0)))
                     ) or 1.0
        with serial_blas():
            result = scipy.optimize.minimize(
                fun, x0.ravel(), jac=True, method="L-BFGS-B",
                options={"maxiter": self.max_iter, "gtol": self.tol * gscale, "ftol": 0.0,
                         "maxcor": 20})
        x, n_iter = result.x, result.nit
        value, grad = fun(x)
        if not (np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(x))):
            raise ValueError(f"energy ran to {value} along the solver's iterates: it is "
                             "unbounded below (no minimizer) or undefined there; bound it "
                             "(add a strongly convex term) or restrict x")
        # L-BFGS stalls once energy decreases fall below round-off (gradients ~1e-8);
        # Newton steps with CG on Hessian-vector products finish the job quadratically.
        for _ in range(_NEWTON_POLISH):
            residual = np.max(np.abs(grad)) / gscale
            if residual <= self.tol:
                break
            try:
                step = _newton_step(self, x.reshape(shape), theta_t, grad)
            except SingularSystemError:     # flat or negative curvature: no Newton step
                break
            candidate = x - step
            new_grad = fun(candidate)[1]
            if not np.max(np.abs(new_grad)) / gscale < residual:
                break
            x, grad, n_iter = candidate, new_grad, n_iter + 1
        x, residual = x.reshape(shape), float(np.max(np.abs(grad))) / gscale
        if residual > self.tol and np.linalg.norm(x) > _RUNAWAY * max(np.linalg.norm(x0), 1.0):
            return x, n_iter, residual, {"failure": (
                f"the iterates ran away to |x| = {np.linalg.norm(x):.1e} with the energy "
                f"still decreasing ({value:.3e}): the energy looks unbounded below (no "
                "minimizer); bound it (add a strongly convex term) or restrict x")}
        return x, n_iter, residual, _curvature(self, x, theta_t)

    # torch maps -----------------------------------------------------------------------
    def energy(self, x, theta):
        """Evaluate the user's energy, checked to be a scalar tensor."""
        return scalar_tensor(_user_call(self._energy, "energy", x, theta), "energy")

    def optimality(self, x, theta):
        """``grad_x E(x, theta)``, differentiable in x and theta."""
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_()
            (grad,) = torch.autograd.grad(self.energy(x_in, theta), x_in, create_graph=True)
        return grad

    def step(self, x, theta):
        """Gradient step ``x - eta grad_x E`` (only with ``step_size``)."""
        return x - self.step_size * self.optimality(x, theta)

def _newton_step(problem, x, theta, grad):
    """``H^{-1} grad`` by CG on torch Hessian-vector products at x."""
    from bilevel.linalg import solve

    x_t = torch.from_numpy(x).requires_grad_()
    with torch.enable_grad():
        F = problem.optimality(x_t, theta)

    def hvp(w):
        return pullback(F, (x_t,), w, retain_graph=True)[0].ravel()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # the caller checks the residual
        step, _ = solve(hvp, grad, method="cg", tol=1e-12, maxiter=10 * grad.size)
    return step


def _curvature(problem, x, theta):
    """Second-order check at a stationary ``x``: ``{"min_curvature": ...}`` and a failure.

    The smallest eigenvalue of the Hessian, from the dense Hessian of ``x.size <=
    _CURVATURE_MAX_SIZE`` Hessian-vector products (larger ``x``: not checked). A negative
    one, beyond round-off relative to the largest, means ``x`` is a saddle point or a
    maximum, not a minimizer (the first-order residual cannot tell).
    """
    if x.size > _CURVATURE_MAX_SIZE:
        return {}
    x_t = torch.from_numpy(x).requires_grad_()
    with torch.enable_grad():
        F = problem.optimality(x_t, theta)
    eye = np.eye(x.size)
    H = None
    if x.size > _CURVATURE_LOOP_SIZE:   # all products in one vectorized backward pass (its
        try:                            # first use loads torch's vmap, about a second)
            (H,) = torch.autograd.grad(F, x_t, torch.from_numpy(eye.reshape((-1, *x.shape))),
                                       retain_graph=True, is_grads_batched=True)
            H = H.detach().numpy().reshape(x.size, x.size)
        except RuntimeError:            # an energy whose ops torch cannot batch
            H = None
    if H is None:
        H = np.stack([pullback(F, (x_t,), eye[i].reshape(x.shape), retain_graph=True)[0]
                      .ravel() for i in range(x.size)])
    eigs = np.linalg.eigvalsh(0.5 * (H + H.T))
    low = float(eigs[0])
    info = {"min_curvature": low}
    if low < -_CURVATURE_RTOL * max(float(np.max(np.abs(eigs))), 1e-300):
        info["failure"] = (f"x is a saddle point or a maximum, not a minimizer: the Hessian of "
                           f"the energy has eigenvalue {low:.2e} < 0 there; start from "
                           "another point (init, x0), or check that the energy is locally "
                           "convex")
    return info


def _tensors(theta):
    """Float64 tensors in theta's structure."""
    if isinstance(theta, tuple):
        return tuple(torch.from_numpy(t) for t in theta)
    return torch.from_numpy(theta)


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
    theta_ndim : tuple of int, optional
        Dimensions of one instance's theta parts, for batches in
        :class:`bilevel.torch.Layer`.

    Notes
    -----
    ``Solution.info`` holds ``nu`` (p,), ``lam`` (q,) (recovered by non-negative least
    squares from ``grad f + (d_x h)^T nu + (d_x g_A)^T lam_A = 0`` after polishing),
    ``active`` (the active inequalities) and ``violation`` (max constraint violation).
    A violation above 1e-6 after solving raises ``ValueError`` (infeasible constraints,
    or a solver failure: try a feasible ``x0`` or the other ``method``).
    Capabilities: ``constraints`` (a :class:`~bilevel.problems.kkt.KKT`), ``energy`` (the
    objective on the feasible set), ``dual`` (the multipliers: the value gradient is the
    Lagrangian's), ``batch`` with ``theta_ndim``.

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

    def __init__(self, objective, eq=None, ineq=None, x0=None, method="SLSQP", affine=False,
                 tol=1e-10, max_iter=500, theta_ndim=None):
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
        self._kkt = KKT(self.objective, None if eq is None else self.eq,
                        None if ineq is None else self.ineq, affine=affine)
        self._batch = _check_theta_ndim(theta_ndim)

    def __repr__(self):
        return (f"Constrained(eq={self._eq is not None}, ineq={self._ineq is not None}, "
                f"method={self.method!r})")

    def offers(self):
        """Return the KKT description, the objective as the energy, the multipliers as the dual."""
        return Capabilities(constraints=self._kkt, energy=self.objective, dual=self._kkt.dual,
                            batch=self._batch, why_not=_CONSTRAINED_WHY_NOT)

    @classmethod
    def examples(cls):
        """Projection onto the unit sphere with an active inequality (positive multipliers)."""
        sphere = cls(lambda x, t: ((x - t) ** 2).sum(), eq=lambda x, t: (x * x).sum() - 1.0,
                     ineq=lambda x, t: x[:1] - 0.2, x0=np.array([0.0, 1.0, 0.0]))
        return [("constrained-sphere", sphere, np.array([1.0, 0.5, 0.2]))]

    def check_theta(self, theta):
        """Any finite arrays; a bare array or a tuple of them."""
        return _check_theta_parts(theta)

    def init(self, parts):
        """``x0``."""
        return self.x0.copy()

    # torch maps -----------------------------------------------------------------------
    def objective(self, x, theta):
        """``f(x, theta)``, checked to be a scalar tensor."""
        return scalar_tensor(_user_call(self._objective, "objective", x, theta), "objective")

    def eq(self, x, theta):
        """``h(x, theta)`` as a 1-D tensor."""
        return torch.as_tensor(_user_call(self._eq, "eq", x, theta)).reshape(-1)

    def ineq(self, x, theta):
        """``g(x, theta)`` as a 1-D tensor."""
        return torch.as_tensor(_user_call(self._ineq, "ineq", x, theta)).reshape(-1)

    # solve ------------------------------------------------------------------------------
    def _solve(self, theta, x0):
        import scipy.optimize

        theta_t = _tensors(theta)
        shape = x0.shape
        cache = {}

        def ev(flat):
            key = flat.tobytes()
            if key not in cache:
                cache.clear()
                cache[key] = self._kkt.evaluate(flat.reshape(shape), theta_t)
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
        # SciPy's ftol/gtol are absolute: hand it f / s, with s the objective's own gradient
        # scale at x0, so that c f has the minimizer of f for any c > 0 (issue 17).
        s = float(np.max(np.abs(ev(x0.ravel())[1]), initial=0.0)) or 1.0
        with warnings.catch_warnings(), serial_blas():
            warnings.simplefilter("ignore")     # SciPy's own warnings; we check below
            result = scipy.optimize.minimize(
                lambda z: ev(z)[0] / s, x0.ravel(), jac=lambda z: ev(z)[1] / s,
                method=self.method, constraints=constraints, options=options)
        x = np.asarray(result.x, dtype=np.float64)
        _, gf, _, _, g, _ = ev(x)
        binding = _binding(result, self._ineq is not None, x, gf, g)
        x, (active, nu, lam, stationarity) = self._polish(x, theta_t, shape, ev, binding)
        f, gf, h, Jh, g, Jg = ev(x)
        violation = max(float(np.abs(h).max(initial=0.0)), float(g.max(initial=0.0)))
        if violation > _INFEASIBLE_TOL * max(1.0, float(np.abs(x).max(initial=0.0))):
            raise ValueError(
                f"Constrained: the constraints look infeasible at this theta: {self.method} "
                f"ended with max violation {violation:.1e} ({result.message}). Check eq and "
                "ineq, start from a feasible x0, or try method='trust-constr'")
        scale = max(float(np.abs(gf).max(initial=0.0)), s)   # the objective's own scale
        complementarity = float(np.abs(lam * g).max(initial=0.0))
        residual = max(stationarity / scale, violation, complementarity / scale)
        return x.reshape(shape), int(result.nit), residual, {
            "nu": nu, "lam": lam, "active": active, "violation": violation,
            "method": self.method, "scipy_status": int(result.status)}

    def _certificate(self, x, ev, active=None):
        """``(active, nu, lam, stationarity)`` by least squares on ``active`` (default: slack)."""
        f, gf, h, Jh, g, Jg = ev(x)
        if active is None:
            active = active_set(x, g, _ACTIVE_TOL)
        nu, lam, stationarity = self._kkt.multipliers(x, gf, h, Jh, g, Jg, active)
        return active, nu, lam, stationarity

    def _polish(self, x, theta_t, shape, ev, binding):
        """Newton steps on the Lagrangian residual of a working set; keep them if they help.

        ``binding`` (indices of inequalities) joins the working set of the first step: the
        ones SciPy's own multipliers call binding, whatever their slack (an interior-point
        method stops at slacks ~ its barrier parameter, which may exceed ``_NEAR_ACTIVE``).
        """
        best = None
        for _ in range(8):
            f, gf, h, Jh, g, Jg = ev(x)
            certificate = self._certificate(x, ev)
            lam, stationarity = certificate[2], certificate[3]
            violation = max(float(np.abs(h).max(initial=0.0)), float(g.max(initial=0.0)))
            score = max(stationarity, violation, float(np.abs(lam * g).max(initial=0.0)))
            if best is None or score < best[0]:
                best = (score, x, certificate)
            gscale = max(1.0, float(np.abs(gf).max(initial=0.0)))
            if score <= 1e-15 * gscale:
                break
            # Newton's working set: the active constraints and the nearly active ones with
            # a positive multiplier (interior-point solvers stop at slacks ~1e-8).
            xscale = max(1.0, float(np.abs(x).max(initial=0.0)))
            near = np.union1d(np.flatnonzero(g >= -_NEAR_ACTIVE * xscale), binding)
            binding = np.zeros(0, dtype=np.intp)     # later steps start from Newton's iterate
            _, nu_w, lam_w, _ = self._certificate(x, ev, near)
            work = near[(lam_w[near] > 1e-10 * gscale) | (g[near] >= -_ACTIVE_TOL * xscale)]
            if work.size != near.size:
                _, nu_w, lam_w, _ = self._certificate(x, ev, work)
            mu = np.concatenate([nu_w, lam_w[work]])
            dx, _ = self._kkt.newton_step(x.reshape(shape), mu, theta_t, work)
            candidate = x + dx.ravel()
            # stay feasible for the inactive inequalities
            g_new = ev(candidate)[4]
            inactive = np.setdiff1d(np.arange(g.size), work)
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
