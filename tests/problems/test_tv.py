"""TV1D: solvers against KKT certificates, Jacobians against the dense projector formula."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bilevel as bl


def difference_matrix(n, order):
    return np.diff(np.eye(n), order, axis=0)


@st.composite
def signals(draw, max_segments=5, noise=0.3):
    """Piecewise-constant signals with well-separated jumps (>= 3) plus small noise."""
    k = draw(st.integers(1, max_segments))
    lengths = draw(st.lists(st.integers(4, 12), min_size=k, max_size=k))
    levels = np.cumsum([0.0] + [draw(st.sampled_from([-1, 1])) * draw(st.floats(3, 8))
                                for _ in range(k - 1)])
    seed = draw(st.integers(0, 2**31 - 1))
    s = np.repeat(levels, lengths) + noise * np.random.default_rng(seed).standard_normal(
        sum(lengths))
    return s, draw(st.floats(0.05, 1.0))


def kkt_residual(s, y, lam, order):
    """Independent certificate: the dual u of D^T u = s - y must be feasible and complementary."""
    D = difference_matrix(s.size, order)
    u = np.linalg.lstsq(D.T, s - y, rcond=None)[0]
    Dy = D @ y
    jump = np.abs(Dy) > 1e-9 * max(1, np.abs(s).max())
    feasibility = max(np.abs(u).max() - lam, 0.0)
    complementarity = np.abs(u[jump] - lam * np.sign(Dy[jump])).max() if jump.any() else 0.0
    return max(feasibility, complementarity, np.abs(D.T @ u - (s - y)).max())


@given(signals(), st.sampled_from([1, 2, 3]))
def test_l1_solvers_meet_kkt(instance, order):
    s, lam = instance
    prob = bl.problems.TV1D(order)
    sol = prob.solve((s, lam))
    scale = max(1.0, np.abs(s).max())
    # Exact algorithms (Condat; projected Newton after identification): round-off only.
    assert kkt_residual(s, sol.x, lam, order) <= 1e-9 * scale
    assert sol.converged and sol.info["gap"] <= 1e-12
    np.testing.assert_array_equal(sol.info["jumps"],
                                  np.flatnonzero(np.abs(np.diff(sol.x, order)) > 1e-9 * scale))


@given(signals(), st.sampled_from([1, 2, 3]))
def test_l2_is_the_banded_solve(instance, order):
    s, lam = instance
    D = difference_matrix(s.size, order)
    expected = np.linalg.solve(np.eye(s.size) + lam * D.T @ D, s)
    np.testing.assert_allclose(bl.problems.TV1D(order, "l2").solve((s, lam)).x, expected,
                               rtol=1e-10, atol=1e-10 * np.abs(s).max())


def dense_jacobian(s, y, lam, order):
    """dy/ds = P, dy/dlam = -P D_J^T sign(D_J y): dense numpy, for small n."""
    D = difference_matrix(s.size, order)
    Dy = D @ y
    Z = np.abs(Dy) <= 1e-9 * max(1, np.abs(s).max())
    DZ = D[Z]
    P = np.eye(s.size) - DZ.T @ np.linalg.pinv(DZ @ DZ.T) @ DZ if Z.any() else np.eye(s.size)
    return P, -P @ D[~Z].T @ np.sign(Dy[~Z])


@pytest.mark.parametrize("order", [1, 2, 3])
@given(instance=signals())
def test_manifold_vjp_and_jvp_equal_the_projector(order, instance):
    s, lam = instance
    prob = bl.problems.TV1D(order)
    sol = prob.solve((s, lam))
    P, dlam = dense_jacobian(s, sol.x, lam, order)
    v = np.random.default_rng(0).standard_normal(s.size)
    names = ["partial_smoothness", "analytic"]       # every order has the closed form
    for name in names:
        g_s, g_lam = bl.vjp(prob, (s, lam), v, name)
        # Banded solves against a dense pseudo-inverse of the same matrix: round-off.
        np.testing.assert_allclose(g_s, P @ v, atol=1e-10 * np.abs(v).max())
        np.testing.assert_allclose(g_lam, dlam @ v, rtol=1e-9, atol=1e-10)
    ds = np.random.default_rng(1).standard_normal(s.size)
    dx = bl.jvp(prob, (s, lam), (ds, 0.7), "partial_smoothness")
    np.testing.assert_allclose(dx, P @ ds + 0.7 * dlam, atol=1e-10 * np.abs(ds).max())


@pytest.mark.parametrize("order, norm", [(1, "l1"), (2, "l1"), (3, "l1"), (1, "l2"), (3, "l2")])
def test_strategies_match_finite_differences(order, norm):
    s, lam = np.repeat([0.0, 5.0, 2.0], 8) + 0.2 * np.random.default_rng(3).standard_normal(24), 0.4
    prob = bl.problems.TV1D(order, norm)
    v = np.random.default_rng(4).standard_normal(24)
    ref = bl.vjp(prob, (s, lam), v, "finite_difference")
    for name in bl._registry.applicable_strategies(prob):
        # bregman: this instance's margin is 1e-5 (near-degenerate), where the Bregman
        # primal-dual tail slows down; tests/strategies/test_bregman.py checks it at clear margins.
        if name in ("finite_difference", "unroll", "bregman"):
            continue
        g = bl.vjp(prob, (s, lam), v, name)
        # 4th-order differences of an exact solver: ~1e-10; GMRES at tol 1e-10.
        np.testing.assert_allclose(g[0], ref[0], atol=1e-7 * np.abs(ref[0]).max(), err_msg=name)
        np.testing.assert_allclose(g[1], ref[1], rtol=1e-7, err_msg=name)


@pytest.mark.parametrize("order", [2, 3])
def test_analytic_of_orders_2_and_3_batched_kernel_and_layer(order):
    import torch

    rng = np.random.default_rng(order)
    S = np.stack([np.repeat([0.0, 4.0, 1.0], 8) + 0.3 * rng.standard_normal(24)
                  for _ in range(3)])
    lam = np.array([0.3, 0.5, 0.8])
    prob = bl.problems.TV1D(order)
    assert "analytic_vjp" in prob.capabilities and prob.capabilities.batch.analytic_vjp
    V = rng.standard_normal(S.shape)
    batch = prob.capabilities.batch.solve(S, lam)
    (G, g_lam), margins = prob.capabilities.batch.analytic_vjp(batch, V)
    for i in range(3):
        sol = prob.solve((S[i], lam[i]))
        P, dlam = dense_jacobian(S[i], sol.x, lam[i], order)
        assert margins[i] > 1e-6
        # The batched banded solves against the dense pseudo-inverse formula: round-off.
        np.testing.assert_allclose(G[i], P @ V[i], atol=1e-10 * np.abs(V[i]).max())
        np.testing.assert_allclose(g_lam[i], dlam @ V[i], rtol=1e-9, atol=1e-10)
    # The torch layer goes through the same kernel: its gradients are those rows.
    s_t = torch.tensor(S, requires_grad=True)
    lam_t = torch.tensor(lam, requires_grad=True)
    y = bl.torch.Layer(prob, "analytic")(s_t, lam_t)
    (y * torch.from_numpy(V)).sum().backward()
    np.testing.assert_allclose(s_t.grad.numpy(), G, atol=1e-12)
    np.testing.assert_allclose(lam_t.grad.numpy(), g_lam, atol=1e-12)


# -- issue 17: no false alarms from the gap's rounding ------------------------------------
@pytest.mark.parametrize("order", [2, 3])
def test_tv1d_grid_search_has_no_false_alarms_and_matches_lsq_linear(order):
    """A grid of lam over ordinary signals warned "residual 2.7e-13 > tol=1e-13 after 500
    iterations" (the gap's difference of two ||s||^2-sized numbers, then its lam-sized
    rounding near lam_max). Reference: the dual box QP ``min ||s - D^T u||^2, |u| <= lam``
    by scipy's ``lsq_linear`` (an independent solver), ``y = s - D^T u``."""
    import scipy.optimize

    rng = np.random.default_rng(0)
    n = 60
    s = np.sin(np.linspace(0, 6, n)) * 5 + rng.standard_normal(n)
    D = np.diff(np.eye(n), order, axis=0)
    prob = bl.problems.TV1D(order=order)            # default tol 1e-13: warnings are errors
    for lam in np.logspace(-2, 2, 6):
        sol = prob.solve((s, np.asarray(lam)))
        assert sol.converged
        u = scipy.optimize.lsq_linear(D.T, s, bounds=(-lam, lam), tol=1e-15,
                                      lsq_solver="exact", max_iter=10000).x
        # 1e-7: lsq_linear's own tolerance on the dual (the primal is 1-Lipschitz in it)
        assert np.allclose(sol.x, s - D.T @ u, atol=1e-7 * np.abs(s).max()), lam


@pytest.mark.parametrize("scale", [1e-12, 1e12])
def test_tv1d_scaled_data_scales_the_solution(scale):
    """``y*(c s, c lam) = c y*(s, lam)`` with the gap relative to ||s||^2 (was max(., 1))."""
    s = np.cumsum(np.random.default_rng(1).standard_normal(80))
    for order in (1, 2, 3):
        prob = bl.problems.TV1D(order=order)
        ref = prob.solve((s, np.asarray(2.0))).x
        got = prob.solve((scale * s, np.asarray(scale * 2.0))).x / scale
        assert np.allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_tv1d_names_the_conditioning_of_long_high_order_signals():
    """Order 3 on 10^4 samples: cond(D D^T) ~ (2n/pi)^6 = 6.7e22 breaks the banded LDL^T."""
    s = np.random.default_rng(0).standard_normal(10_000)
    with pytest.raises(ValueError, match=r"condition number about \(2n/pi\)\^6 = 6.7e\+22.*"
                                         "windows of at most 1570 samples"):
        bl.problems.TV1D(order=3).solve((s, 1.0))
    layer = bl.torch.Layer(bl.problems.TV1D(order=3), "analytic")
    with pytest.raises(ValueError, match="condition number"):
        layer(torch.from_numpy(np.stack([s, s])), torch.tensor(1.0))
    # The recommended window solves (cond ~ 1e18 at 1570 samples).
    assert bl.problems.TV1D(order=3).solve((s[:1570], 1.0)).converged


def test_the_margin_of_a_long_order_3_solution_comes_from_the_solvers_dual():
    """Order 3, n = 3000: cond(D D^T) ~ (2n/pi)^6 = 5e19, so the dual recovered from y through
    D D^T is noise (it gave a margin of -0.15 here, and the layer a false DegeneracyWarning,
    an error in this suite); the solver's dual certifies y (gap ~ 0) and sits in the box."""
    rng = np.random.default_rng(0)
    n, lam = 3000, 2.6
    cuts = np.sort(rng.choice(np.arange(1, n), n // 25, replace=False))
    s = (np.repeat(rng.uniform(10, 100, cuts.size + 1), np.diff(np.r_[0, cuts, n]))
         + 5 * rng.standard_normal(n))
    prob = bl.problems.TV1D(order=3)
    sol = prob.solve((s, lam))
    u = sol.info["dual"]
    assert sol.converged and np.abs(u).max() <= lam
    dtu = u
    for _ in range(3):                      # (D^T w)_j = w_{j-1} - w_j, zero beyond the ends
        dtu = np.r_[0.0, dtu] - np.r_[dtu, 0.0]
    np.testing.assert_allclose(s - dtu, sol.x, atol=1e-11 * np.abs(s).max())   # y = s - D^T u
    assert 0 < prob.manifold(sol).margin < 1
    signal = torch.tensor(s[None], requires_grad=True)
    bl.torch.Layer(prob, "analytic")(signal, torch.tensor(lam)).sum().backward()
    assert torch.isfinite(signal.grad).all()
