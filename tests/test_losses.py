"""Ready losses: NumPy values and gradients against torch autograd, lazy gradients."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bilevel as bl
from bilevel._types import LazyGradient
from bilevel.testing import regression_data

LINEAR_LOSSES = {
    "squared_error": lambda X, y: bl.losses.SquaredError(X, y),
    "logistic": lambda X, y: bl.losses.LogisticLoss(X, np.where(y > 0, 1.0, -1.0)),
}


@st.composite
def linear_losses(draw):
    """A loss on (m, p) data and an ``x`` with a drawn number of non-zeros (0 to all)."""
    name = draw(st.sampled_from(sorted(LINEAR_LOSSES)))
    m, p = draw(st.integers(1, 30)), draw(st.integers(1, 200))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    X, y = rng.standard_normal((m, p)), rng.standard_normal(m)
    x = np.zeros(p)
    support = rng.choice(p, draw(st.integers(0, p)), replace=False)
    x[support] = rng.standard_normal(support.size)
    return LINEAR_LOSSES[name](X, y), x


@given(case=linear_losses())
def test_value_and_gradient_are_autograd_s(case):
    """Sparse x (predictions from the support's columns) as dense: the torch loss's values."""
    loss, x = case
    value, grad, grad_theta = loss.value_and_grad(x)
    x_t = torch.tensor(x, requires_grad=True)
    expected = loss(x_t)
    expected.backward()
    # The same sums in another order: round-off relative to the terms' scale.
    np.testing.assert_allclose(value, float(expected.detach()), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, x_t.grad.numpy(), rtol=1e-10,
                               atol=1e-13 * max(1.0, np.abs(x_t.grad.numpy()).max()))
    assert grad_theta is None


@given(case=linear_losses(), data=st.data())
def test_a_lazy_gradient_at_some_coordinates_is_those_of_the_whole(case, data):
    loss, x = case
    value, lazy, _ = loss.value_and_lazy_grad(x)
    assert isinstance(lazy, LazyGradient) and lazy.shape == x.shape
    full = np.asarray(lazy)
    assert value == loss.value_and_grad(x)[0]
    np.testing.assert_array_equal(full, loss.value_and_grad(x)[1])
    at = np.flatnonzero(data.draw(st.lists(st.booleans(), min_size=x.size,
                                           max_size=x.size)))
    # X[:, S]^T g against (X^T g)[S]: the same m-term sums, by another BLAS call.
    scale = max(1.0, np.abs(full).max())
    np.testing.assert_allclose(lazy.at(at), full[at], rtol=1e-12, atol=1e-14 * scale)
    support = np.flatnonzero(x)           # the columns the predictions gathered, if any
    np.testing.assert_allclose(lazy.at(support), full[support], rtol=1e-12, atol=1e-14 * scale)


def test_hypergradients_by_the_lazy_gradient_equal_autograd_s():
    """The ready losses' lazy path against the same loss as a plain torch callable."""
    X, y = regression_data(60, 300, seed=7)
    Xv, yv = regression_data(40, 300, seed=8)
    lasso = bl.problems.Lasso(X, y)
    logistic = bl.problems.LogisticRegression(X, np.sign(y), penalty="l1")
    cases = [(lasso, bl.losses.SquaredError(Xv, yv), lasso.lam_max() / 5, "partial_smoothness"),
             (logistic, bl.losses.LogisticLoss(Xv, np.sign(yv)), logistic.lam_max() / 5,
              "partial_smoothness"),
             (bl.problems.TV1D(order=2), bl.losses.SquaredError(Xv[:, :40], yv),
              (y[:40], np.asarray(0.5)), "partial_smoothness"),   # a jump set: all of it
             (bl.problems.Ridge(X, y), bl.losses.SquaredError(Xv, yv), 0.5, "implicit")]
    for problem, loss, theta, strategy in cases:
        value, grad = bl.hypergradient(problem, loss, theta, strategy)
        value_t, grad_t = bl.hypergradient(problem, lambda x, t, f=loss: f(x), theta, strategy)
        # One solve; the gradients differ by the round-off of the loss gradient's sums.
        np.testing.assert_allclose(value, value_t, rtol=1e-12)
        for part, part_t in zip(bl._types.as_tuple(grad), bl._types.as_tuple(grad_t)):
            np.testing.assert_allclose(part, part_t, rtol=1e-9, atol=1e-13)


def test_a_non_finite_loss_is_refused_on_the_lazy_path():
    X, y = regression_data(20, 30, seed=1)
    problem = bl.problems.Lasso(X, y)
    loss = bl.losses.SquaredError(np.full((5, 30), 1e200), np.zeros(5))
    with pytest.raises(ValueError, match="not finite at x"), np.errstate(over="ignore"):
        bl.hypergradient(problem, loss, problem.lam_max() / 5, "partial_smoothness")
