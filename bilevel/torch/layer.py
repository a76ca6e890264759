r"""An argmin as a torch layer: ``y = x*(theta)`` forward, the strategy's VJP backward.

Array parameters may carry leading batch dimensions beyond the problem's own
(``problem.theta_ndim``); a scalar hyperparameter is one value broadcast over the batch or
one per batch row. Computation runs in float64 NumPy/numba on the host; the output and the
gradients come back in the inputs' dtype and device (CPU or CUDA).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from bilevel._registry import check_applicable, get_strategy
from bilevel._types import DegeneracyWarning, like_structure

__all__ = ["Layer"]


class Layer(torch.nn.Module):
    """``y = Layer(problem, strategy)(*theta)``: the lower-level solution as a layer.

    Parameters
    ----------
    problem : Problem
        A problem with ``theta_ndim`` (the number of dimensions of each theta part for one
        instance, e.g. ``(1, 0)`` for a signal and a scalar).
    strategy : Strategy, str or None
        The backward pass; None picks the best applicable one. Problems with a batched
        fast path (``solve_batch``/``vjp_batch``, e.g. :class:`~bilevel.problems.TV1D`)
        use it for the strategies in their ``batch_strategies``; otherwise each batch row
        is solved and differentiated in turn.

    Examples
    --------
    >>> import torch, bilevel as bl
    >>> layer = bl.torch.Layer(bl.problems.TV1D(order=1), "analytic")
    >>> s = torch.tensor([[0.0, 0.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    >>> y = layer(s, torch.tensor(0.5))
    >>> y.shape, y.dtype
    (torch.Size([2, 4]), torch.float32)
    >>> y.sum().backward(); s.grad[0]      # averaging over segments preserves sums
    tensor([1., 1., 1., 1.])
    """

    def __init__(self, problem, strategy=None):
        super().__init__()
        if not hasattr(problem, "theta_ndim"):
            raise ValueError(f"{type(problem).__name__} has no theta_ndim: Layer needs the "
                             "dimensions of one instance's theta parts to find batch axes")
        self.problem = problem
        self.strategy = get_strategy(strategy, problem)
        check_applicable(self.strategy, problem)

    def forward(self, *theta):
        """Solve for every batch row; differentiable in every tensor of ``theta``."""
        if len(theta) != len(self.problem.theta_ndim):
            raise ValueError(f"{type(self.problem).__name__} takes {len(self.problem.theta_ndim)} "
                             f"parameter tensors, got {len(theta)}")
        theta = tuple(t if torch.is_tensor(t) else torch.as_tensor(t) for t in theta)
        if torch.is_grad_enabled() and any(t.requires_grad for t in theta):
            return _Argmin.apply(self, *theta)
        return _solve(self.problem, self.strategy, theta)[0]     # no graph to record

    def extra_repr(self):
        """Problem and strategy, for ``print(layer)``."""
        return f"problem={self.problem!r}, strategy={self.strategy.name!r}"


def _host_float64(t):
    """``t`` as a float64 NumPy array on the host (no copy when it already is one)."""
    t = t.detach()
    if t.dtype != torch.float64 or t.device.type != "cpu":
        t = t.to(device="cpu", dtype=torch.float64)
    return t.numpy()


def _batch_layout(theta, base_ndims):
    """Return the common batch shape and each part as a (B, *instance) float64 array."""
    batch_shapes = []
    for t, base in zip(theta, base_ndims):
        extra = t.ndim - base
        if extra < 0:
            raise ValueError(f"a parameter of shape {tuple(t.shape)} has fewer than its {base} "
                             "instance dimension(s)")
        batch_shapes.append(tuple(t.shape[:extra]))
    distinct = {b for b in batch_shapes if b}
    if len(distinct) <= 1:
        batch = next(iter(distinct), ())
    else:
        try:
            batch = np.broadcast_shapes(*batch_shapes)
        except ValueError as exc:
            raise ValueError(f"batch dimensions do not broadcast: {batch_shapes}") from exc
    size = math.prod(batch)
    parts = []
    for t, bshape in zip(theta, batch_shapes):
        arr = _host_float64(t)
        inst = arr.shape[len(bshape):]
        if bshape != batch:
            arr = np.broadcast_to(arr, batch + inst)
        parts.append(np.ascontiguousarray(arr.reshape((size,) + inst)))
    return batch, size, parts, batch_shapes


def _reduce(grad, batch, bshape, shape):
    """Sum a (B, *inst) gradient over the batch axes its parameter was broadcast along."""
    g = grad.reshape(batch + grad.shape[1:])
    lead = len(batch) - len(bshape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, (a, b) in enumerate(zip(bshape, g.shape)) if a == 1 and b != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _solve(problem, strategy, theta):
    """Solve every batch row: ``(output tensor, (batch, parts, bshapes, fast, Y, solutions))``."""
    batch, size, parts, bshapes = _batch_layout(theta, problem.theta_ndim)
    fast = (hasattr(problem, "solve_batch")
            and strategy.name in getattr(problem, "batch_strategies", ()))
    if fast:
        Y = problem.solve_batch(*parts)
        solutions = None
    else:
        template = tuple(parts)
        solutions = [problem.solve(like_structure(tuple(p[b] for p in parts), template))
                     for b in range(size)]
        Y = np.stack([sol.x for sol in solutions])
    out = torch.from_numpy(Y.reshape(batch + Y.shape[1:]))
    ref = next((t for t in theta if t.is_floating_point()), theta[0])
    dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
    return out.to(dtype=dtype, device=ref.device), (batch, parts, bshapes, fast, Y, solutions)


class _Argmin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer, *theta):
        out, (batch, parts, bshapes, fast, Y, solutions) = _solve(layer.problem, layer.strategy,
                                                                  theta)
        ctx.layer, ctx.fast, ctx.parts, ctx.Y, ctx.solutions = layer, fast, parts, Y, solutions
        ctx.batch, ctx.bshapes = batch, bshapes
        ctx.shapes = [tuple(t.shape) for t in theta]
        ctx.meta = [(t.dtype, t.device) for t in theta]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        layer = ctx.layer
        problem, strategy = layer.problem, layer.strategy
        V = np.ascontiguousarray(_host_float64(grad_out).reshape(ctx.Y.shape))
        if ctx.fast:
            grads, margins = problem.vjp_batch(*ctx.parts, ctx.Y, V)
            tol = getattr(strategy, "margin_tol", 1e-6)
            if np.min(margins) <= tol:
                warnings.warn(f"{strategy.name}: {int(np.sum(margins <= tol))} of {len(margins)} "
                              f"batch rows are degenerate (margin <= {tol:.0e}): the gradient is "
                              "one one-sided derivative there", DegeneracyWarning, stacklevel=2)
        else:
            with torch.enable_grad():           # strategies may build torch graphs
                rows = [strategy.vjp(problem, sol, V[b])[0]
                        for b, sol in enumerate(ctx.solutions)]
            grads = tuple(np.stack([np.asarray(r[k] if isinstance(r, tuple) else r)
                                    for r in rows]) for k in range(len(ctx.parts)))
        out = [None]
        for k, g in enumerate(grads):
            if not ctx.needs_input_grad[k + 1]:
                out.append(None)
                continue
            g = _reduce(np.asarray(g), ctx.batch, ctx.bshapes[k], ctx.shapes[k])
            dtype, device = ctx.meta[k]
            out.append(torch.from_numpy(np.ascontiguousarray(g)).to(dtype=dtype, device=device))
        return tuple(out)
