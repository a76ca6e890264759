"""minimize: reaches the optimum a trusted scalar minimizer finds; warm starts; callback."""

import numpy as np
import pytest
import scipy.optimize

import bilevel as bl
from bilevel.datasets import load, split_standardize


@pytest.fixture(scope="module")
def task():
    X, y = load("breast_cancer")
    Xt, yt, Xv, yv = split_standardize(X, y)
    return bl.problems.LogisticRegression(Xt, yt), bl.losses.LogisticLoss(Xv, yv)


@pytest.fixture(scope="module")
def optimum(task):
    problem, loss = task
    f = lambda t: loss.value_and_grad(problem.solve(np.exp(t)).x)[0]  # noqa: E731
    res = scipy.optimize.minimize_scalar(f, bounds=(np.log(1e-4), np.log(1.0)),
                                         method="bounded", options={"xatol": 1e-8})
    return res.x, res.fun


@pytest.mark.parametrize("optimizer, steps, lr", [("lbfgs", 15, None), ("adam", 150, 0.1),
                                                  ("gd", 300, 50.0)])
def test_reaches_scalar_optimum(task, optimum, optimizer, steps, lr):
    problem, loss = task
    log_lam, best = optimum
    result = bl.minimize(problem, loss, 0.1, optimizer=optimizer, steps=steps, lr=lr,
                         log_scale=True, progress=False)
    # The validation loss is flat near its minimum: compare values tightly, log lam loosely.
    assert result.loss == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert np.log(float(result.theta)) == pytest.approx(log_lam, abs=0.05)
    h = result.history
    assert len(h["loss"]) == result.n_steps == steps
    assert h["loss"][-1] <= h["loss"][0]
    assert result.strategy == "implicit"


def test_warm_start_cuts_inner_iterations_and_callback_stops(task):
    problem, loss = task
    seen = []

    def stop_after_five(step, theta, value, grad):
        seen.append(step)
        return step == 4

    result = bl.minimize(problem, loss, 0.05, optimizer="adam", lr=0.01, steps=50,
                         log_scale=True, progress=False, callback=stop_after_five)
    assert seen == [0, 1, 2, 3, 4] and result.n_steps == 5
    inner = result.history["inner_iterations"]
    assert max(inner[1:]) < inner[0]                 # warm starts from the previous x*


def test_lbfgs_line_search_moves_ridge_to_its_optimum():
    from bilevel.testing import regression_data

    X, y = regression_data(60, 8, seed=11, noise=4.0)      # noisy: an interior optimum
    problem, loss = bl.problems.Ridge(X[:30], y[:30]), bl.losses.SquaredError(X[30:], y[30:])
    f = lambda t: loss.value_and_grad(problem.solve(np.exp(t)).x)[0]  # noqa: E731
    best = scipy.optimize.minimize_scalar(f, bounds=(np.log(1e-4), np.log(1e2)),
                                          method="bounded", options={"xatol": 1e-9})
    result = bl.minimize(problem, loss, 3.0, optimizer="lbfgs", steps=20, log_scale=True,
                         progress=False)
    assert result.loss == pytest.approx(best.fun, rel=1e-8)   # flat at the optimum
    assert np.log(float(result.theta)) == pytest.approx(best.x, abs=1e-4)
    assert result.history["theta"][0] == pytest.approx(3.0, rel=1e-15)   # starts at theta0


def test_trainable_learns_lam_only_and_keeps_the_signal_fixed():
    rng = np.random.default_rng(3)
    clean = np.repeat([0.0, 2.0, -1.0, 1.0], 25)
    noisy = clean + 0.5 * rng.standard_normal(clean.size)
    problem, loss = bl.problems.TV1D(1), bl.losses.Reconstruction(clean)
    f = lambda t: loss.value_and_grad(problem.solve((noisy, np.exp(t))).x)[0]  # noqa: E731
    best = scipy.optimize.minimize_scalar(f, bounds=(np.log(1e-2), np.log(1e2)),
                                          method="bounded", options={"xatol": 1e-9})
    result = bl.minimize(problem, loss, (noisy, 1.0), optimizer="lbfgs", steps=20,
                         log_scale=True, trainable=(False, True), progress=False)
    np.testing.assert_array_equal(result.theta[0], noisy)        # the fixed part
    # The loss is piecewise smooth in lam (the jump set changes): compare values.
    assert result.loss == pytest.approx(best.fun, rel=1e-6)
    with pytest.raises(ValueError, match="trainable must give one bool per theta part"):
        bl.minimize(problem, loss, (noisy, 1.0), trainable=(True,), progress=False)
