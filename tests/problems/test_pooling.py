"""RobustPooling: solvers against root finders and brute force, VJPs, bad input."""

import warnings

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import bilevel as bl

PENALTIES = ("quadratic", "pseudo_huber", "huber", "welsch", "truncated_quadratic")


def dphi(z, penalty, a):
    """phi' in NumPy, written out independently of the package."""
    if penalty == "quadratic":
        return z
    if penalty == "pseudo_huber":
        return z / np.sqrt(1 + (z / a) ** 2)
    if penalty == "huber":
        return np.clip(z, -a, a)
    if penalty == "welsch":
        return z / a**2 * np.exp(-z**2 / (2 * a**2))
    return np.where(np.abs(z) < a, z, 0.0)


def energy(y, x, penalty, a):
    z = y - x
    if penalty == "pseudo_huber":
        return np.sum(a**2 * (np.sqrt(1 + (z / a) ** 2) - 1))
    if penalty == "huber":
        return np.sum(np.where(np.abs(z) <= a, z**2 / 2, a * (np.abs(z) - a / 2)))
    if penalty == "welsch":
        return np.sum(1 - np.exp(-z**2 / (2 * a**2)))
    if penalty == "truncated_quadratic":
        return np.sum(np.minimum(z**2, a**2) / 2)
    return np.sum(z**2 / 2)


@st.composite
def samples(draw, max_n=25):
    """Rows of Gaussian inliers (scale 0.2-2) with 0-3 outliers up to 20 away."""
    n = draw(st.integers(2, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = draw(st.floats(-5, 5)) + draw(st.floats(0.2, 2.0)) * rng.standard_normal(n)
    k = draw(st.integers(0, min(3, n - 1)))
    x[:k] += rng.uniform(-20, 20, k)
    return x, draw(st.floats(0.3, 3.0))


# --- forward ---
@given(samples(), st.sampled_from(["pseudo_huber", "huber"]))
def test_convex_penalties_match_brentq(instance, penalty):
    x, a = instance
    y = bl.problems.RobustPooling(penalty, a).solve(x).x
    F = lambda t: np.sum(dphi(t - x, penalty, a))   # noqa: E731  (increasing in t)
    if penalty == "huber" and not np.any(np.abs(y - x) < a):
        assume(False)                           # an interval of minimizers (tested below)
    ref = scipy.optimize.brentq(F, x.min() - 1, x.max() + 1, xtol=1e-15, rtol=1e-15)
    # Both exact to round-off: a few ulps of max|x| (brentq's own tolerance is 1e-15).
    assert abs(y - ref) <= 1e-12 * max(1.0, np.abs(x).max())


@given(samples(), st.floats(0.5, 3.0))
def test_welsch_is_a_strict_local_minimum_and_global_on_unimodal_data(instance, a):
    x, _ = instance
    prob = bl.problems.RobustPooling("welsch", a)
    sol = prob.solve(x)
    y = float(sol.x)
    z = y - x
    assert sol.converged
    # Stationary to round-off (relative to the size of the terms, or the Newton step
    # relative to |y| + alpha when every term is tiny) with positive curvature.
    g, h = np.sum(dphi(z, "welsch", a)), np.sum((1 - z**2 / a**2) * np.exp(-z**2 / (2 * a**2)))
    assert h > 0
    assert (abs(g) <= 1e-12 * np.sum(np.abs(dphi(z, "welsch", a)))
            or abs(g) / (h / a**2) <= 1e-12 * (abs(y) + a))
    # Unimodal data (every point within alpha of the median): the energy has one
    # minimum there; compare with a grid search refined by brentq.
    inliers = np.abs(x - np.median(x)) < 0.5 * a
    if inliers.all():
        grid = np.linspace(x.min(), x.max(), 2001)
        t0 = grid[np.argmin([energy(t, x, "welsch", a) for t in grid])]
        F = lambda t: np.sum(dphi(t - x, "welsch", a))    # noqa: E731
        ref = scipy.optimize.brentq(F, t0 - 0.01 * a, t0 + 0.01 * a, xtol=1e-15, rtol=1e-15)
        assert abs(y - ref) <= 1e-12 * max(1.0, np.abs(x).max())


def test_welsch_starts_at_the_median_or_at_init():
    x = np.array([0.0, 0.1, -0.1, 5.0, 5.1, 5.2, 5.3])     # two clusters, median 5.0
    prob = bl.problems.RobustPooling("welsch", 0.5)
    assert abs(prob.solve(x).x - 5.15) < 1e-3               # the median's basin
    assert abs(prob.solve(x, init=0.0).x) < 1e-3            # a user start in the other


def welsch_minima(x, a):
    """Every local minimum of the Welsch energy: a grid of step a/200, refined by brentq."""
    F = lambda t: np.sum(dphi(t - x, "welsch", a))          # noqa: E731
    grid = np.arange(x.min() - a, x.max() + a, a / 200)
    g = np.array([F(t) for t in grid])
    minima = [scipy.optimize.brentq(F, grid[i], grid[i + 1], xtol=1e-15, rtol=1e-15)
              for i in np.flatnonzero((g[:-1] < 0) & (g[1:] >= 0))]
    return np.array(minima)


def test_welsch_best_start_keeps_the_lower_minimum():
    # The median (10) lies in the basin of {10, 10.5, 11}, the mean (0.2) in the basin of the
    # tighter {0, 0.1, 0.2}, whose energy is lower: the global minimum of the grid search.
    x = np.array([-100.0, 0.0, 0.1, 0.2, 10.0, 10.5, 11.0, 30.0, 40.0])
    minima = welsch_minima(x, 1.0)
    best = minima[np.argmin([energy(t, x, "welsch", 1.0) for t in minima])]
    y = {s: float(bl.problems.RobustPooling("welsch", 1.0, start=s).solve(x).x)
         for s in ("median", "mean", "best")}
    assert abs(y["median"] - 10.5) < 1e-12 and abs(best - 0.1) < 1e-12
    # Both exact to round-off (brentq to 1e-15 against the kernel's Newton).
    assert abs(y["best"] - best) <= 1e-12 and abs(y["mean"] - best) <= 1e-12


@st.composite
def two_clusters(draw):
    """Two Gaussian clusters 3-8 alpha apart, of 2-6 points each, and 0-3 outliers."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    a = draw(st.floats(0.5, 2.0))
    sizes = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    x = np.concatenate([draw(st.floats(0.1, 0.6)) * a * rng.standard_normal(sizes[0]),
                        draw(st.floats(3.0, 8.0)) * a
                        + draw(st.floats(0.1, 0.6)) * a * rng.standard_normal(sizes[1]),
                        rng.uniform(-30, 30, draw(st.integers(0, 3))) * a])
    return x, a


@given(two_clusters())
def test_welsch_best_start_is_the_better_start_and_global_when_either_finds_it(instance):
    x, a = instance
    prob = bl.problems.RobustPooling("welsch", a)
    y_med = float(prob.solve(x, init=np.median(x)).x)
    y_mean = float(prob.solve(x, init=x.mean()).x)
    y = float(bl.problems.RobustPooling("welsch", a, start="best").solve(x).x)
    e = {t: energy(t, x, "welsch", a) for t in (y_med, y_mean, y)}
    # The lower of the two starts' minima (the median's on a tie), to round-off.
    assert e[y] <= min(e[y_med], e[y_mean]) + 1e-14 * x.size
    assert y in (y_med, y_mean)
    # Against the grid: y is a local minimum of the energy, and the global one whenever
    # either start's basin holds it (the grid's minima are distinct by more than 1e-6).
    minima = welsch_minima(x, a)
    assert np.min(np.abs(minima - y)) <= 1e-10 * max(1.0, np.abs(x).max())
    glob = minima[np.argmin([energy(t, x, "welsch", a) for t in minima])]
    if min(abs(y_med - glob), abs(y_mean - glob)) <= 1e-8 * max(1.0, abs(glob)):
        assert abs(y - glob) <= 1e-10 * max(1.0, np.abs(x).max())


@pytest.mark.parametrize("start", ["median", "mean", "best"])
def test_welsch_starts_agree_between_the_single_and_the_batched_solve(rng, start):
    X = np.concatenate([rng.standard_normal((40, 9)),
                        np.where(rng.random((40, 9)) < 0.4, rng.uniform(-6, 6, (40, 9)), 0.0)],
                       axis=1)
    prob = bl.problems.RobustPooling("welsch", 1.0, start=start)
    layer = bl.torch.Layer(prob)
    Y = layer(torch.tensor(X)).numpy()
    np.testing.assert_array_equal(Y, prob.solve(X).x)
    # Row by row: the same local minima (a row's mean may differ from the batch's by an ulp).
    np.testing.assert_allclose(Y, [prob.solve(row).x for row in X], rtol=0, atol=1e-14)
    # The other penalties do not depend on the start.
    for penalty in ("pseudo_huber", "huber", "truncated_quadratic"):
        np.testing.assert_array_equal(
            bl.problems.RobustPooling(penalty, 1.0, start=start).solve(X).x,
            bl.problems.RobustPooling(penalty, 1.0).solve(X).x)


def test_welsch_best_start_warns_where_the_two_minima_tie():
    # Median 10 and mean 0 in clusters of equal size and spread, far from the rest: the
    # two minima have the same energy to round-off, and the pooled value jumps there.
    x = np.array([[-100.0, 0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 30.0, 40.0],
                  [-100.0, 0.0, 0.1, 0.2, 10.0, 10.5, 11.0, 30.0, 40.0]])
    prob = bl.problems.RobustPooling("welsch", 1.0, start="best")
    np.testing.assert_allclose(prob.solve(x).info["gap"], [0.0, 0.22503115], atol=1e-8)
    xt = torch.tensor(x, requires_grad=True)
    with pytest.warns(bl.DegeneracyWarning):
        bl.torch.Layer(prob)(xt).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bl.torch.Layer(prob)(xt[1:]).sum().backward()


@given(samples(max_n=12), st.floats(0.3, 3.0))
def test_truncated_quadratic_is_the_global_minimum(instance, a):
    x, _ = instance
    y = float(bl.problems.RobustPooling("truncated_quadratic", a).solve(x).x)
    # Brute force: every contiguous window of the sorted data, its mean, the true energy.
    xs = np.sort(x)
    cands = [xs[j:k].mean() for j in range(x.size) for k in range(j + 1, x.size + 1)]
    best = min(cands, key=lambda t: energy(t, x, "truncated_quadratic", a))
    e_best = energy(best, x, "truncated_quadratic", a)
    # Energies to round-off; the location too unless two minima tie within 1e-9.
    assert energy(y, x, "truncated_quadratic", a) <= e_best + 1e-12 * x.size * a**2
    # The location is unique unless a candidate elsewhere ties the best energy.
    tie = any(abs(t - best) > 1e-9 and energy(t, x, "truncated_quadratic", a) < e_best + 1e-6
              for t in cands)
    if not tie:
        assert abs(y - best) <= 1e-12 * max(1.0, np.abs(x).max())


def test_quadratic_is_the_mean_and_batches_over_leading_axes(rng):
    x = rng.standard_normal((3, 4, 6))
    sol = bl.problems.RobustPooling("quadratic").solve(x)
    np.testing.assert_allclose(sol.x, x.mean(axis=-1), rtol=1e-15, atol=1e-15)
    for penalty in PENALTIES:
        prob = bl.problems.RobustPooling(penalty, 0.7)
        Y = prob.solve(x).x
        assert Y.shape == (3, 4)
        loop = np.array([[prob.solve(x[i, j]).x for j in range(4)] for i in range(3)])
        np.testing.assert_array_equal(Y, loop)      # the same kernel row by row


def test_huber_interval_of_minimizers_returns_its_midpoint():
    prob = bl.problems.RobustPooling("huber", 1.0)
    x = np.array([0.0, 10.0])                       # any y in [1, 9] is optimal
    assert prob.solve(x).x == 5.0
    g = bl.vjp(prob, x, np.asarray(1.0), "analytic")
    np.testing.assert_allclose(g, [0.5, 0.5])       # the midpoint moves by half of either
    np.testing.assert_allclose(bl.vjp(prob, x, np.asarray(1.0), "finite_difference"),
                               [0.5, 0.5], atol=1e-9)


# --- VJPs ---
def away_from_kinks(prob, x):
    """Residuals at least 1e-3 alpha from the kinks of huber / truncated quadratic."""
    y = prob.solve(x).x
    if prob.penalty in ("huber", "truncated_quadratic"):
        z = np.abs(y[..., None] - x)
        return np.all(np.abs(z - prob.alpha) > 1e-3 * prob.alpha) and np.any(z < prob.alpha)
    return True


@given(samples(), st.sampled_from(PENALTIES))
def test_analytic_vjp_equals_implicit(instance, penalty):
    x, a = instance
    prob = bl.problems.RobustPooling(penalty, a)
    assume(away_from_kinks(prob, x))
    v = np.asarray(1.3)
    g = bl.vjp(prob, x, v, "analytic")
    g_imp = bl.vjp(prob, x, v, "implicit")
    # Same formula, two evaluations (closed form vs autograd + a 1x1 solve): round-off.
    np.testing.assert_allclose(g, g_imp, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(g.sum(), 1.3, rtol=1e-12)     # shifting x shifts y*


@given(samples(max_n=10), st.sampled_from(PENALTIES))
def test_analytic_vjp_equals_finite_differences(instance, penalty):
    x, a = instance
    prob = bl.problems.RobustPooling(penalty, a)
    assume(away_from_kinks(prob, x))
    if penalty == "truncated_quadratic":
        y = prob.solve(x).x
        assume(_tq_gap(x, a, y) > 1e-3)             # a unique global minimum
    if penalty == "welsch":
        # The basin must not change under a perturbation of x: at the median start, either
        # the curvature is positive or the slope clearly says which way is downhill (a
        # median at a local maximum, or far from every point, picks a basin by round-off).
        z = np.median(x) - x
        g = np.sum(dphi(z, "welsch", a))
        h = np.sum((1 - z**2 / a**2) * np.exp(-z**2 / (2 * a**2)))
        assume(h > 0 or abs(g) > 1e-3 * x.size / a)
    g = bl.vjp(prob, x, np.asarray(1.0), "analytic")
    h = 1e-6 * max(1.0, np.abs(x).max())
    fd = np.array([(prob.solve(x + h * e).x - prob.solve(x - h * e).x) / (2 * h)
                   for e in np.eye(x.size)])
    # Central differences: truncation ~h^2 |y'''|, round-off ~1e-16 max|x| / h ~ 1e-10.
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)


@given(samples(max_n=12), st.sampled_from(PENALTIES[:4]),
       st.sampled_from(["median", "mean", "best"]))
def test_step_map_fixed_point_and_unroll_equal_analytic(instance, penalty, start):
    x, a = instance
    prob = bl.problems.RobustPooling(penalty, a, start=start)
    assume(away_from_kinks(prob, x))
    y = prob.solve(x).x
    # The gradient step contracts by 1 - F'(y*) / L: keep the replay within max_steps.
    curvature = np.sum(_d2phi(y - x, penalty, a))
    bound = x.size / a**2 if penalty == "welsch" else x.size
    assume(curvature / bound > 5e-3)
    if penalty == "welsch":
        # A start at a stationary point that is no minimum (the median halfway between two
        # clusters) is a fixed point of the step: unroll stays there and warns (the solver
        # leaves it towards the nearest point). Keep starts whose downhill side is clear.
        z = prob.capabilities.step.start((x,)) - x
        slope = np.sum(dphi(z, "welsch", a))
        assume(np.sum(_d2phi(z, "welsch", a)) > 0 or abs(slope) > 1e-3 * x.size / a)
    v = np.asarray(0.7)
    g = bl.vjp(prob, x, v, "analytic")
    # fixed_point: one 1x1 solve of the step map's linearization, round-off only.
    np.testing.assert_allclose(bl.vjp(prob, x, v, "fixed_point"), g, rtol=1e-9, atol=1e-12)
    # unroll replays the step from the solver's start until its iterate and adjoint
    # residual are within 1e-10 of the fixed point: the error is of that order.
    np.testing.assert_allclose(bl.vjp(prob, x, v, "unroll"), g, rtol=1e-7, atol=1e-9)


def test_truncated_quadratic_offers_no_step_and_says_why():
    prob = bl.problems.RobustPooling("truncated_quadratic", 1.0)
    assert "step" not in prob.capabilities.names
    with pytest.raises(bl.NotApplicable, match="global minimizer"):
        bl.vjp(prob, np.array([0.0, 0.3, 5.0]), np.asarray(1.0), "unroll")


def _d2phi(z, penalty, a):
    if penalty == "pseudo_huber":
        return (1 + (z / a) ** 2) ** -1.5
    if penalty == "huber":
        return (np.abs(z) <= a).astype(float)
    if penalty == "welsch":
        return (1 - z**2 / a**2) * np.exp(-(z**2) / (2 * a**2)) / a**2
    return np.ones_like(z)


def _tq_gap(x, a, y):
    xs = np.sort(x)
    energies = sorted({energy(xs[j:k].mean(), x, "truncated_quadratic", a)
                       for j in range(x.size) for k in range(j + 1, x.size + 1)})
    return energies[1] - energies[0] if len(energies) > 1 else np.inf


def test_batched_vjp_over_leading_axes(rng):
    x = rng.standard_normal((2, 3, 7))
    v = rng.standard_normal((2, 3))
    prob = bl.problems.RobustPooling("pseudo_huber", 0.5)
    g = bl.vjp(prob, x, v, "analytic")
    g_imp = bl.vjp(prob, x, v, "implicit")
    np.testing.assert_allclose(g, g_imp, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(g.sum(axis=-1), v, rtol=1e-12)
    g_tuple = bl.vjp(prob, (x,), v, "analytic")      # theta as a 1-tuple keeps its structure
    assert isinstance(g_tuple, tuple) and len(g_tuple) == 1
    np.testing.assert_array_equal(g_tuple[0], g)


# --- bad input ---
def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="alpha"):
        bl.problems.RobustPooling("huber", -1.0)
    with pytest.raises(ValueError, match="alpha"):
        bl.problems.RobustPooling("huber", float("nan"))
    with pytest.raises(ValueError, match="penalty must be one of"):
        bl.problems.RobustPooling("cauchy")
    with pytest.raises(ValueError, match="start must be one of median, mean, best"):
        bl.problems.RobustPooling("welsch", start="lowest")
    prob = bl.problems.RobustPooling()
    with pytest.raises(ValueError, match="NaN"):
        prob.solve(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="at least one dimension"):
        prob.solve(np.asarray(1.0))
    with pytest.raises(ValueError, match="at least one dimension"):
        prob.solve(np.ones((3, 0)))
    with pytest.raises(ValueError, match="v must have shape"):
        bl.vjp(prob, np.ones((2, 3)), np.ones(3), "analytic")


def test_non_convergence_warns():
    x = np.array([0.0, 0.3, 5.0, 5.5, 9.0])
    prob = bl.problems.RobustPooling("welsch", 1.0, max_iter=1)
    with pytest.warns(bl.ConvergenceWarning, match="raise max_iter"):
        sol = prob.solve(x)
    assert not sol.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bl.problems.RobustPooling("welsch", 1.0).solve(x).converged


# -- issue 17 ------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [1e-160, 1e-200, 1e-300])
def test_pseudo_huber_tiny_alpha_is_the_median(alpha):
    """alpha 1e-160 returned the mean: (z / alpha)^2 overflowed and phi' vanished. The
    pseudo-Huber minimizer tends to the median as alpha -> 0 (odd n: the middle point)."""
    x = np.random.default_rng(0).standard_normal((3, 7))
    sol = bl.problems.RobustPooling("pseudo_huber", alpha=alpha).solve(x)
    assert sol.converged
    # the middle point to rounding of the bisection (|y| + alpha) 1e-15
    assert np.allclose(sol.x, np.median(x, axis=1), rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("penalty", ["pseudo_huber", "huber", "welsch", "truncated_quadratic"])
def test_pooling_scaled_data_and_alpha(penalty):
    """``y*(c x; c alpha) = c y*(x; alpha)`` for c from 1e-12 to 1e12."""
    x = np.random.default_rng(2).standard_normal((4, 9))
    ref = bl.problems.RobustPooling(penalty, alpha=0.7).solve(x).x
    for c in (1e-12, 1e12):
        got = bl.problems.RobustPooling(penalty, alpha=0.7 * c).solve(c * x).x / c
        assert np.allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
