"""Ready upper-level losses ``L(x, theta)``.

Each is a :class:`Loss`: a callable on torch tensors (what strategies and custom code
differentiate) with ``value_and_grad(x, theta) -> (value, grad_x, grad_theta)`` in NumPy, the
fast path :func:`bilevel.hypergradient` takes. None depends on theta (``grad_theta`` is
None). Any other callable ``loss(x, theta)`` written in torch is differentiated by autograd.
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._types import LazyGradient
from bilevel.problems.base import check_array, check_design

__all__ = ["CrossEntropy", "LogisticLoss", "Loss", "OptimalValue", "Reconstruction",
           "SquaredError"]


class Loss:
    """Base class of ready losses: ``__call__`` in torch and ``value_and_grad`` in NumPy."""

    def __call__(self, x, theta=None):
        """Evaluate on torch tensors."""
        raise NotImplementedError

    def value_and_grad(self, x, theta=None):
        """Return ``(value, grad_x, grad_theta or None)`` in NumPy."""
        raise NotImplementedError

    def value_and_lazy_grad(self, x, theta=None):
        """:meth:`value_and_grad`, where ``grad_x`` may be a :class:`~bilevel._types.LazyGradient`.

        :func:`bilevel.hypergradient` takes this path for strategies that read the
        cotangent only at some coordinates (``Strategy.reads_coordinates``).
        """
        return self.value_and_grad(x, theta)


def _check_width(loss, x):
    """ValueError unless ``x`` is a vector with one entry per column of ``loss.X``."""
    if tuple(x.shape) != (loss.X.shape[1],):
        raise ValueError(f"{type(loss).__name__}: X has {loss.X.shape[1]} columns but x* has "
                         f"shape {tuple(x.shape)}; give X one column per entry of x* (the "
                         "problem's features)")


# A solution with at most this share of non-zeros (a sparse model's) is multiplied by the
# columns at its support only; above it, X @ x streams X faster than the columns gather.
_SPARSE_SHARE = 1 / 32


def _predict(X, x):
    """``(X @ x, columns)``, with ``columns = (S, X[:, S])`` the support's columns, or None.

    Multiplies by those columns only when few entries of ``x`` are not 0.
    """
    support = np.flatnonzero(x)
    if support.size > _SPARSE_SHARE * x.size:
        return X @ x, None
    XS = X[:, support]
    return XS @ x[support], (support, XS)


class _LinearModelLoss(Loss):
    """A loss of the predictions ``X x``: its gradient ``X^T g`` is computed on demand.

    ``X`` is kept column-major: a sparse ``x`` (a Lasso's) reads only its support's columns,
    each then contiguous.
    """

    def _set_data(self, X, y):
        """Keep the checked ``X`` (column-major) and ``y``, with their torch views."""
        X, self.y = check_design(X, y)
        self.X = np.asfortranarray(X)
        self._Xt, self._yt = torch.from_numpy(self.X), torch.from_numpy(self.y)

    def value_and_grad(self, x, theta=None):
        """``value_and_lazy_grad`` with the whole gradient."""
        value, grad, _ = self.value_and_lazy_grad(x, theta)
        return value, np.asarray(grad), None


class SquaredError(_LinearModelLoss):
    """Held-out squared error ``||X x - y||^2 / (2m)``.

    Parameters
    ----------
    X : ndarray, shape (m, p)
    y : ndarray, shape (m,)
    """

    def __init__(self, X, y):
        self._set_data(X, y)

    def __call__(self, x, theta=None):
        """Evaluate on torch tensors."""
        _check_width(self, x)
        r = self._Xt @ x - self._yt
        return 0.5 * (r @ r) / r.shape[0]

    def value_and_lazy_grad(self, x, theta=None):
        """``(L, X^T (Xx - y) / m, None)``, the gradient lazy (``LazyGradient``)."""
        _check_width(self, x)
        predictions, columns = _predict(self.X, x)
        r = predictions - self.y
        m = r.shape[0]
        return 0.5 * float(r @ r) / m, LazyGradient(self.X, r / m, columns), None


class LogisticLoss(_LinearModelLoss):
    """Held-out logistic loss ``mean log(1 + exp(-y_i a_i^T x))``, labels in {-1, +1}.

    Parameters
    ----------
    X : ndarray, shape (m, p)
    y : ndarray, shape (m,)
    """

    def __init__(self, X, y):
        self._set_data(X, y)
        if not np.all(np.isin(self.y, (-1.0, 1.0))):
            raise ValueError("y must hold labels in {-1, +1}; map 0/1 labels with 2 * y - 1")

    def __call__(self, x, theta=None):
        """Evaluate on torch tensors."""
        _check_width(self, x)
        return torch.nn.functional.softplus(-self._yt * (self._Xt @ x)).mean()

    def value_and_lazy_grad(self, x, theta=None):
        """``(L, -X^T (y sigmoid(-y Xx)) / m, None)``, the gradient lazy (``LazyGradient``)."""
        _check_width(self, x)
        predictions, columns = _predict(self.X, x)
        margins = self.y * predictions
        value = float(np.mean(np.logaddexp(0.0, -margins)))
        r = -self.y * np.exp(-np.logaddexp(0.0, margins))       # -y sigmoid(-margin)
        return value, LazyGradient(self.X, r / margins.shape[0], columns), None


class CrossEntropy(Loss):
    """Multinomial cross-entropy ``-mean_i log softmax(a_i^T W)_{c_i}`` of a model W (p, k).

    Parameters
    ----------
    X : ndarray, shape (m, p)
    Y : ndarray, shape (m,) of integer classes in [0, k), or (m, k) one-hot / probabilities
    """

    def __init__(self, X, Y):
        self.X = np.ascontiguousarray(check_array(X, "X", ndim=2))
        Y = np.asarray(Y)
        if Y.ndim == 1:
            if not np.issubdtype(Y.dtype, np.integer) or Y.min() < 0:
                raise ValueError("Y of shape (m,) must hold integer classes >= 0")
            Y = np.eye(int(Y.max()) + 1)[Y]
        self.Y = check_array(Y, "Y", ndim=2)
        if self.Y.shape[0] != self.X.shape[0]:
            raise ValueError(f"X has {self.X.shape[0]} rows but Y has {self.Y.shape[0]}")
        self._Xt, self._Yt = torch.from_numpy(self.X), torch.from_numpy(self.Y)

    def __call__(self, x, theta=None):
        """Evaluate on torch tensors; x holds W (p, k), possibly flattened."""
        logits = self._Xt @ x.reshape(self.X.shape[1], -1)
        return -(self._Yt * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()

    def value_and_grad(self, x, theta=None):
        """``(L, X^T (softmax(XW) - Y) / m, None)``, the gradient shaped like x."""
        logits = self.X @ x.reshape(self.X.shape[1], -1)
        logits = logits - logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        m = logits.shape[0]
        value = -float((self.Y * log_p).sum()) / m
        grad = self.X.T @ (np.exp(log_p) * self.Y.sum(axis=1, keepdims=True) - self.Y) / m
        return value, grad.reshape(x.shape), None


class Reconstruction(Loss):
    """``||x - target||^2 / 2``.

    Parameters
    ----------
    target : ndarray, shaped like x
    """

    def __init__(self, target):
        self.target = check_array(target, "target")
        self._target_t = torch.from_numpy(self.target)

    def __call__(self, x, theta=None):
        """Evaluate on torch tensors."""
        d = x - self._target_t
        return 0.5 * (d * d).sum()

    def value_and_grad(self, x, theta=None):
        """``(L, x - target, None)``."""
        d = x - self.target
        return 0.5 * float((d * d).sum()), d, None


class OptimalValue:
    r"""The lower problem's optimal value as the upper loss: ``L = p(theta) = min_x E(x, theta)``.

    A marker: :func:`bilevel.hypergradient`, :func:`bilevel.compare` and
    :func:`bilevel.minimize` recognize it and use the value strategies of
    :func:`bilevel.value_gradient` (the dual solution, the envelope theorem, finite
    differences of ``p``), which need no derivative of ``x*`` and exist where ``x*`` is not
    unique.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.LeastAbsoluteDeviation(np.ones((3, 1)))
    >>> bl.hypergradient(prob, bl.losses.OptimalValue(), np.array([0.0, 1.0, 5.0]))
    (5.0, array([-1.,  0.,  1.]))
    """

    def __call__(self, x, theta=None):
        """Not evaluated on ``x``: the value comes from the problem (see the class docstring)."""
        raise TypeError("OptimalValue is evaluated by bl.hypergradient / bl.value_gradient "
                        "from the lower problem, not as loss(x, theta)")

    def __repr__(self):
        return "OptimalValue()"
