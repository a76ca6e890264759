"""The verbs: compare's rows and exports, minimize's optimizers, hypergradient and jvp rules."""

import json

import numpy as np
import pytest
import scipy.optimize

import bilevel as bl
from bilevel.datasets import load, split_standardize
from bilevel.testing import regression_data


# --- compare ---
@pytest.fixture(scope="module")
def ridge_report():
    X, y = regression_data(40, 4, seed=1)
    Xv, yv = regression_data(20, 4, seed=2)
    return bl.compare(bl.problems.Ridge(X, y), bl.losses.SquaredError(Xv, yv), 0.3, repeat=2,
                      budgets=[1, 4, 16, 64])


def test_rows_and_errors(ridge_report):
    rows = {r["strategy"]: r for r in ridge_report.rows}
    assert set(rows) == {"analytic", "implicit", "fixed_point", "unroll", "finite_difference",
                         "partial_smoothness", "bregman", "straight_through"}
    assert rows.pop("partial_smoothness")["missing"] == ["manifold"]   # ridge is smooth
    for name, missing in (("bregman", "mirror"), ("straight_through", "straight_through")):
        assert rows.pop(name)["missing"] == [missing]                  # skipped, with reason
    assert ridge_report.reference == "analytic"
    for name in ("analytic", "implicit", "fixed_point"):
        assert rows[name]["error"] < 1e-10, name             # exact up to round-off
    assert rows["finite_difference"]["error"] < 1e-7         # 4th order, h ~ 7e-4
    for row in rows.values():
        assert row["time"] > 0 and row["peak_bytes"] > 0
    trace = [e for _, e in rows["unroll"]["trace"]]
    assert trace[0] > trace[-1]                              # more steps, smaller error


@pytest.mark.parametrize("max_time, runs", [(0.0, 1), (np.inf, 3)])
def test_max_time_bounds_the_timed_runs(max_time, runs):
    X, y = regression_data(30, 3, seed=3)
    Xv, yv = regression_data(10, 3, seed=4)
    report = bl.compare(bl.problems.Ridge(X, y), bl.losses.SquaredError(Xv, yv), 0.3,
                        ["analytic", "implicit"], repeat=3, max_time=max_time)
    assert [row["runs"] for row in report.rows] == [runs, runs]


@pytest.mark.parametrize("kwargs, message", [({"repeat": 0}, "repeat must be >= 1"),
                                             ({"max_time": -1.0}, "max_time must be >= 0"),
                                             ({"max_time": np.nan}, "max_time must be >= 0")])
def test_compare_refuses_bad_timing_arguments(kwargs, message):
    X, y = regression_data(30, 3, seed=3)
    with pytest.raises(ValueError, match=message):
        bl.compare(bl.problems.Ridge(X, y), bl.losses.SquaredError(X, y), 0.3, **kwargs)


@pytest.mark.parametrize("seconds, shown", [
    (1.5e-7, "0.15 us"), (1.57e-4, "157 us"), (9.996e-4, "1 ms"), (5.694e-3, "5.69 ms"),
    (0.82344, "823 ms"), (2.04, "2.04 s"), (999.6, "1000 s"), (1234.5, "1234 s")])
def test_times_print_three_significant_digits_in_the_unit_that_keeps_them_under_1000(
        seconds, shown):
    from bilevel._report import _format_time
    assert _format_time(seconds) == shown


def test_exports(ridge_report, tmp_path):
    data = json.loads(ridge_report.to_json())
    assert data["reference"] == "analytic" and len(data["rows"]) == 8
    md = ridge_report.to_markdown()
    assert md.count("\n| ") == 9 and "rel. error" in md
    text = str(ridge_report).splitlines()
    assert text[1].startswith("strategy") and len({len(line) for line in text[1:3]}) == 1
    assert ridge_report.to_dict()["rows"][0]["strategy"] == "analytic"
    pytest.importorskip("matplotlib")
    ridge_report.plot(tmp_path / "conv.png")
    assert (tmp_path / "conv.png").stat().st_size > 1000


def test_finite_difference_reference_and_log_scale():
    X, y = regression_data(40, 3, seed=3)
    problem = bl.problems.LogisticRegression(X, np.sign(y))
    loss = bl.losses.LogisticLoss(X[:10], np.sign(y[:10]))
    report = bl.compare(problem, loss, 0.1, ["implicit", "unroll"], repeat=1, log_scale=True)
    assert report.reference == "finite_difference"
    _, g = bl.hypergradient(problem, loss, 0.1, "implicit")
    assert report.rows[0]["grad"][0] == pytest.approx(0.1 * float(g), rel=1e-12)
    assert report.rows[0]["error"] < 1e-7
    with pytest.raises(ValueError, match="budgets"):
        report.plot()


def test_compare_shows_every_strategy_on_a_lasso():
    X, y = regression_data(60, 30, seed=0)
    Xv, yv = regression_data(40, 30, seed=1)
    problem = bl.problems.Lasso(X, y)
    report = bl.compare(problem, bl.losses.SquaredError(Xv, yv), problem.lam_max() / 10,
                        repeat=1, log_scale=True)
    rows = {r["strategy"]: r for r in report.rows}
    assert "skipped" in rows["implicit"] and "optimality" in rows["implicit"]["skipped"]
    for name in ("partial_smoothness", "fixed_point"):
        assert rows[name]["error"] < 1e-8          # against 4th-order finite differences
    assert "error" in rows["unroll"]
    assert "partial_smoothness" in str(report)


# --- minimize ---
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


def test_minimize_log_lam_and_per_feature_weights():
    X, y = regression_data(60, 30, seed=0, noise=1.0)
    Xv, yv = regression_data(60, 30, seed=1, noise=1.0)
    problem, loss = bl.problems.Lasso(X, y), bl.losses.SquaredError(Xv, yv)
    lam0 = problem.lam_max() / 2
    scalar = bl.minimize(problem, loss, lam0, log_scale=True, steps=15, lr=0.3,
                         progress=False)
    assert scalar.strategy == "partial_smoothness"
    assert scalar.loss < scalar.history["loss"][0]
    weighted = bl.minimize(problem, loss, np.full(30, float(scalar.theta)), log_scale=True,
                           steps=15, lr=0.3, progress=False)
    assert weighted.theta.shape == (30,) and np.all(weighted.theta > 0)
    assert weighted.loss <= scalar.loss + 1e-12


# --- hypergradient and jvp ---
def test_hypergradient_torch_loss_equals_ready_loss():
    import torch

    X, y = regression_data(50, 5, seed=8)
    Xv, yv = regression_data(30, 5, seed=9)
    problem = bl.problems.Ridge(X, y)
    Xv_t, yv_t = torch.from_numpy(Xv), torch.from_numpy(yv)

    def loss(x, lam):   # depends on theta too: adds grad_theta L
        return 0.5 * ((Xv_t @ x - yv_t) ** 2).mean() + 0.01 * lam

    v1, g1 = bl.hypergradient(problem, loss, 0.3, "implicit")
    v2, g2 = bl.hypergradient(problem, bl.losses.SquaredError(Xv, yv), 0.3, "analytic")
    assert v1 == pytest.approx(v2 + 0.003, rel=1e-12)
    assert float(g1) == pytest.approx(float(g2) + 0.01, rel=1e-9)
    _, g_log = bl.hypergradient(problem, loss, 0.3, "implicit", log_scale=True)
    assert float(g_log) == pytest.approx(0.3 * float(g1), rel=1e-12)


def test_jvp_needs_a_forward_mode_strategy():
    problem = bl.problems.Lasso(*regression_data(20, 5, seed=0))
    with pytest.raises(bl.NotApplicable, match="partial_smoothness, finite_difference"):
        bl.jvp(problem, 0.1, 1.0, "fixed_point")
    dx_fd = bl.jvp(problem, 0.1, 1.0, "finite_difference")
    np.testing.assert_allclose(bl.jvp(problem, 0.1, 1.0), dx_fd, rtol=1e-7, atol=1e-10)
