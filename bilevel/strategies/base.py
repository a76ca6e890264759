"""The strategy interface and the torch plumbing strategies share.

A strategy computes the VJP of the solution map, ``(dx*/dtheta)^T v``, at a solved
:class:`~bilevel.Solution`. It is a frozen dataclass: knobs as fields, a ``name``, the
problem capabilities it ``requires``, and one method
``vjp(problem, solution, v, warm_start=None) -> (grad_theta, info)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from bilevel._types import ConvergenceWarning, as_tuple, like_structure

__all__ = ["Strategy", "step_hooks", "theta_tensors", "warn_if_unconverged"]


@dataclass(frozen=True)
class Strategy:
    """Base class: subclasses set ``name``, ``requires`` and implement ``vjp``.

    Iterative strategies set ``iterative = True`` and implement ``with_budget(k)``: a copy
    limited to ``k`` units of work (iterations, steps, terms), so that
    :func:`bilevel.compare` can trace the error against the work.
    """

    name: ClassVar[str] = "strategy"
    requires: ClassVar[frozenset] = frozenset()
    iterative: ClassVar[bool] = False

    def vjp(self, problem, solution, v, warm_start=None):
        """Return ``((dx*/dtheta)^T v, info)``, the gradient in theta's structure.

        ``warm_start`` is a previous call's ``info["warm_start"]`` (an adjoint), which
        strategies that solve a linear system use as their starting point.
        """
        raise NotImplementedError

    def jvp(self, problem, solution, dtheta):
        """Forward mode: return ``((dx*/dtheta) dtheta, info)``, shaped like ``x*``.

        Only strategies that override it have a forward mode.
        """
        raise NotImplementedError

    def with_budget(self, budget):
        """Return a copy of this strategy limited to ``budget`` units of work (iterative ones)."""
        raise NotImplementedError(f"{self.name} has no iteration budget")


def theta_tensors(theta, requires_grad=False):
    """Float64 tensors for theta: ``(tuple_of_tensors, structured)``."""
    parts = tuple(torch.tensor(np.asarray(t, dtype=np.float64), requires_grad=requires_grad)
                  for t in as_tuple(theta))
    return parts, like_structure(parts, theta)


def step_hooks(problem):
    """Return ``(init_state, solution_state, output)`` of a problem's ``step`` iteration.

    ``step`` maps a state ``z`` to the next; for most problems the state is ``x`` itself.
    A problem whose iteration carries more (a primal-dual pair, e.g.
    :class:`~bilevel.problems.TV2D`) defines ``step_init(parts)`` (the start ``z_0``),
    ``step_state(solution)`` (``z*``) and ``step_output(z, theta)`` (``x`` read off ``z``,
    in torch).
    """
    init_state = getattr(problem, "step_init", problem.init)
    solution_state = getattr(problem, "step_state", lambda solution: solution.x)
    output = getattr(problem, "step_output", lambda z, theta: z)
    return init_state, solution_state, output


def warn_if_unconverged(strategy, solution):
    """Warn that differentiating at an inexact ``x*`` gives an inexact hypergradient."""
    if not solution.converged:
        warnings.warn(
            f"{strategy.name}: the lower-level solution did not converge (residual "
            f"{solution.info.get('residual', float('nan')):.1e}); the hypergradient is only as "
            "accurate as x*. Tighten the problem's tol or raise max_iter.",
            ConvergenceWarning, stacklevel=3)
