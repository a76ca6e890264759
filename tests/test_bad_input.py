"""The bad-input probe: every registered problem and public verb, by category (issue 17).

Walks ``bilevel._registry.PROBLEMS`` and each class's ``examples()``, so that a problem is
probed the day it is registered. Categories: NaN / Inf theta (every verb), wrong shapes,
out-of-domain values (negated theta), bad batch rows in the torch layer, bad strategy knobs
and bad arguments of the verbs. Each case must end in a ``ValueError`` (or ``TypeError``
for a wrong type) whose message names what is wrong, or in a finite answer; never in an
error from inside torch, numba or numpy, nor in a silent NaN.
"""

import subprocess
import sys
import textwrap
from dataclasses import fields

import numpy as np
import pytest
import torch

import bilevel as bl
from bilevel._registry import PROBLEMS, STRATEGIES
from bilevel._types import as_tuple, like_structure
from bilevel.testing import check_vjp

CASES = [pytest.param(prob, theta, id=label)
         for name in sorted(PROBLEMS) for label, prob, theta in PROBLEMS[name].examples()]
NON_FINITE = r"NaN|Inf|finite"


def _parts(theta):
    return [np.array(p, dtype=np.float64) for p in as_tuple(theta)]


def _replace(theta, k, value):
    parts = _parts(theta)
    parts[k] = value
    return like_structure(tuple(parts), theta)


def _poisoned(theta, k, bad):
    part = _parts(theta)[k].copy()
    part.flat[0] = bad
    return _replace(theta, k, part)


def _loss(x, theta):
    return (x ** 2).sum()


def _verbs(prob, theta):
    """The public verbs, each a function of theta (``v`` shaped like the clean ``x*``)."""
    v = np.ones_like(prob.solve(theta).x)
    return {
        "solve": lambda th: prob.solve(th),
        "vjp": lambda th: bl.vjp(prob, th, v),
        "hypergradient": lambda th: bl.hypergradient(prob, _loss, th),
        "jacobian": lambda th: bl.jacobian(prob, th),
        "compare": lambda th: bl.compare(prob, _loss, th, strategies=[], repeat=1),
        "layer": lambda th: bl.torch.Layer(prob)(*(torch.from_numpy(p) for p in _parts(th))),
    }


@pytest.mark.parametrize("prob, theta", CASES)
def test_non_finite_theta_is_named_by_every_verb(prob, theta):
    for k in range(len(_parts(theta))):
        for bad in (np.nan, np.inf, -np.inf):
            with pytest.raises(ValueError, match=NON_FINITE):
                prob.solve(_poisoned(theta, k, bad))
    poisoned = _poisoned(theta, 0, np.nan)
    for verb, call in _verbs(prob, theta).items():
        with pytest.raises(ValueError, match=NON_FINITE) as info:
            call(poisoned)
        assert info.value is not None, verb


def _answer_or_named_error(call):
    """Run ``call``: a ValueError (or TypeError) is fine, else the answer must be finite."""
    try:
        sol = call()
    except (ValueError, TypeError) as exc:
        assert str(exc), "an error without a message"
        return exc
    assert np.all(np.isfinite(sol.x)), "a non-finite answer, silently"
    return None


@pytest.mark.parametrize("prob, theta", CASES)
def test_wrong_shapes_are_named_or_harmless(prob, theta):
    for k, part in enumerate(_parts(theta)):
        longer = np.concatenate([part.ravel(), [0.5]]) if part.ndim else np.array([part, part])
        wrong = [longer] + ([part[..., None]] if part.ndim >= 1 else [])
        for bad in wrong:
            _answer_or_named_error(lambda bad=bad, k=k: prob.solve(_replace(theta, k, bad)))
    if len(_parts(theta)) > 1:      # a tuple theta given as one array
        with pytest.raises((ValueError, TypeError)):
            prob.solve(_parts(theta)[0])


@pytest.mark.parametrize("prob, theta", CASES)
@pytest.mark.filterwarnings("ignore::bilevel.ConvergenceWarning")
def test_out_of_domain_values_are_named_or_solved(prob, theta):
    """Negated parameters: outside the domain (a weight < 0) a named error, else an answer."""
    for k, part in enumerate(_parts(theta)):
        negated = -np.abs(part) - 1.0
        moved = _replace(theta, k, negated)
        if prob.in_domain(moved):
            continue        # a location parameter (a signal, a cost): nothing to probe
        with pytest.raises(ValueError) as info:
            prob.solve(moved)
        assert ">" in str(info.value) or "must" in str(info.value)


def _batched(prob, theta):
    """``(layer, tensors of a 3-row batch)``, or None when theta does not batch this way."""
    batch = prob.capabilities.batch
    if batch is None:
        return None
    parts = _parts(theta)
    if len(parts) != len(batch.theta_ndim) or any(p.ndim != d for p, d in
                                                  zip(parts, batch.theta_ndim)):
        return None
    return bl.torch.Layer(prob), [np.stack([p, p, p]) for p in parts]


@pytest.mark.parametrize("prob, theta", CASES)
def test_a_bad_batch_row_is_named(prob, theta):
    built = _batched(prob, theta)
    if built is None:
        pytest.skip("no batched layer for this theta")
    layer, stacked = built
    layer(*map(torch.from_numpy, stacked))      # a good batch first: its shapes are known
    for k in range(len(stacked)):
        for bad in (np.nan, np.inf):
            rows = [s.copy() for s in stacked]
            rows[k][(1,) + (0,) * (rows[k].ndim - 1)] = bad
            with pytest.raises(ValueError, match=r"batch row 1: .*(NaN|Inf)"):
                layer(*map(torch.from_numpy, rows))
        rows = [s.copy() for s in stacked]
        rows[k][1] = -np.abs(rows[k][1]) - 1.0
        single = [r[1] for r in rows]
        if not prob.in_domain(like_structure(tuple(single), theta)):
            with pytest.raises(ValueError, match="batch row 1"):
                layer(*map(torch.from_numpy, rows))


def test_the_tv1d_layer_names_negative_and_infinite_lam_rows():
    layer = bl.torch.Layer(bl.problems.TV1D(order=1), "analytic")
    s = torch.randn(3, 6)
    with pytest.raises(ValueError, match="batch row 1: lam must be >= 0"):
        layer(s, torch.tensor([0.5, -0.1, 0.2]))
    l2 = bl.torch.Layer(bl.problems.TV1D(order=2, norm="l2"))
    with pytest.raises(ValueError, match="batch row 2: lam contains NaN or Inf"):
        l2(s, torch.tensor([0.5, 0.1, np.inf]))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_bad_strategy_knobs_are_named(name):
    cls = STRATEGIES[name]
    for f in fields(cls):
        default = f.default
        if isinstance(default, bool) or default is None:
            continue
        bad = -1 if isinstance(default, (int, float)) else "bogus"
        with pytest.raises(ValueError, match=f.name):
            cls(**{f.name: bad})


def test_a_strategy_class_is_not_an_instance():
    X, y = bl.testing.regression_data(10, 3, seed=0)
    prob = bl.problems.Ridge(X, y)
    with pytest.raises(TypeError, match=r"instantiate it, Analytic\(\)"):
        bl.vjp(prob, 0.5, np.ones(3), bl.strategies.Analytic)
    with pytest.raises(TypeError, match="instantiate"):
        bl.torch.Layer(prob, bl.strategies.Implicit)


@pytest.mark.parametrize("make, match", [
    (lambda: bl.problems.TV1D(order=1.0), r"order must be 1, 2 or 3 \(an int\), got 1.0"),
    (lambda: bl.problems.TV1D(order=True), r"order must be 1, 2 or 3 \(an int\), got True"),
    (lambda: bl.problems.EntropicSimplex(step_size="a"), "step_size must be a real number"),
    (lambda: bl.problems.EntropicSimplex(step_size=np.nan), "step_size must be finite"),
    (lambda: bl.problems.MultiLabelSegmentation(mu="a"), "mu must be a real number"),
    (lambda: bl.problems.MultiLabelSegmentation(alpha=[1.0]), "alpha must be a real number"),
])
def test_bad_problem_knobs_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_verb_arguments_are_named():
    X, y = bl.testing.regression_data(10, 3, seed=0)
    prob = bl.problems.Ridge(X, y)
    with pytest.raises(ValueError, match="v must have shape"):
        bl.vjp(prob, 0.5, np.ones(4))
    with pytest.raises(ValueError, match=r"dtheta \(part 0\) must have theta's shape"):
        bl.jvp(prob, 0.5, np.ones(4), "finite_difference")
    tv = bl.problems.TV1D(1)
    with pytest.raises(ValueError, match=r"dtheta \(part 0\) must have theta's shape \(5,\)"):
        bl.jvp(tv, (np.ones(5), 0.5), (np.ones(3), 0.0))
    with pytest.raises(ValueError, match="warm_start contains NaN"):
        bl.hypergradient(prob, bl.losses.SquaredError(X, y), 0.5, "implicit",
                         warm_start=np.full(3, np.nan))
    with pytest.raises(ValueError, match="X has 5 columns but x\\* has shape \\(3,\\)"):
        bl.hypergradient(prob, bl.losses.SquaredError(np.ones((4, 5)), np.ones(4)), 0.5)
    with pytest.raises(ValueError, match="X has 5 columns"):
        bl.hypergradient(prob, bl.losses.LogisticLoss(np.ones((4, 5)), np.ones(4)), 0.5)
    with pytest.raises(ValueError, match="rtol and atol"):
        check_vjp(prob, 0.5, "implicit", rtol=-1)
    with pytest.raises(ValueError, match="n_directions must be an integer >= 1"):
        check_vjp(prob, 0.5, "implicit", n_directions=0)


def test_a_fork_pool_after_a_parallel_kernel_does_not_hang():
    """libgomp kills a fork child that launches a prange kernel: children run serial twins."""
    script = textwrap.dedent("""
        import multiprocessing as mp
        import numpy as np
        import bilevel as bl
        from bilevel import api

        def work(seed):
            S = np.random.default_rng(seed).standard_normal((800, 300))
            return float(api.solve_batch(bl.problems.TV1D(1), (S, np.full(800, 0.5)),
                                         "analytic").x.sum())

        if __name__ == "__main__":
            before = work(0)            # 800 x 300 >= the parallel size: a prange kernel
            with mp.get_context("fork").Pool(2) as pool:
                out = pool.map(work, [0, 1])
            assert out[0] == before, (out, before)
            print("ok")
    """)
    # 120 s: the child imports torch and loads cached kernels (seconds); a hang is forever.
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
