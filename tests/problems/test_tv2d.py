"""TV2D: the solver against TV1D and its KKT conditions, blur, step map, derivatives, bad input."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import bilevel as bl
from bilevel.solvers.tv2d import blur_apply, gaussian_kernel, tv2d_kkt_residual


@given(signal=arrays(np.float64, st.integers(4, 12), elements=st.floats(-3, 3)),
       lam=st.floats(0.05, 1.0))
def test_two_equal_columns_reduce_to_tv1d(signal, lam):
    # With two equal columns the horizontal differences vanish and the energy is twice the
    # 1-D order-1 energy with the same lam: Condat's exact algorithm is the reference.
    assume(np.ptp(signal) > 1e-3)
    f = np.stack([signal, signal], axis=1)
    sol = bl.problems.TV2D(tol=1e-12, max_iter=200000).solve((f, lam))
    y = bl.problems.TV1D(1).solve((signal, lam)).x
    # KKT residual 1e-12 bounds the distance to u* by ~1e-10 on these sizes.
    np.testing.assert_allclose(sol.x, np.stack([y, y], axis=1), atol=1e-8)


@pytest.mark.parametrize("operator", ["identity", "blur"])
def test_solution_satisfies_the_kkt_conditions(blocks, operator, rng):
    prob = bl.problems.TV2D(operator, tol=1e-9, max_iter=100000)
    f = blocks(rng)
    sol = prob.solve((f, 0.1))
    u, p = sol.x, sol.info["dual"]
    assert sol.converged and sol.info["residual"] <= 1e-9
    assert np.all(np.hypot(p[0], p[1]) <= 0.1 * (1 + 1e-12))          # dual feasibility
    # Independently of the kernel's own residual: stationarity A^T(Au - f) = div p in NumPy.
    A = blur_matrix(prob.kernel, f.shape) if operator == "blur" else np.eye(f.size)
    div = -gradient_matrix(f.shape).T @ p.ravel()
    stationarity = A.T @ (A @ u.ravel() - f.ravel()) - div
    assert np.abs(stationarity).max() <= 1e-9 * max(np.abs(f).max(), 1.0)
    assert tv2d_kkt_residual(u, p, f, 0.1, prob.kernel, operator == "identity") <= 1e-9



@pytest.mark.parametrize("operator", ["identity", "blur"])
def test_kkt_residual_of_a_nan_iterate_is_nan(blocks, operator, rng):
    """A diverged iterate must not pass the stopping test: its residual is NaN, not small."""
    prob = bl.problems.TV2D(operator)
    f = blocks(rng)
    u, p = f.copy(), np.zeros((2,) + f.shape)
    u[1, 2] = np.nan
    assert np.isnan(tv2d_kkt_residual(u, p, f, 0.1, prob.kernel, operator == "identity"))

def gradient_matrix(shape):
    """Dense forward differences (Neumann), stacked (vertical; horizontal), in NumPy."""
    H, W = shape
    Dh = np.diff(np.eye(H), axis=0)
    Dw = np.diff(np.eye(W), axis=0)
    Dh = np.vstack([Dh, np.zeros((1, H))])
    Dw = np.vstack([Dw, np.zeros((1, W))])
    return np.vstack([np.kron(Dh, np.eye(W)), np.kron(np.eye(H), Dw)])


def blur_matrix(w, shape):
    from scipy.ndimage import correlate1d

    H, W = shape
    cols = []
    for k in range(H * W):
        e = np.zeros(H * W)
        e[k] = 1.0
        img = correlate1d(correlate1d(e.reshape(H, W), w, axis=1, mode="reflect"), w, axis=0,
                          mode="reflect")
        cols.append(img.ravel())
    return np.array(cols).T


@pytest.mark.parametrize("sigma, shape", [(0.8, (5, 7)), (2.0, (4, 3))])
def test_blur_matches_scipy_and_is_symmetric(sigma, shape, rng):
    # scipy.ndimage's 'reflect' mode is the half-sample symmetric extension; the kernel radius
    # may exceed the image (sigma 2 on 4 x 3), which folds several times.
    w = gaussian_kernel(sigma)
    A = blur_matrix(w, shape)
    u = rng.standard_normal(shape)
    np.testing.assert_allclose(blur_apply(u, w).ravel(), A @ u.ravel(), atol=1e-14)
    np.testing.assert_allclose(A, A.T, atol=1e-15)
    assert np.linalg.norm(A, 2) <= 1 + 1e-12
    prob = bl.problems.TV2D("blur", blur_sigma=sigma)
    np.testing.assert_allclose(prob._blur(torch.from_numpy(u)).numpy(), blur_apply(u, w),
                               atol=1e-14)


@pytest.mark.parametrize("operator", ["identity", "blur"])
def test_step_map_has_the_solution_as_fixed_point(blocks, operator, rng):
    prob = bl.problems.TV2D(operator, tol=1e-11, max_iter=200000)
    f = blocks(rng, (5, 4))
    sol = prob.solve((f, 0.1))
    step_map = prob.capabilities.step
    z = step_map.at_solution(sol)
    theta = (torch.from_numpy(f), torch.tensor(0.1, dtype=torch.float64))
    z_next = step_map.step(torch.from_numpy(z), theta).numpy()
    # A KKT pair is a fixed point of the primal-dual map for any step sizes; 1e-11 residual.
    assert np.abs(z_next - z).max() <= 1e-9
    np.testing.assert_array_equal(step_map.read(torch.from_numpy(z), theta).numpy(), sol.x)


@pytest.mark.parametrize("operator", ["identity", "blur"])
def test_fixed_point_and_unroll_match_finite_differences(blocks, operator, rng):
    prob = bl.problems.TV2D(operator, tol=1e-12, max_iter=400000)
    theta = (blocks(rng, (4, 5)), np.asarray(0.05))
    v = rng.standard_normal((4, 5))
    g_fd = bl.vjp(prob, theta, v, bl.strategies.FiniteDifference())
    g_fp = bl.vjp(prob, theta, v, bl.strategies.FixedPoint(tol=1e-12))
    g_un = bl.vjp(prob, theta, v, bl.strategies.Unroll(n_steps=3000))
    for fd, fp, un in zip(g_fd, g_fp, g_un):
        # FD of a solve at KKT residual 1e-12 with step ~1e-5..1e-4: ~1e-7 relative error;
        # unrolling 3000 steps of a contraction with rate < 0.99 on this instance.
        scale = np.abs(fd).max()
        assert np.abs(fp - fd).max() <= 1e-6 * scale
        assert np.abs(un - fd).max() <= 1e-6 * scale


def test_bad_input_names_the_argument():
    prob = bl.problems.TV2D()
    f = np.zeros((3, 3))
    with pytest.raises(ValueError, match="lam must be > 0"):
        prob.solve((f, 0.0))
    with pytest.raises(ValueError, match="lam must be a scalar"):
        prob.solve((f, np.ones(2)))
    with pytest.raises(ValueError, match="f contains NaN"):
        prob.solve((np.full((3, 3), np.nan), 0.1))
    with pytest.raises(ValueError, match="at least 2 x 2"):
        prob.solve((np.zeros((1, 5)), 0.1))
    with pytest.raises(ValueError, match="f must have 2 dimension"):
        prob.solve((np.zeros(5), 0.1))
    with pytest.raises(ValueError, match="theta = \\(f, lam\\)"):
        prob.solve(f)
    with pytest.raises(ValueError, match="operator must be"):
        bl.problems.TV2D("motion")
    with pytest.raises(ValueError, match="blur_sigma must be > 0"):
        bl.problems.TV2D("blur", blur_sigma=0.0)


def test_early_stop_warns_and_flags(blocks, rng):
    prob = bl.problems.TV2D(tol=1e-12, max_iter=10)
    with pytest.warns(bl.ConvergenceWarning, match="raise max_iter"):
        sol = prob.solve((blocks(rng), 0.1))
    assert not sol.converged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bl.ConvergenceWarning)
        with pytest.warns(bl.ConvergenceWarning, match="did not converge"):
            bl.strategies.FixedPoint().vjp(prob, sol, np.ones((6, 6)))


# -- issue 17 ------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-4, 1e-12, 1e12])
def test_tv2d_scaled_data_scales_the_solution(scale):
    """``u*(c f, c lam) = c u*(f, lam)``: it stopped after 0 iterations at c = 1e-4 (an
    absolute residual floor of 1), 51% away."""
    f = np.random.default_rng(0).standard_normal((8, 8))
    prob = bl.problems.TV2D(tol=1e-10, max_iter=100000)
    ref = prob.solve((f, np.asarray(0.3)))
    sol = prob.solve((scale * f, np.asarray(scale * 0.3)))
    assert sol.converged and sol.n_iter == ref.n_iter > 0
    # 1e-9: the iterations are the same up to the rounding of the scaled data
    assert np.allclose(sol.x / scale, ref.x, rtol=1e-9, atol=1e-9 * np.abs(ref.x).max())


def test_tv2d_blur_wider_than_the_image_is_a_named_error():
    """``blur_sigma=1e6`` ran for minutes; now it is refused, naming blur_sigma and a bound."""
    with pytest.raises(ValueError, match="blur_sigma must be <="):
        bl.problems.TV2D("blur", blur_sigma=1e6)
    prob = bl.problems.TV2D("blur", blur_sigma=1e4)
    with pytest.raises(ValueError, match="blur_sigma=1e\\+04 is too wide for a 8 x 8"):
        prob.solve((np.ones((8, 8)), np.asarray(0.1)))
