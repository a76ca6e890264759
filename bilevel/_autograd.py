"""Vector-Jacobian products through torch autograd, shared by strategies and problems."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["envelope", "pullback", "scalar_tensor"]


def scalar_tensor(value, name):
    """``value`` as a 0-d tensor; a ValueError naming the user's map ``name`` otherwise."""
    if not (isinstance(value, torch.Tensor) and value.numel() == 1):
        raise ValueError(f"{name}(x, theta) must return a scalar torch tensor, got "
                         f"{type(value).__name__} {getattr(value, 'shape', '')}".rstrip())
    return value.reshape(())


def pullback(output, inputs, cotangent, *, retain_graph=False):
    """``(d output / d inputs)^T cotangent`` as NumPy arrays (zeros where unused).

    The product is taken as the gradient of the scalar ``<output, cotangent>``: the same
    VJP as passing ``grad_outputs``, without torch's lazy import of its symbolic-shapes
    machinery on that path (0.7 s on a process's first call).

    Parameters
    ----------
    output : Tensor
    inputs : tuple of Tensor
    cotangent : ndarray, with ``output``'s number of elements
    retain_graph : bool
        Keep the graph for further products (Krylov iterations).
    """
    if not output.requires_grad:        # no input enters the output
        return tuple(np.zeros(tuple(t.shape)) for t in inputs)
    w = torch.from_numpy(np.ascontiguousarray(cotangent, dtype=np.float64).reshape(output.shape))
    with torch.enable_grad():           # the product must join the graph in any mode
        grads = torch.autograd.grad((output * w).sum(), inputs, retain_graph=retain_graph,
                                    allow_unused=True)
    return tuple(np.zeros(tuple(t.shape)) if g is None else g.detach().numpy()
                 for g, t in zip(grads, inputs))


def envelope(fn, solution, *, gradient=True):
    r"""``(fn(x*, theta), grad_theta fn(x*, theta))`` at a fixed minimizer ``x*``.

    The envelope (Danskin) theorem: for ``p(theta) = min_x E(x, theta)`` with a unique
    minimizer, ``grad p(theta) = grad_theta E(x*, theta)``; with ``fn`` a Lagrangian at
    fixed multipliers it is the value gradient of a constrained problem.

    Parameters
    ----------
    fn : callable
        ``(x, theta) -> scalar tensor``.
    solution : Solution
        ``x*`` and theta (in the caller's structure).
    gradient : bool
        False skips the gradient (returns None for it).
    """
    from bilevel._types import as_tuple, like_structure

    parts = tuple(torch.tensor(np.asarray(t, np.float64), requires_grad=gradient)
                  for t in as_tuple(solution.theta))
    x = torch.from_numpy(np.asarray(solution.x, dtype=np.float64))
    with torch.enable_grad():
        value = fn(x, like_structure(parts, solution.theta)).reshape(())
        grads = pullback(value, parts, np.ones(())) if gradient else None
    return float(value.detach()), (like_structure(grads, solution.theta) if gradient else None)
