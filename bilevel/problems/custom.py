r"""User-defined smooth energies written in torch.

.. math:: x^*(\theta) = \arg\min_x E(x, \theta)

solved by SciPy's L-BFGS-B on torch gradients, polished by a few Newton-CG steps on
torch Hessian-vector products; ``grad_x E`` is the optimality residual
and, given a step size, ``x - eta grad_x E`` the fixed-point map.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from bilevel._autograd import pullback
from bilevel._registry import register_problem
from bilevel._types import ConvergenceWarning, as_tuple
from bilevel.problems.base import Problem, check_array

__all__ = ["Smooth"]

# Newton steps after L-BFGS when it stalls above tol.
_NEWTON_POLISH = 5


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
        Tolerance on ``||grad_x E||_inf``.
    max_iter : int
        L-BFGS iterations.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.Smooth(lambda x, t: ((x - t) ** 2).sum() + (x ** 4).sum(), np.zeros(2))
    >>> x = prob.solve(np.array([1.0, 2.0])).x
    >>> bool(np.allclose(x + 2 * x**3, [1.0, 2.0]))    # stationarity: x + 2 x^3 = theta
    True
    """

    name = "smooth"
    capabilities = frozenset({"optimality", "energy", "dual"})

    def __init__(self, energy, x0, step_size=None, tol=1e-11, max_iter=1000):
        if not callable(energy):
            raise TypeError(f"energy must be callable energy(x, theta), got {energy!r}")
        self._energy = energy
        self.x0 = check_array(x0, "x0")
        if step_size is not None:
            if not (np.isfinite(step_size) and step_size > 0):
                raise ValueError(f"step_size must be finite and > 0, got {step_size}")
            self.capabilities = Smooth.capabilities | {"step"}
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        self.step_size, self.tol, self.max_iter = step_size, float(tol), int(max_iter)

    def check_theta(self, theta):
        """Any finite arrays; a bare array or a tuple of them."""
        parts = as_tuple(theta)
        names = ["theta"] if len(parts) == 1 else [f"theta[{i}]" for i in range(len(parts))]
        return tuple(check_array(t, n) for t, n in zip(parts, names))

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
            (grad,) = torch.autograd.grad(value, x)
            return float(value.detach()), grad.numpy().ravel().astype(np.float64)

        result = scipy.optimize.minimize(
            fun, x0.ravel(), jac=True, method="L-BFGS-B",
            options={"maxiter": self.max_iter, "gtol": self.tol, "ftol": 0.0, "maxcor": 20})
        x, n_iter = result.x, result.nit
        grad = fun(x)[1]
        # L-BFGS stalls once energy decreases fall below round-off (gradients ~1e-8);
        # Newton steps with CG on Hessian-vector products finish the job quadratically.
        for _ in range(_NEWTON_POLISH):
            residual = np.max(np.abs(grad))
            if residual <= self.tol:
                break
            step = _newton_step(self, x.reshape(shape), theta_t, grad)
            candidate = x - step
            new_grad = fun(candidate)[1]
            if not np.max(np.abs(new_grad)) < residual:
                break
            x, grad, n_iter = candidate, new_grad, n_iter + 1
        return x.reshape(shape), n_iter, float(np.max(np.abs(grad)))

    # torch maps -----------------------------------------------------------------------
    def energy(self, x, theta):
        """Evaluate the user's energy, checked to be a scalar tensor."""
        value = self._energy(x, theta)
        if not (isinstance(value, torch.Tensor) and value.numel() == 1):
            raise ValueError("energy(x, theta) must return a scalar torch tensor, "
                             f"got {type(value).__name__}")
        return value.reshape(())

    def optimality(self, x, theta):
        """``grad_x E(x, theta)``, differentiable in x and theta."""
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_()
            (grad,) = torch.autograd.grad(self.energy(x_in, theta), x_in, create_graph=True)
        return grad

    def step(self, x, theta):
        """Gradient step ``x - eta grad_x E`` (only with ``step_size``)."""
        return x - self.step_size * self.optimality(x, theta)

    def dual(self, solution):
        """Return ``grad p(theta) = grad_theta E(x*, theta)`` (the envelope theorem) as a Dual."""
        from bilevel._types import Dual, like_structure

        parts = tuple(torch.tensor(np.asarray(t, np.float64), requires_grad=True)
                      for t in as_tuple(solution.theta))
        with torch.enable_grad():
            value = self.energy(torch.from_numpy(solution.x), like_structure(parts,
                                                                             solution.theta))
            grads = pullback(value, parts, np.ones(()))
        return Dual(value=float(value.detach()), gradient=like_structure(grads, solution.theta),
                    y=np.concatenate([np.ravel(g) for g in grads]),
                    gap=float(solution.info.get("residual", 0.0)),
                    info={"method": "envelope theorem"})


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


def _tensors(theta):
    """Float64 tensors in theta's structure."""
    if isinstance(theta, tuple):
        return tuple(torch.from_numpy(t) for t in theta)
    return torch.from_numpy(theta)
