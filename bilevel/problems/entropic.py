r"""The softmax as an argmin: entropy-regularized linear maximization over the simplex.

.. math:: x^*(z) = \arg\min_{x \in \Delta_n} -\langle z, x\rangle + \sum_i x_i \log x_i
          = \mathrm{softmax}(z), \qquad
          \frac{\partial x^*}{\partial z} = \mathrm{diag}(x^*) - x^* x^{*\top}

over the last axis of ``z``. The entropy keeps ``x*`` in the interior of the simplex, so
only the equality ``sum x = 1`` is active: the KKT conditions are
``log x - z + (1 + nu) 1 = 0`` and ``1^T x = 1``.
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel.problems.base import Problem, check_array

__all__ = ["EntropicSimplex"]

_PARALLEL_MIN = 200_000


def _kernel(name, Z):
    from bilevel.solvers import projections

    return getattr(projections, name + ("_batched" if Z.size >= _PARALLEL_MIN else "_rows"))


@register_problem
class EntropicSimplex(Problem):
    r"""``x* = argmin_{x in simplex} -<z, x> + sum x log x = softmax(z)``; theta ``z``.

    Parameters
    ----------
    step_size : float
        ``eta`` in (0, 1) of the entropic mirror-descent step offered as ``step``.

    Notes
    -----
    ``z`` has shape ``(..., n)``; ``x*`` has its shape. Capabilities:

    - ``analytic_vjp``: ``(diag(p) - p p^T) v = p * (v - <p, v>)``, row by row;
    - ``optimality``: the KKT conditions with the multiplier eliminated,

      .. math:: F(x, z) = (\log x - z) - \mathrm{mean}(\log x - z)\,1 + (1^\top x - 1)\,1,

      zero exactly at ``softmax(z)``, with ``d_x F = (I - 1 1^T / n) diag(1/x) + 1 1^T``
      invertible, so that :class:`~bilevel.strategies.Implicit` applies;
    - ``step``: entropic mirror descent (exponentiated gradient) on the energy,
      ``T(x, z) = softmax((1 - eta) log x + eta z)``, whose fixed point is ``x*`` and whose
      Jacobian at ``x*`` has spectral radius ``1 - eta`` (``FixedPoint``, ``Unroll``);
    - ``energy``.

    :class:`bilevel.torch.Layer` uses the batched numba fast path (``analytic``).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.EntropicSimplex()
    >>> np.round(prob.solve(np.log(np.array([1.0, 2.0, 5.0]))).x, 12)
    array([0.125, 0.25 , 0.625])

    References
    ----------
    A. Beck, M. Teboulle, "Mirror descent and nonlinear projected subgradient methods for
    convex optimization", Oper. Res. Lett. 2003. S. Gould, R. Hartley, D. Campbell,
    "Deep Declarative Networks", IEEE TPAMI 2021 (equality-constrained nodes, Prop. 4.5).
    """

    name = "entropic_simplex"
    theta_ndim = (1,)
    capabilities = frozenset({"analytic_vjp", "optimality", "step", "energy"})
    batch_strategies = frozenset({"analytic"})
    tol = 1e-12

    def __init__(self, step_size=0.5):
        if not (0.0 < step_size < 1.0):
            raise ValueError(f"step_size must be in (0, 1), got {step_size!r}")
        self.step_size = float(step_size)

    def __repr__(self):
        return f"EntropicSimplex(step_size={self.step_size})"

    def check_theta(self, theta):
        """``z`` of shape ``(..., n)``, ``n >= 1``, finite."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError("EntropicSimplex takes theta = z, one array of scores")
            theta = theta[0]
        z = check_array(theta, "z")
        if z.ndim < 1 or z.shape[-1] < 1:
            raise ValueError(f"z must have at least one dimension with >= 1 entries (the "
                             f"simplex is along the last axis), got shape {z.shape}")
        return (z,)

    def init(self, parts):
        """Start at the uniform distribution (for ``step``)."""
        z = parts[0]
        return np.full(z.shape, 1.0 / z.shape[-1])

    def _solve(self, theta, x0):
        z = theta[0] if isinstance(theta, tuple) else theta
        Z = np.ascontiguousarray(z.reshape(-1, z.shape[-1]))
        P = _kernel("softmax", Z)(Z)
        return P.reshape(z.shape), 1, float(np.abs(P.sum(axis=1) - 1.0).max()), {}

    # torch maps ---------------------------------------------------------------------
    def energy(self, x, theta):
        """``-<z, x> + sum x log x`` (summed over rows)."""
        z = theta[0] if isinstance(theta, tuple) else theta
        return torch.sum(-z * x + x * torch.log(x))

    def optimality(self, x, theta):
        """``(log x - z) - mean(log x - z) + (sum x - 1)``, row by row (class docstring)."""
        z = theta[0] if isinstance(theta, tuple) else theta
        d = torch.log(x) - z
        return d - d.mean(dim=-1, keepdim=True) + (x.sum(dim=-1, keepdim=True) - 1.0)

    def step(self, x, theta):
        """Entropic mirror descent ``softmax((1 - eta) log x + eta z)``."""
        z = theta[0] if isinstance(theta, tuple) else theta
        eta = self.step_size
        return torch.softmax((1.0 - eta) * torch.log(x) + eta * z, dim=-1)

    # structure ------------------------------------------------------------------------
    def analytic_vjp(self, solution, v):
        """``p * (v - <p, v>)`` row by row."""
        P = solution.x
        n = P.shape[-1]
        Pr = np.ascontiguousarray(P.reshape(-1, n))
        V = np.ascontiguousarray(np.asarray(v, np.float64).reshape(-1, n))
        return (_kernel("softmax_vjp", Pr)(Pr, V).reshape(P.shape),)

    # batched fast path for bl.torch.Layer -----------------------------------------------
    def solve_batch(self, Z):
        """Softmax of every row of ``Z`` (b, n)."""
        return _kernel("softmax", Z)(Z)

    def vjp_batch(self, Z, P, V):
        """``((P * (V - <P, V>),), margins)``: smooth everywhere, margins ``inf``."""
        return (_kernel("softmax_vjp", P)(P, V),), np.full(P.shape[0], np.inf)
