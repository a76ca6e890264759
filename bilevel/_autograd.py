"""Vector-Jacobian products through torch autograd, shared by strategies and problems."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["pullback"]


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
    w = torch.from_numpy(np.ascontiguousarray(cotangent, dtype=np.float64).reshape(output.shape))
    grads = torch.autograd.grad((output * w).sum(), inputs, retain_graph=retain_graph,
                                allow_unused=True)
    return tuple(np.zeros(tuple(t.shape)) if g is None else g.detach().numpy()
                 for g, t in zip(grads, inputs))
