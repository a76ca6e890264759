"""Bad input gets a clear error naming the argument; non-convergence warns."""

import numpy as np
import pytest

import bilevel as bl
from bilevel.linalg import solve
from bilevel.problems.base import Problem
from bilevel.testing import regression_data

X, Y = regression_data(20, 3, seed=0)
LABELS = np.sign(Y)


@pytest.mark.parametrize("make, match", [
    (lambda: bl.problems.Ridge(np.full((3, 2), np.nan), np.ones(3)), "X contains NaN"),
    (lambda: bl.problems.Ridge(X, Y[:5]), "same samples"),
    (lambda: bl.problems.Ridge(X[0], Y), "X must have 2"),
    (lambda: bl.problems.Ridge(np.zeros((0, 2)), np.zeros(0)), "at least one row"),
    (lambda: bl.problems.LogisticRegression(X, Y), r"\{-1, \+1\}"),
    (lambda: bl.problems.LogisticRegression(X, LABELS, penalty="l3"), "penalty"),
    (lambda: bl.problems.LogisticRegression(X, LABELS, tol=0), "tol"),
    (lambda: bl.problems.Smooth(lambda x, t: x.sum(), np.zeros(2), step_size=-1), "step_size"),
    (lambda: bl.losses.LogisticLoss(X, Y), r"\{-1, \+1\}"),
    (lambda: bl.losses.SquaredError(X, np.full(20, np.inf)), "y contains NaN"),
    (lambda: bl.losses.CrossEntropy(X, np.array([0.5] * 20)), "integer classes"),
])
def test_constructors_reject_bad_data(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_smooth_rejects_non_callable():
    with pytest.raises(TypeError, match="energy must be callable"):
        bl.problems.Smooth("x^2", np.zeros(2))


@pytest.mark.parametrize("lam, match", [
    (-0.1, "lam must be >= 0"), (np.nan, "lam contains NaN"), (np.inf, "lam contains NaN"),
    (np.ones(5), r"lam must have shape \(\) or \(3,\)"), ((0.1, 0.2), "one hyperparameter"),
])
def test_ridge_rejects_bad_lam(lam, match):
    with pytest.raises(ValueError, match=match):
        bl.problems.Ridge(X, Y).solve(lam)


def test_ridge_singular_names_lam():
    wide = np.random.default_rng(0).standard_normal((3, 6))
    with pytest.raises(ValueError, match="increase lam"):
        bl.problems.Ridge(wide, np.ones(3)).solve(0.0)


def test_logistic_rejects_vector_lam():
    with pytest.raises(ValueError, match=r"lam must have shape \(\)"):
        bl.problems.LogisticRegression(X, LABELS).solve(np.ones(3))


def test_non_convergence_warns_and_reports():
    problem = bl.problems.LogisticRegression(X, LABELS, max_iter=1)
    with pytest.warns(bl.ConvergenceWarning, match="raise max_iter"):
        sol = problem.solve(1e-3)
    assert not sol.converged and sol.info["residual"] > 1e-10
    # A strategy differentiating an unconverged solution says so.
    with pytest.warns(bl.ConvergenceWarning, match="did not converge"):
        bl.strategies.Implicit().vjp(problem, sol, np.ones(3))


def test_public_functions_reject_bad_arguments():
    problem = bl.problems.Ridge(X, Y)
    loss = bl.losses.SquaredError(X, Y)
    with pytest.raises(TypeError, match="problem must be"):
        bl.hypergradient("ridge", loss, 0.1)
    with pytest.raises(TypeError, match="loss must be callable"):
        bl.hypergradient(problem, 3.0, 0.1)
    with pytest.raises(ValueError, match="scalar"):
        bl.hypergradient(problem, lambda x, t: x * 2, 0.1)
    with pytest.raises(ValueError, match="not finite"):
        bl.hypergradient(problem, lambda x, t: x.sum() * float("nan"), 0.1)
    with pytest.raises(ValueError, match=r"v must have shape \(3,\)"):
        bl.vjp(problem, 0.1, np.ones(4))
    with pytest.raises(ValueError, match="unknown strategy 'newton'"):
        bl.jacobian(problem, 0.1, "newton")
    with pytest.raises(TypeError, match="strategy must be"):
        bl.vjp(problem, 0.1, np.ones(3), strategy=42)
    with pytest.raises(ValueError, match="repeat"):
        bl.compare(problem, loss, 0.1, repeat=0)
    with pytest.raises(ValueError, match="optimizer"):
        bl.minimize(problem, loss, 0.1, optimizer="sgd-momentum")
    with pytest.raises(ValueError, match="steps"):
        bl.minimize(problem, loss, 0.1, steps=0)
    with pytest.raises(ValueError, match="theta0 > 0"):
        bl.minimize(problem, loss, 0.0, log_scale=True)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        bl.minimize(problem, loss, -1.0)


def test_value_gradient_without_energy_is_not_applicable():
    class Bare(Problem):
        name = "bare"

        def offers(self):
            return bl.problems.Capabilities(step=bl.StepMap(lambda x, t: x, start=np.zeros))

    with pytest.raises(bl.NotApplicable, match="energy"):
        bl.value_gradient(Bare(), 1.0)


@pytest.mark.parametrize("make, match", [
    (lambda: bl.strategies.Implicit(linear_solver="qr"), "linear_solver"),
    (lambda: bl.strategies.Implicit(hvp="jax"), "hvp"),
    (lambda: bl.strategies.Implicit(tol=0), "tol"),
    (lambda: bl.strategies.Implicit(damping=-1), "damping"),
    (lambda: bl.strategies.Implicit(maxiter=0), "maxiter"),
    (lambda: bl.strategies.Unroll(n_steps=0), "n_steps"),
    (lambda: bl.strategies.Unroll(truncate=0), "truncate"),
    (lambda: bl.strategies.Unroll(start="middle"), "start"),
    (lambda: bl.strategies.FixedPoint(method="anderson"), "method"),
    (lambda: bl.strategies.FixedPoint(n_terms=0), "n_terms"),
    (lambda: bl.strategies.FiniteDifference(order=3), "order"),
    (lambda: bl.strategies.FiniteDifference(rel_step=2.0), "rel_step"),
])
def test_strategy_knobs_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_linear_solver_errors():
    A = np.diag([1.0, 1e-20])
    with pytest.raises(ValueError, match="method"):
        solve(A.__matmul__, np.ones(2), method="qr")
    with pytest.raises(ValueError, match="damping"):
        solve(A.__matmul__, np.ones(2), damping=-1.0)
    with pytest.raises(bl.SingularSystemError, match="damping"):
        solve(A.__matmul__, np.ones(2), method="direct")
    hard = np.diag(np.logspace(0, 8, 40))
    with pytest.warns(bl.ConvergenceWarning, match="raise maxiter"):
        solve(hard.__matmul__, np.ones(40), method="cg", maxiter=3)
