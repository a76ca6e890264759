"""TV1D: solvers against KKT certificates and trusted solvers, Jacobians against the dense
projector formula and finite differences, the torch layer against per-row solves."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bilevel as bl
from bilevel.solvers import tv1d_condat, tv_dual_newton


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


@given(signals())
def test_condat_equals_dual_newton_and_bvls(instance):
    from scipy.optimize import lsq_linear

    s, lam = instance
    D = difference_matrix(s.size, 1)
    ref = s - D.T @ lsq_linear(D.T, s, bounds=(-lam, lam), method="bvls", tol=1e-15).x
    y_newton = tv_dual_newton(s, lam, 1, np.zeros(s.size - 1), 1e-14, 500)[0]
    for y in (tv1d_condat(s, lam), y_newton):
        np.testing.assert_allclose(y, ref, atol=1e-10 * np.abs(s).max())


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
    names = ["partial_smoothness"] + (["analytic"] if order == 1 else [])
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
        # primal-dual tail slows down; tests/test_bregman.py checks it at clear margins.
        if name in ("finite_difference", "unroll", "bregman"):
            continue
        g = bl.vjp(prob, (s, lam), v, name)
        # 4th-order differences of an exact solver: ~1e-10; GMRES at tol 1e-10.
        np.testing.assert_allclose(g[0], ref[0], atol=1e-7 * np.abs(ref[0]).max(), err_msg=name)
        np.testing.assert_allclose(g[1], ref[1], rtol=1e-7, err_msg=name)


def test_unroll_converges_to_the_exact_jacobian():
    s, lam = np.repeat([0.0, 4.0], 10) + 0.1 * np.random.default_rng(5).standard_normal(20), 0.3
    prob = bl.problems.TV1D(1)
    v = np.random.default_rng(6).standard_normal(20)
    exact = bl.vjp(prob, (s, lam), v, "analytic")
    errors = [np.abs(bl.vjp(prob, (s, lam), v, bl.strategies.Unroll(n_steps=k))[0]
                     - exact[0]).max() for k in (20, 2000)]
    assert errors[1] < 1e-8 * np.abs(exact[0]).max() < errors[0]


def test_degenerate_merge_warns():
    prob = bl.problems.TV1D(1)
    s = np.array([0.0, 0.0, 1.0, 1.0])
    with pytest.warns(bl.DegeneracyWarning, match="jump set"):
        bl.vjp(prob, (s, 1.0), np.ones(4), "partial_smoothness")   # segments merge at lam=1
    with warnings.catch_warnings():
        warnings.simplefilter("error", bl.DegeneracyWarning)
        bl.vjp(prob, (s, 0.5), np.ones(4), "partial_smoothness")


# --- the torch layer ------------------------------------------------------------------------

@pytest.mark.parametrize("order, norm, strategy", [
    (1, "l1", "analytic"), (2, "l1", "partial_smoothness"), (1, "l2", "analytic"),
    (1, "l1", "fixed_point")])
def test_layer_batch_equals_a_loop_and_gradcheck(order, norm, strategy):
    prob = bl.problems.TV1D(order, norm)
    rng = np.random.default_rng(7)
    S = np.repeat(rng.standard_normal((3, 4)) * 4, 6, axis=1) + 0.1 * rng.standard_normal((3, 24))
    lam = np.array([0.3, 0.6, 0.9])
    layer = bl.torch.Layer(prob, strategy)
    s_t = torch.tensor(S, requires_grad=True)
    lam_t = torch.tensor(lam, requires_grad=True)
    Y = layer(s_t, lam_t)
    V = rng.standard_normal(S.shape)
    (Y * torch.tensor(V)).sum().backward()
    for b in range(3):
        np.testing.assert_allclose(Y[b].detach().numpy(), prob.solve((S[b], lam[b])).x,
                                   rtol=0, atol=1e-12)
        g_s, g_lam = bl.vjp(prob, (S[b], lam[b]), V[b], strategy)
        np.testing.assert_allclose(s_t.grad[b].numpy(), g_s, atol=1e-10)
        np.testing.assert_allclose(lam_t.grad[b].numpy(), g_lam, rtol=1e-9, atol=1e-12)
    # torch's own finite-difference check of the whole layer, shared scalar lam broadcast.
    assert torch.autograd.gradcheck(layer, (s_t.detach()[:2].requires_grad_(),
                                            torch.tensor(0.5, dtype=torch.float64,
                                                         requires_grad=True)),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


def test_layer_float32_and_shared_lam():
    layer = bl.torch.Layer(bl.problems.TV1D(1), "analytic")
    S = torch.tensor(np.repeat([[0.0, 3.0], [1.0, -2.0]], 5, axis=1), dtype=torch.float32,
                     requires_grad=True)
    lam = torch.tensor(0.5, dtype=torch.float32, requires_grad=True)
    Y = layer(S, lam)
    assert Y.dtype == torch.float32 and Y.shape == (2, 10)
    (Y[:, 0]).sum().backward()
    assert S.grad.dtype == torch.float32 and lam.grad.shape == ()
    # Row 0: segments of 5; dy_0/ds_j = 1/5 on the first segment; dy_0/dlam = 1/5 (the
    # first segment rises towards the second as lam grows), row 1 falls: -1/5.
    np.testing.assert_allclose(S.grad[0, :5].numpy(), 0.2, rtol=1e-6)
    np.testing.assert_allclose(lam.grad.numpy(), 0.2 - 0.2, atol=1e-6)


def test_layer_and_problem_reject_bad_input():
    prob = bl.problems.TV1D(2)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        prob.solve((np.ones(5), -1.0))
    with pytest.raises(ValueError, match="s contains NaN"):
        prob.solve((np.array([1.0, np.nan, 2.0, 3.0]), 1.0))
    with pytest.raises(ValueError, match="more than order=2"):
        prob.solve((np.ones(2), 1.0))
    with pytest.raises(ValueError, match=r"theta = \(s, lam\)"):
        prob.solve(np.ones(5))
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        bl.problems.TV1D(4)
    with pytest.raises(ValueError, match="norm must be"):
        bl.problems.TV1D(1, "l3")
    with pytest.raises(ValueError, match="partial_smoothness or analytic"):
        bl.vjp(bl.problems.TV1D(1), (np.zeros(4001), 1.0), np.ones(4001), "fixed_point")
    layer = bl.torch.Layer(prob, "partial_smoothness")
    with pytest.raises(ValueError, match="takes 2 parameter tensors"):
        layer(torch.ones(5))
    with pytest.raises(ValueError, match="do not broadcast"):
        layer(torch.ones(3, 5), torch.ones(2))
    with pytest.raises(ValueError, match="theta_ndim"):
        bl.torch.Layer(bl.problems.Lasso(np.eye(3), np.ones(3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_layer_keeps_cuda_tensors_on_the_device():
    layer = bl.torch.Layer(bl.problems.TV1D(1), "analytic")
    s = torch.tensor([[0.0, 0.0, 3.0, 3.0]], device="cuda", requires_grad=True)
    lam = torch.tensor(0.5, device="cuda", requires_grad=True)
    y = layer(s, lam)
    y.sum().backward()
    assert y.device.type == s.grad.device.type == lam.grad.device.type == "cuda"
    np.testing.assert_allclose(y.detach().cpu().numpy(), [[0.25, 0.25, 2.75, 2.75]])
