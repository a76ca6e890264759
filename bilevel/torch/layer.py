r"""An argmin as a torch layer: ``y = x*(theta)`` forward, the strategy's VJP backward.

Array parameters may carry leading batch dimensions beyond one instance's own (the
problem's :class:`~bilevel.Batch` ``theta_ndim``, or the layer's ``theta_ndim``); a scalar
hyperparameter is one value broadcast over the batch or one per batch row. The batch is
solved and differentiated through :func:`bilevel.api.solve_batch` and
:func:`bilevel.api.vjp_batch`: by the strategy's batched kernel where it has one, else row
by row with every knob of the strategy. Computation runs in float64 NumPy/numba on the
host; the output and the gradients come back in the inputs' dtype and device (CPU or CUDA).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bilevel import api
from bilevel._registry import check_applicable, check_problem, get_strategy

__all__ = ["Layer"]


class Layer(torch.nn.Module):
    """``y = Layer(problem, strategy)(*theta)``: the lower-level solution as a layer.

    Parameters
    ----------
    problem : Problem
        Any problem: a ready one, or a user energy (``Smooth``, ``Constrained``).
    strategy : Strategy, str or None
        The backward pass, with its knobs; None picks the best applicable one. Strategies
        with a batched kernel for the problem (``analytic`` and ``partial_smoothness`` on
        :class:`~bilevel.problems.TV1D`, ...) solve and differentiate the whole batch at
        once; the others solve and differentiate each row in turn.
    theta_ndim : tuple of int, optional
        Dimensions of one instance's theta parts (``(1, 0)``: a signal and a scalar); the
        leading dimensions beyond them are batch dimensions. Default: the problem's
        declaration (``capabilities.batch``), else none (the tensors are one instance).

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

    def __init__(self, problem, strategy=None, theta_ndim=None):
        super().__init__()
        check_problem(problem)
        self.problem = problem
        self.strategy = get_strategy(strategy, problem)
        check_applicable(self.strategy, problem)
        batch = problem.capabilities.batch
        if theta_ndim is None and batch is not None:
            theta_ndim = batch.theta_ndim
        if theta_ndim is not None:
            theta_ndim = tuple(theta_ndim)
            if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in theta_ndim):
                raise ValueError(f"theta_ndim must hold integers >= 0, one per theta part, "
                                 f"got {theta_ndim!r}")
        self.theta_ndim = theta_ndim

    def forward(self, *theta):
        """Solve for every batch row; differentiable in every tensor of ``theta``."""
        if self.theta_ndim is not None and len(theta) != len(self.theta_ndim):
            raise ValueError(f"{type(self.problem).__name__} takes {len(self.theta_ndim)} "
                             f"parameter tensors (theta_ndim={self.theta_ndim}), "
                             f"got {len(theta)}")
        theta = [t if isinstance(t, torch.Tensor) else torch.as_tensor(t) for t in theta]
        if torch.is_grad_enabled() and any(t.requires_grad for t in theta):
            return _Argmin.apply(self, *theta)
        return _solve(self, theta)[0]     # no graph to record

    def extra_repr(self):
        """Problem and strategy, for ``print(layer)``."""
        return f"problem={self.problem!r}, strategy={self.strategy!r}"


def _host_float64(t):
    """``t`` as a float64 NumPy array on the host (no copy when it already is one)."""
    t = t.detach()
    if t.dtype != torch.float64 or not t.is_cpu:
        t = t.to(device="cpu", dtype=torch.float64)
    return t.numpy()


def _batch_layout(theta, base_ndims):
    """Return the common batch shape and each part as a (B, *instance) float64 array.

    The batch shape is the one non-empty batch shape of the parts (a part without batch
    dimensions is broadcast), else their broadcast.
    """
    batch_shapes = []
    batch = ()
    common = True
    for t, base in zip(theta, base_ndims):
        extra = t.ndim - base
        if extra < 0:
            raise ValueError(f"a parameter of shape {tuple(t.shape)} has fewer than its {base} "
                             "instance dimension(s)")
        bshape = tuple(t.shape)[:extra]
        batch_shapes.append(bshape)
        if bshape and bshape != batch:
            if batch:
                common = False
            batch = bshape
    if not common:
        try:
            batch = np.broadcast_shapes(*batch_shapes)
        except ValueError as exc:
            raise ValueError(f"batch dimensions do not broadcast: {batch_shapes}") from exc
    size = math.prod(batch)
    parts = []
    for t, bshape in zip(theta, batch_shapes):
        arr = _host_float64(t)
        if bshape != batch:                 # broadcast along the batch, one copy
            full = np.empty(batch + arr.shape[len(bshape):])
            full[...] = arr
            arr = full
        if len(batch) != 1:                 # (solve_batch makes the parts contiguous)
            arr = arr.reshape((size,) + arr.shape[len(batch):])
        parts.append(arr)
    return batch, size, parts, batch_shapes


def _reduce(grad, batch, bshape, shape):
    """Sum a (B, *inst) gradient over the batch axes its parameter was broadcast along."""
    if bshape == batch:
        return grad.reshape(shape)
    if not bshape:                          # one instance broadcast over the whole batch
        return grad.sum(axis=0, keepdims=True).reshape(shape)
    g = grad.reshape(batch + grad.shape[1:])
    lead = len(batch) - len(bshape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, (a, b) in enumerate(zip(bshape, g.shape)) if a == 1 and b != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _keeping_torch_threads(call, *args):
    """``call(*args)``, then restore torch's intra-op thread count.

    A ``prange`` kernel on numba's OpenMP layer sets the process's OpenMP thread count,
    which torch shares: a training loop pinned to one torch thread would silently run on
    all cores (and slow down many times on a busy machine) after the layer's first large
    batch. (A plain call, not a context manager: this runs twice per training step.)
    """
    threads = torch.get_num_threads()
    try:
        return call(*args)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _solve(layer, theta):
    """Solve every batch row: ``(output tensor, (batch, bshapes, solutions))``."""
    ndims = layer.theta_ndim if layer.theta_ndim is not None else tuple(t.ndim for t in theta)
    batch, size, parts, bshapes = _batch_layout(theta, ndims)
    solutions = _keeping_torch_threads(api.solve_batch_checked, layer.problem, parts,
                                       layer.strategy)
    Y = solutions.x
    if len(batch) != 1:
        Y = Y.reshape(batch + Y.shape[1:])
    ref = theta[0]
    for t in theta:
        if t.is_floating_point():
            ref = t
            break
    dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
    return _to(_from_host(Y), dtype, _device(ref)), (batch, bshapes, solutions)


def _from_host(array):
    """``array`` as a tensor sharing its memory; a C-contiguous copy if it is not one."""
    return torch.from_numpy(array if array.flags.c_contiguous else np.ascontiguousarray(array))


def _device(t):
    """``t``'s device, None for the host (what :func:`_to` takes)."""
    return None if t.is_cpu else t.device


def _to(tensor, dtype, device):
    """Return a float64 host ``tensor`` in ``dtype`` on ``device`` (None: the host)."""
    if device is None:
        return tensor if dtype == torch.float64 else tensor.to(dtype)
    return tensor.to(dtype=dtype, device=device)


class _Argmin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer, *theta):
        out, (batch, bshapes, solutions) = _solve(layer, theta)
        ctx.layer, ctx.solutions, ctx.batch, ctx.bshapes = layer, solutions, batch, bshapes
        ctx.meta = [(tuple(t.shape), t.dtype, _device(t)) for t in theta]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        layer = ctx.layer
        V = _host_float64(grad_out)                      # vjp_batch makes it contiguous
        if len(ctx.batch) != 1:
            V = V.reshape(ctx.solutions.x.shape)
        grads, _ = _keeping_torch_threads(api.vjp_batch_checked, layer.problem,
                                          ctx.solutions, V, layer.strategy)
        out = [None]
        for k, g in enumerate(grads):
            if not ctx.needs_input_grad[k + 1]:
                out.append(None)
                continue
            shape, dtype, device = ctx.meta[k]
            g = _reduce(np.asarray(g), ctx.batch, ctx.bshapes[k], shape)
            out.append(_to(_from_host(g), dtype, device))
        return tuple(out)
