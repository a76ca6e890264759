"""Every problem works in bl.torch.Layer through the strategy the user chose: gradients
checked by torch.autograd.gradcheck in float64 (central differences of the layer's own
forward, eps 1e-6: the solves are exact to ~1e-12, so gradcheck's 1e-5 default holds)."""

import numpy as np
import pytest
import torch

import bilevel as bl
from bilevel.testing import regression_data

X, Y = regression_data(30, 3, seed=4)
LABELS = np.sign(Y)


def quadratic(x, t):
    return 0.5 * (x * x).sum() - (t * x).sum() + 0.1 * (x**4).sum()


LAYERS = {
    "ridge": (bl.problems.Ridge(X, Y), "implicit", ([0.1, 0.5],)),
    "ridge-analytic": (bl.problems.Ridge(X, Y), "analytic", ([0.1, 0.5],)),
    "logistic-l2": (bl.problems.LogisticRegression(X, LABELS), "implicit", ([0.05, 0.2],)),
    "logistic-l1": (bl.problems.LogisticRegression(X, LABELS, penalty="l1"),
                    "partial_smoothness", ([0.02, 0.03],)),
    "lasso": (bl.problems.Lasso(X, Y), "partial_smoothness", ([0.1, 0.2],)),
    "elastic_net": (bl.problems.ElasticNet(X, Y), "partial_smoothness", ([0.1, 0.2], [0.2, 0.1])),
    "smooth": (bl.problems.Smooth(quadratic, np.zeros(3), tol=1e-12, theta_ndim=(1,)),
               "implicit", ([[0.5, -1.0, 2.0], [1.0, 0.2, -0.3]],)),
    "constrained": (bl.problems.Constrained(lambda x, t: ((x - t) ** 2).sum(),
                                            eq=lambda x, t: x.sum() - 1.0, x0=np.zeros(3),
                                            theta_ndim=(1,)),
                    "implicit", ([[2.0, 0.0, 0.5], [0.1, 0.3, -0.2]],)),
}


@pytest.mark.parametrize("key", sorted(LAYERS))
def test_layer_gradcheck_and_agreement_with_the_vjp(key):
    problem, strategy, theta = LAYERS[key]
    layer = bl.torch.Layer(problem, strategy)
    tensors = tuple(torch.tensor(t, dtype=torch.float64, requires_grad=True) for t in theta)
    assert torch.autograd.gradcheck(layer, tensors, eps=1e-6, atol=1e-5, rtol=1e-4)
    # the batch's gradient is, row by row, the VJP of bl.vjp with the same strategy
    out = layer(*tensors)
    V = torch.linspace(-1.0, 1.0, out.numel(), dtype=torch.float64).reshape(out.shape)
    grads = torch.autograd.grad(out, tensors, V)
    for b in range(out.shape[0]):
        row = tuple(np.asarray(t.detach()[b].numpy()) for t in tensors)
        ref = bl.vjp(problem, row if len(row) > 1 else row[0], V[b].numpy(), strategy)
        for g, r in zip(grads, ref if isinstance(ref, tuple) else (ref,)):
            np.testing.assert_allclose(g[b].numpy(), r, rtol=1e-10, atol=1e-12)


def test_layer_over_a_user_energy_without_declared_dimensions_is_one_instance():
    problem = bl.problems.Smooth(quadratic, np.zeros(3), tol=1e-12)
    layer = bl.torch.Layer(problem, "implicit")
    t = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    x = layer(t)
    assert x.shape == (3,)
    assert torch.autograd.gradcheck(layer, (t,), eps=1e-6, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="theta_ndim"):          # batches need dimensions
        bl.torch.Layer(problem, "implicit", theta_ndim=(1, "x"))


def test_layer_honours_the_strategy_object_and_its_knobs():
    # A duplicated column on the support: the restricted Hessian is singular. The default
    # PartialSmoothness refuses; PartialSmoothness(pinv=True) takes the pseudo-inverse and
    # agrees with the Lasso without the duplicate (the loss sees x* through predictions).
    problem = bl.problems.Lasso(np.hstack([X, X[:, :1]]), Y)
    lam = torch.tensor([0.05], dtype=torch.float64, requires_grad=True)
    init = problem.solve(0.05).x
    init[[0, 3]] = init[0] / 2                         # both copies on the support
    problem_split = _PinnedLasso(problem, init)
    with pytest.raises(bl.SingularSystemError, match="pinv=True"):
        x = bl.torch.Layer(problem_split, "partial_smoothness")(lam)
        x.sum().backward()
    x = bl.torch.Layer(problem_split, bl.strategies.PartialSmoothness(pinv=True))(lam)
    weights = np.linspace(-1.0, 1.0, 30)
    pred = torch.from_numpy(np.hstack([X, X[:, :1]])) @ x[0]
    (g,) = torch.autograd.grad(pred @ torch.from_numpy(weights), lam)
    lasso = bl.problems.Lasso(X, Y)
    ref = bl.vjp(lasso, 0.05, X.T @ weights, "partial_smoothness")
    assert abs(ref) > 0.05                            # a gradient that can be wrong
    np.testing.assert_allclose(g.numpy(), [ref], rtol=1e-8)
    # a knob that changes the result: a 2-term Neumann series differs from GMRES, and warns
    ridge = bl.problems.Ridge(X, Y)
    lam = torch.tensor([0.1], dtype=torch.float64, requires_grad=True)
    exact = torch.autograd.grad(bl.torch.Layer(ridge, "fixed_point")(lam).sum(), lam)[0]
    with pytest.warns(bl.ConvergenceWarning, match="n_terms"):
        short = torch.autograd.grad(bl.torch.Layer(
            ridge, bl.strategies.FixedPoint(method="neumann", n_terms=2))(lam).sum(), lam)[0]
    assert abs(float(short - exact)) > 1e-3 * abs(float(exact))


class _PinnedLasso(bl.problems.Problem):
    """The Lasso solved from a fixed start that splits weight over duplicated columns."""

    name = "pinned_lasso"

    def __init__(self, lasso, init):
        self.lasso, self._init = lasso, init

    def offers(self):
        return self.lasso.capabilities

    def check_theta(self, theta):
        return self.lasso.check_theta(theta)

    def init(self, parts):
        return self._init.copy()

    def _solve(self, theta, x0):
        sol = self.lasso.solve(theta, init=x0)
        return sol.x, sol.n_iter, sol.info["residual"], {
            k: v for k, v in sol.info.items() if k not in ("residual", "time")}
