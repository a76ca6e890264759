"""bl.minimize reports honestly: a warning when it made the loss worse, progress per evaluation."""

import argparse
import re
import warnings

import numpy as np
import pytest

import bilevel as bl
from bilevel.cli import _task


def _diabetes(name):
    label, problem, loss, theta, _ = _task(argparse.Namespace(problem=name, dataset=None,
                                                              theta=None))
    return problem, loss, theta


# Lasso: as lam collapses towards 0 the unrolled inner solver stops before its tolerance;
# that ConvergenceWarning is expected here, the test is about minimize's own warning.
@pytest.mark.parametrize("name, strategy, steps", [
    ("ridge", None, 20),
    pytest.param("lasso", "unroll", 3, marks=pytest.mark.filterwarnings(
        "ignore::bilevel.ConvergenceWarning"))])
def test_warns_when_the_loss_ends_above_its_start(name, strategy, steps):
    # The two runs of issue 18: gd with lr=0.1 on log lam overshoots on the diabetes data
    # (ridge 1524.08 -> 1559.34 in 20 steps; lasso with unroll: lam collapses to ~1e-20).
    problem, loss, theta = _diabetes(name)
    with pytest.warns(RuntimeWarning, match=r"made the upper loss worse") as caught:
        result = bl.minimize(problem, loss, theta, strategy, optimizer="gd", steps=steps,
                             log_scale=True, progress=False)
    message = next(str(w.message) for w in caught if w.category is RuntimeWarning)
    assert result.loss > result.history["loss"][0]
    for knob in ("lower lr", "optimizer=", "lbfgs", "another strategy", "lr=0.1"):
        assert knob in message
    if name == "ridge":
        assert result.history["loss"][0] == pytest.approx(1524.08, abs=0.01)
        assert result.loss == pytest.approx(1559.34, abs=0.01)


def test_no_warning_when_the_loss_decreases():
    problem, loss, theta = _diabetes("logistic")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = bl.minimize(problem, loss, theta, optimizer="lbfgs", steps=3,
                             log_scale=True, progress=False)
    assert result.loss < result.history["loss"][0]


def _ridge():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 4)), rng.standard_normal(20)
    Xv, yv = rng.standard_normal((10, 4)), rng.standard_normal(10)
    return bl.problems.Ridge(X, y), bl.losses.SquaredError(Xv, yv)


def test_lines_mode_writes_one_line_per_step(capsys):
    problem, loss = _ridge()
    result = bl.minimize(problem, loss, 1.0, optimizer="lbfgs", steps=4, log_scale=True,
                         progress=True)           # stderr is not a terminal under capsys
    err = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(err)
    assert len(err) == result.n_steps
    for k, line in enumerate(err, 1):
        assert line.startswith(f"minimize (analytic): step {k}/4  loss ")


def test_bar_redraws_at_every_evaluation(capsys):
    problem, loss = _ridge()
    seen = []
    bl.minimize(problem, loss, 1.0, optimizer="lbfgs", steps=4, log_scale=True,
                progress="bar", callback=lambda *a: seen.append(a) and False)
    err = capsys.readouterr().err
    counts = [int(n) for n in re.findall(r"evals=(\d+)", err)]
    # L-BFGS evaluates more than once per step (its line search): every evaluation shows.
    assert counts and max(counts) > len(seen)
    assert set(range(1, max(counts) + 1)) <= set(counts)


def test_progress_must_be_a_known_mode():
    problem, loss = _ridge()
    with pytest.raises(ValueError, match="progress must be"):
        bl.minimize(problem, loss, 1.0, progress="fancy")
