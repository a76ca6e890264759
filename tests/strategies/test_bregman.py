"""BregmanUnroll: mirror maps, unrolled derivatives against FD and exact Jacobians, knobs."""

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import bilevel as bl
from bilevel._types import Mirror, Solution
from bilevel.solvers import bregman as kernels
from bilevel.strategies.bregman import mirror_dual, mirror_primal

KINDS = ["euclidean", "entropy", "simplex", "box", "ball"]


def interior_point(kind, rng, shape=(4, 3)):
    x = rng.random(shape) + 0.05
    if kind == "simplex":
        return x / x.sum(axis=1, keepdims=True)
    if kind == "box":
        return 1.8 * x / x.max() - 0.9                  # in (-1, 1)
    if kind == "ball":
        return x / (np.linalg.norm(x, axis=1, keepdims=True) * 1.5)
    return x


@pytest.mark.parametrize("kind", KINDS)
def test_mirror_maps_invert_and_match_numba(kind, rng):
    x = interior_point(kind, rng)
    g = 0.3 * rng.standard_normal(x.shape)
    code = kernels.KIND_CODES[kind]
    # Round trip grad psi* o grad psi = id: round-off only.
    np.testing.assert_allclose(kernels.mirror_primal(kernels.mirror_dual(x, code), code), x,
                               rtol=1e-12, atol=1e-14)
    w = mirror_dual(torch.from_numpy(x), kind) - torch.from_numpy(g)
    step_torch = mirror_primal(w, kind).numpy()
    step_numba = kernels.mirror_primal(kernels.mirror_dual(x, code) - g, code)
    np.testing.assert_allclose(step_torch, step_numba, rtol=1e-12, atol=1e-14)
    closed = {"euclidean": x - g, "entropy": x * np.exp(-g), "box": np.tanh(np.arctanh(x) - g)}
    if kind in closed:                       # the paper's Examples 1 and 3, written out
        np.testing.assert_allclose(step_numba, closed[kind], rtol=1e-12)
    if kind == "simplex":                    # Example 2: exp(-c_i) / sum_j exp(-c_j)
        e = x * np.exp(-g)
        np.testing.assert_allclose(step_numba, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    if kind in ("simplex", "box", "ball"):   # iterates stay in the interior
        assert np.all(np.abs(step_numba) < 1) and np.all(np.isfinite(step_numba))


def test_mirror_rejects_unknown_kinds_and_incomplete_primal_dual():
    with pytest.raises(ValueError, match="mirror kinds"):
        Mirror(kind="l1", scheme="gradient", start=(np.ones(2),), step_size=1.0,
               gradient=None, forward=None)
    with pytest.raises(ValueError, match="operator, adjoint"):
        Mirror(kind="euclidean", scheme="primal_dual", start=(np.ones(2),), step_size=1.0,
               gradient=None, forward=None, dual_kind="box")


# --- simplex-constrained least squares ---
@st.composite
def simplex_ls(draw):
    m = draw(st.integers(4, 12))
    n = draw(st.integers(2, min(m, 6)))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    return A, rng.standard_normal(m)


def margin(A, b, x):
    """Smallest multiplier off the support and smallest entry on it (non-degeneracy)."""
    g = A.T @ (A @ x - b)
    support = x > 1e-9
    nu = g[support].mean()
    off = (g[~support] - nu).min() if (~support).any() else np.inf
    return min(off, x[support].min())


@given(simplex_ls())
def test_simplex_ls_bregman_converges_to_the_exact_support_jacobian(instance):
    A, b = instance
    prob = bl.problems.SimplexLeastSquares(A)
    sol = prob.solve(b)
    assume(margin(A, b, sol.x) > 1e-2)
    v = np.random.default_rng(1).standard_normal(A.shape[1])
    g, info = bl.strategies.BregmanUnroll().vjp(prob, sol, v)
    assert info["distance"] <= 1e-9 and info["replay_error"] <= 1e-12
    # Closed form on the support S: [[A_S^T A_S, 1], [1^T, 0]] [dx_S; -dnu] = [A_S^T db; 0].
    S = np.flatnonzero(sol.x > 1e-9)
    k = S.size
    K = np.block([[A[:, S].T @ A[:, S], np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
    J = np.linalg.solve(K, np.vstack([A[:, S].T, np.zeros((1, A.shape[0]))]))[:k]
    exact = J.T @ v[S]
    # The derivative converges like k rho^k with the iterates: 1e-6 after tol 1e-12.
    np.testing.assert_allclose(g, exact, rtol=1e-6, atol=1e-9 * max(1.0, np.abs(exact).max()))
    np.testing.assert_allclose(bl.vjp(prob, b, v, "analytic"), exact, rtol=1e-9, atol=1e-12)


# --- finite differences of the same unrolled map ---
def unrolled_fd(problem, sol, v, n_steps, direction, h=1e-6):
    """Central difference of ``v . x_n(theta)`` along ``direction``, with numba's forward.

    The step sizes are those of the unperturbed mirror: the map differentiated is
    ``theta -> x_n(theta)`` for fixed steps, as in the torch replay.
    """
    theta = sol.theta
    parts = theta if isinstance(theta, tuple) else (theta,)
    base = problem.mirror(sol)

    def value(t):
        moved = tuple(p + t * d for p, d in zip(parts, direction))
        moved = moved if isinstance(theta, tuple) else moved[0]
        mirror = problem.mirror(Solution(x=sol.x, theta=moved, n_iter=0, converged=True))
        state, n, _ = mirror.forward(n_steps, -1.0, base.step_size, base.dual_step_size)
        assert n == n_steps
        x = (mirror.output(tuple(torch.from_numpy(s) for s in state)).numpy()
             if mirror.output is not None else state[0])
        return float(np.vdot(v, x))

    return (value(h) - value(-h)) / (2 * h)


def unrolled_instances():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((6, 4))
    C = rng.random((3, 3, 3))
    s = np.repeat([0.0, 2.0, 0.5], 5) + 0.1 * rng.standard_normal(15)
    game = np.array([[0.1, 1.0, -1.0], [-1.0, 0.2, 1.0], [1.0, -1.0, -0.1]])   # near RPS
    image = np.zeros((5, 6))
    image[:, 3:] = 1.0
    image = image + 0.05 * rng.standard_normal(image.shape)
    return {
        "simplex_ls": (bl.problems.SimplexLeastSquares(A), rng.standard_normal(6)),
        "segmentation": (bl.problems.MultiLabelSegmentation(mu=0.3, alpha=0.5), C),
        "matrix_game": (bl.problems.MatrixGame(), game),
        "tv1d": (bl.problems.TV1D(1), (s, np.asarray(0.3))),
        "tv1d-order2": (bl.problems.TV1D(2), (s, np.asarray(0.2))),
        "tv2d": (bl.problems.TV2D(), (image, np.asarray(0.1))),
        "tv2d-blur": (bl.problems.TV2D("blur", blur_sigma=0.7), (image, np.asarray(0.05))),
    }


@pytest.mark.parametrize("key", list(unrolled_instances()))
def test_unrolled_vjp_matches_finite_differences_of_the_unrolled_map(key):
    problem, theta = unrolled_instances()[key]
    sol = Solution(x=problem.solve(theta).x, theta=theta, n_iter=0, converged=True)
    rng = np.random.default_rng(7)
    v = rng.standard_normal(sol.x.shape)
    parts = theta if isinstance(theta, tuple) else (theta,)
    direction = tuple(rng.standard_normal(np.shape(p)) for p in parts)
    n = 60
    g, info = bl.strategies.BregmanUnroll().with_budget(n).vjp(problem, sol, v)
    assert info["iterations"] == n and info["replay_error"] <= 1e-12
    directional = sum(float(np.vdot(gi, d)) for gi, d in zip(
        g if isinstance(g, tuple) else (g,), direction))
    fd = unrolled_fd(problem, sol, v, n, direction)
    # Central differences with h = 1e-6: O(h^2) truncation plus ~1e-10 round-off.
    np.testing.assert_allclose(directional, fd, rtol=1e-6, atol=1e-8)


# --- the primal-dual methods at convergence ---
def test_matrix_game_bregman_matches_the_equilibrium_jacobian():
    rps = np.array([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]])
    A = rps + 0.3 * np.array([[0.5, -0.2, 0.1], [0.3, 0.4, -0.6], [-0.1, 0.2, 0.3]])
    prob = bl.problems.MatrixGame()
    sol = prob.solve(A)
    assert np.all(sol.x > 1e-3)                # fully mixed: the equilibrium is smooth in A
    v = np.random.default_rng(2).standard_normal(6)
    g, info = bl.strategies.BregmanUnroll().vjp(prob, sol, v)
    fd = bl.vjp(prob, A, v, "finite_difference")
    # Converged last iterate (residual 1e-12): the derivative to ~1e-8; FD to ~5e-8.
    np.testing.assert_allclose(g, bl.vjp(prob, A, v, "analytic"), rtol=1e-6, atol=1e-9)
    # FD divides the solver's 1e-12 residual by h = 7e-4 |A_ij| (A_ij down to 0.03): ~5e-8.
    np.testing.assert_allclose(bl.vjp(prob, A, v, "analytic"), fd, rtol=1e-6, atol=1e-9)


@st.composite
def tv_signals(draw):
    k = draw(st.integers(2, 4))
    lengths = draw(st.lists(st.integers(3, 8), min_size=k, max_size=k))
    levels = np.cumsum([0.0] + [draw(st.sampled_from([-1, 1])) * draw(st.floats(1.5, 4))
                                for _ in range(k - 1)])
    seed = draw(st.integers(0, 2**31 - 1))
    s = np.repeat(levels, lengths) + 0.1 * np.random.default_rng(seed).standard_normal(
        sum(lengths))
    return s, draw(st.floats(0.1, 0.8)), draw(st.sampled_from([1, 2]))


@given(tv_signals())
def test_tv1d_primal_dual_converges_to_the_jump_set_derivative(instance):
    s, lam, order = instance
    prob = bl.problems.TV1D(order)
    sol = prob.solve((s, lam))
    assume(prob.manifold(sol).margin > 0.05)
    v = np.random.default_rng(4).standard_normal(s.size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g, info = bl.strategies.BregmanUnroll().vjp(prob, sol, v)
    # The iterates reach Condat's / projected Newton's solution.
    assert info["distance"] <= 1e-9
    ref = bl.vjp(prob, (s, lam), v, "partial_smoothness")
    # The derivative lags the residual (1e-12) by the k rho^k factor: 1e-6 relative.
    for part, exact in zip(g, ref):
        np.testing.assert_allclose(part, exact, rtol=1e-6, atol=1e-7 * np.abs(ref[0]).max())


# --- knobs, warnings, applicability ---
def test_knobs_budget_warning_and_not_applicable():
    with pytest.raises(ValueError, match="n_steps"):
        bl.strategies.BregmanUnroll(n_steps=0)
    with pytest.raises(ValueError, match="step_scale"):
        bl.strategies.BregmanUnroll(step_scale=-1.0)
    strat = bl.strategies.BregmanUnroll(n_steps=10)
    assert strat.with_budget(7) == replace(strat, n_steps=7, tol=None)
    prob = bl.problems.SimplexLeastSquares(np.eye(3))
    b = np.array([1.0, 0.5, -1.0])
    with pytest.warns(bl.ConvergenceWarning, match="Raise n_steps"):
        bl.vjp(prob, b, np.ones(3), strat)
    with pytest.raises(bl.NotApplicable, match="mirror"):
        bl.vjp(bl.problems.TV1D(1, "l2"), (np.arange(4.0), 0.1), np.ones(4), "bregman")
    _, info = bl.vjp(prob, b, np.ones(3), "bregman", return_info=True)
    assert {"iterations", "residual", "time", "replay_error", "distance"} <= set(info)


def test_tv2d_primal_dual_approaches_the_solution_and_its_derivative():
    rng = np.random.default_rng(0)
    f = np.zeros((6, 6))
    f[:, 3:] = 1.0
    f = f + 0.05 * rng.standard_normal(f.shape)
    prob = bl.problems.TV2D(tol=1e-10, max_iter=100000)
    sol = prob.solve((f, 0.1))
    v = rng.standard_normal(f.shape)
    ref = bl.vjp(prob, (f, 0.1), v, "fixed_point")
    errors, distances = [], []
    for n in (100, 400, 1600):
        g, info = bl.strategies.BregmanUnroll().with_budget(n).vjp(prob, sol, v)
        errors.append(np.abs(g[0] - ref[0]).max() / np.abs(ref[0]).max())
        distances.append(info["distance"])
    # The disc-mirror iteration converges, slowly in its tail (measured 15%, 6.5%, 2.1%
    # relative error of the derivative at n = 100, 400, 1600 against FixedPoint at the 1e-10
    # solution): the test pins the decrease, not a rate.
    assert distances[0] > distances[1] > distances[2] and distances[2] < 1e-3
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05


# --- NNLS by the entropic mirror ---
@given(simplex_ls())
def test_nnls_entropic_mirror_converges_to_lawson_hanson_and_its_jacobian(instance):
    from scipy.optimize import nnls

    A, b = instance
    assume(np.linalg.cond(A) < 30)        # the entropic step scales with 1 / ||A||^2
    prob = bl.problems.NNLS(A)
    sol = prob.solve(b)
    x = sol.x
    g = A.T @ (A @ x - b)
    free = x > 1e-9
    # Non-degenerate: positive entries on F, positive multipliers off it.
    assume(free.any() and x[free].min() > 1e-2 and (g[~free].min() if (~free).any() else 1) > 1e-2)
    np.testing.assert_allclose(x, nnls(A, b)[0], atol=1e-10)
    v = np.random.default_rng(2).standard_normal(A.shape[1])
    g_b, info = bl.strategies.BregmanUnroll(n_steps=100000).vjp(prob, sol, v)
    assert info["distance"] <= 1e-9 and info["replay_error"] <= 1e-12
    # dx*/db on the free set F: A_F (A_F^T A_F)^{-1} v_F (closed form, written out here).
    AF = A[:, free]
    exact = AF @ np.linalg.solve(AF.T @ AF, v[free])
    np.testing.assert_allclose(g_b, exact, rtol=1e-6, atol=1e-9 * max(1.0, np.abs(exact).max()))


def test_nnls_unrolled_vjp_matches_finite_differences_of_the_unrolled_map():
    rng = np.random.default_rng(5)
    A, b = rng.standard_normal((8, 4)), rng.standard_normal(8)
    prob = bl.problems.NNLS(A)
    sol = Solution(x=prob.solve(b).x, theta=b, n_iter=0, converged=True)
    v, d = rng.standard_normal(4), rng.standard_normal(8)
    g, info = bl.strategies.BregmanUnroll().with_budget(80).vjp(prob, sol, v)
    # Central differences with h = 1e-6: O(h^2) truncation plus ~1e-10 round-off.
    np.testing.assert_allclose(float(g @ d), unrolled_fd(prob, sol, v, 80, (d,)), rtol=1e-6,
                               atol=1e-8)
