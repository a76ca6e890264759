"""The strategy interfaces and the torch plumbing strategies share.

A strategy computes the VJP of the solution map, ``(dx*/dtheta)^T v``, at a solved
:class:`~bilevel.Solution`. It is a frozen dataclass: knobs as fields, a ``name``, the
problem capabilities it ``requires``, and one method
``vjp(problem, solution, v, warm_start=None) -> (grad_theta, info)``, plus its batched form
``vjp_batch`` for :class:`bilevel.torch.Layer`. A value strategy computes the gradient of
the optimal value ``p(theta) = min_x E(x, theta)`` instead (:func:`bilevel.value_gradient`).
Both read a problem only through its typed ``capabilities``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from bilevel._registry import register_base
from bilevel._types import ConvergenceWarning, DegeneracyWarning, as_tuple, like_structure

__all__ = ["Strategy", "ValueStrategy", "kernel_vjp_batch", "theta_tensors",
           "warn_degenerate_rows", "warn_if_unconverged"]


@register_base("strategy")
@dataclass(frozen=True)
class Strategy:
    """Base class: subclasses set ``name``, ``requires`` and implement ``vjp``.

    Iterative strategies set ``iterative = True`` and implement ``with_budget(k)``: a copy
    limited to ``k`` units of work (iterations, steps, terms), so that
    :func:`bilevel.compare` can trace the error against the work. Strategies whose ``vjp``
    accepts ``v`` as a :class:`~bilevel._types.LazyGradient` and reads only some of its
    coordinates set ``reads_coordinates = True``; :func:`bilevel.hypergradient` then lets a
    ready loss on linear predictions compute only those entries of its gradient.
    """

    name: ClassVar[str] = "strategy"
    requires: ClassVar[frozenset | tuple] = frozenset()
    iterative: ClassVar[bool] = False
    reads_coordinates: ClassVar[bool] = False

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

    def batch_kernel(self, problem):
        """Return the problem's batched VJP kernel this strategy uses, or None (row by row).

        When it is not None, a batch is solved by the problem's batched solve
        (``capabilities.batch.solve``) and differentiated by that kernel.
        """
        return None

    def vjp_batch(self, problem, batch, V):
        """VJPs of every row of a :class:`~bilevel.BatchSolution`: ``(grads, info)``.

        ``V`` is ``(B, *x.shape)``; ``grads`` a tuple over theta's parts of ``(B, ...)``
        arrays. The default applies :meth:`vjp` to each row's solution, with every knob,
        in torch's grad mode (a layer's backward pass runs without it, and strategies may
        build torch graphs); an override that builds them enables it too.
        """
        if batch.solutions is None:
            raise ValueError(f"{self.name}: this batch was solved by the problem's batched "
                             "kernel and carries no per-row solutions")
        with torch.enable_grad():
            rows = [as_tuple(self.vjp(problem, sol, V[b])[0])
                    for b, sol in enumerate(batch.solutions)]
        grads = tuple(np.stack([np.asarray(r[k], dtype=np.float64) for r in rows])
                      for k in range(len(batch.parts)))
        return grads, {"rows": len(rows), "batched": False}


@register_base("value")
@dataclass(frozen=True)
class ValueStrategy:
    """Base class of value strategies: the gradient of ``p(theta) = min_x E(x, theta)``.

    Subclasses set ``name``, ``requires`` and implement ``value_gradient(problem, solution)
    -> (p, grad_p, info)``.
    """

    name: ClassVar[str] = "value_strategy"
    requires: ClassVar[frozenset | tuple] = frozenset()
    iterative: ClassVar[bool] = False

    def value_gradient(self, problem, solution):
        """Return ``(p(theta), grad p(theta), info)``, the gradient in theta's structure."""
        raise NotImplementedError

    def with_budget(self, budget):
        """Return a copy limited to ``budget`` units of work (iterative ones)."""
        raise NotImplementedError(f"{self.name} has no iteration budget")


def theta_tensors(theta, requires_grad=False):
    """Float64 tensors for theta: ``(tuple_of_tensors, structured)``."""
    parts = tuple(torch.tensor(np.asarray(t, dtype=np.float64), requires_grad=requires_grad)
                  for t in as_tuple(theta))
    return parts, like_structure(parts, theta)


def warn_if_unconverged(strategy, solution):
    """Warn that differentiating at an inexact ``x*`` gives an inexact hypergradient."""
    if not solution.converged:
        warnings.warn(
            f"{strategy.name}: the lower-level solution did not converge (residual "
            f"{solution.info.get('residual', float('nan')):.1e}); the hypergradient is only as "
            "accurate as x*. Tighten the problem's tol or raise max_iter.",
            ConvergenceWarning, stacklevel=3)


def kernel_vjp_batch(strategy, problem, batch, V, margin_tol, *args):
    """VJPs of a batch by the strategy's batched kernel (``*args`` after ``(batch, V)``).

    Falls back to the row-by-row default when there is no kernel or the batch was solved
    row by row; warns on rows whose margin is at or below ``margin_tol``.
    """
    kernel = strategy.batch_kernel(problem)
    if kernel is None or batch.solutions is not None:
        return Strategy.vjp_batch(strategy, problem, batch, V)
    grads, margins = kernel(batch, V, *args)
    warn_degenerate_rows(strategy.name, margins, margin_tol)
    return tuple(grads), {"rows": len(batch.x), "batched": True, "margins": margins}


def warn_degenerate_rows(name, margins, tol):
    """Warn when batch rows sit at a kink of the solution map (margin ``<= tol``)."""
    margins = np.asarray(margins)
    degenerate = np.count_nonzero(margins <= tol)     # no reduction: cheaper in a layer
    if degenerate:
        warnings.warn(f"{name}: {degenerate} of {margins.size} batch rows are "
                      f"degenerate (margin <= {tol:.0e}): the gradient is one one-sided "
                      "derivative there", DegeneracyWarning, stacklevel=5)
