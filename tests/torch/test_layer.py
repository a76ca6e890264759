"""bl.torch.Layer per problem family: batches against loops, gradcheck, dtypes, bad input."""

import itertools
import os
import warnings

import numpy as np
import pytest
import torch

import bilevel as bl
from bilevel.problems import NNLS, QP, EqualityConstrainedLS, moment_matrix

PENALTIES = ("quadratic", "pseudo_huber", "huber", "welsch", "truncated_quadratic")
SETS = ("l2_sphere", "l2_ball", "l1_sphere", "l1_ball", "linf_ball", "simplex")
PP = bl.problems.PiecewisePolynomial
CC = bl.problems.ConnectedComponents


class TestSimplex:
    """SimplexLeastSquares and EntropicSimplex."""

    def test_torch_layer_batches_bregman_like_per_row_analytic(self):
        A = np.random.default_rng(0).standard_normal((6, 4))
        prob = bl.problems.SimplexLeastSquares(A)
        layer = bl.torch.Layer(prob, strategy="bregman")
        b = torch.tensor(np.random.default_rng(1).standard_normal((2, 6)), requires_grad=True)
        x = layer(b)
        (x * torch.arange(4.0, dtype=torch.float64)).sum().backward()
        for i in range(2):
            np.testing.assert_allclose(x[i].detach().numpy(), prob.solve(b[i].detach().numpy()).x,
                                       atol=1e-12)
            ref = bl.vjp(prob, b[i].detach().numpy(), np.arange(4.0), "analytic")
            # Converged Bregman replay (tol 1e-12) against the support's closed form.
            np.testing.assert_allclose(b.grad[i].numpy(), ref, rtol=1e-6, atol=1e-9)

    def test_entropic_layer_equals_torch_softmax(self, rng):
        layer = bl.torch.Layer(bl.problems.EntropicSimplex())
        z = torch.tensor(rng.standard_normal((4, 3, 6)), requires_grad=True)
        z2 = z.detach().clone().requires_grad_()
        w = torch.tensor(rng.standard_normal((4, 3, 6)))
        (layer(z) * w).sum().backward()
        (torch.softmax(z2, -1) * w).sum().backward()
        np.testing.assert_allclose(z.grad.numpy(), z2.grad.numpy(), rtol=1e-12, atol=1e-15)


class TestQP:
    """QP, NNLS and EqualityConstrainedLS."""

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_layers_batch_and_match_the_per_row_path(self, qp_instance, nnls_instance, dtype):
        Q, G, c, h, x, lam = qp_instance(51, 4, 6, 2)
        rng = np.random.default_rng(0)
        C = torch.tensor(c + 0.01 * rng.standard_normal((3, 4)), dtype=dtype, requires_grad=True)
        H = torch.tensor(np.tile(h, (3, 1)), dtype=dtype, requires_grad=True)
        A, b, _, _ = nnls_instance(52, 6, 4, 2)
        Bm = torch.tensor(b + 0.01 * rng.standard_normal((3, 6)), dtype=dtype, requires_grad=True)
        D, beta = moment_matrix([-0.2, -0.1, 0.1, 0.2], 0, 2)
        Xi = torch.tensor(rng.standard_normal((3, 4)), dtype=dtype, requires_grad=True)
        cases = [(QP(Q, G), (C, H)), (NNLS(A), (Bm,)), (EqualityConstrainedLS(D, beta), (Xi,))]
        for prob, inputs in cases:
            out = {}
            for name in ("analytic", "implicit"):
                leaves = [t.detach().clone().requires_grad_() for t in inputs]
                y = bl.torch.Layer(prob, name)(*leaves)
                assert y.dtype == dtype and y.shape[0] == 3
                (y * torch.arange(y.shape[1], dtype=dtype)).sum().backward()
                out[name] = [t.grad.double().numpy() for t in leaves]
                assert all(t.grad.dtype == dtype for t in leaves)
            tol = 1e-9 if dtype == torch.float64 else 1e-4     # float32 round-off of inputs
            for a, b in zip(out["analytic"], out["implicit"]):
                np.testing.assert_allclose(a, b, atol=tol)


class TestPiecewise:
    """PiecewisePolynomial and ConnectedComponents."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_layer_matches_per_row_vjps_and_keeps_dtype(self, batch, dtype):
        prob = PP(4, 1)
        S = batch(n=16).reshape(2, 2, 16)
        layer = bl.torch.Layer(prob, "analytic")
        s_t = torch.tensor(S, dtype=dtype, requires_grad=True)
        Y = layer(s_t)
        assert Y.dtype == dtype and Y.shape == (2, 2, 16)
        V = np.random.default_rng(4).standard_normal(S.shape)
        (Y * torch.tensor(V, dtype=dtype)).sum().backward()
        assert s_t.grad.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-12       # float32 round trip of s and v
        S_in = s_t.detach().double().numpy()
        for i, j in itertools.product(range(2), range(2)):
            np.testing.assert_allclose(Y[i, j].detach().double().numpy(),
                                       prob.solve(S_in[i, j]).x, atol=tol * 10)
            np.testing.assert_allclose(s_t.grad[i, j].double().numpy(),
                                       bl.vjp(prob, S_in[i, j], V[i, j]), atol=tol)

    def test_layer_gradcheck_and_generic_paths(self, batch):
        prob = PP(3, [0, 1, 0])
        S = torch.tensor(batch(b=2, n=12), requires_grad=True)
        for name in ("analytic", "partial_smoothness", "finite_difference"):
            layer = bl.torch.Layer(prob, name)
            # torch's own central differences (eps 1e-6) through the whole layer.
            assert torch.autograd.gradcheck(layer, (S,), eps=1e-6, atol=1e-6, rtol=1e-5), name
        st_layer = bl.torch.Layer(prob, "straight_through")
        V = torch.randn(2, 12, dtype=torch.float64)
        (g,) = torch.autograd.grad(st_layer(S), S, V)
        np.testing.assert_array_equal(g.numpy(), V.numpy())

    def test_components_batch_layer_and_straight_through(self):
        rng = np.random.default_rng(6)
        S = np.kron(rng.uniform(0, 1, (3, 4, 4)), np.ones((1, 4, 4))) + 0.02 * rng.standard_normal(
            (3, 16, 16))
        prob = CC(5)
        V = rng.standard_normal(S.shape)
        for dtype in (torch.float64, torch.float32):
            layer = bl.torch.Layer(prob, "analytic")
            s_t = torch.tensor(S, dtype=dtype, requires_grad=True)
            Y = layer(s_t)
            assert Y.dtype == dtype and Y.shape == S.shape
            (Y * torch.tensor(V, dtype=dtype)).sum().backward()
            S_in = s_t.detach().double().numpy()
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            for r in range(3):
                np.testing.assert_allclose(Y[r].detach().double().numpy(), prob.solve(S_in[r]).x,
                                           atol=tol)
                np.testing.assert_allclose(s_t.grad[r].double().numpy(),
                                           bl.vjp(prob, S_in[r], V[r]), atol=tol)
        s_t = torch.tensor(S[:1, :6, :6], requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", bl.DegeneracyWarning)
            assert torch.autograd.gradcheck(bl.torch.Layer(prob, "analytic"), (s_t,), eps=1e-7,
                                            atol=1e-6)
        (g,) = torch.autograd.grad(bl.torch.Layer(prob, "straight_through")(s_t), s_t,
                                   torch.ones_like(s_t))
        np.testing.assert_array_equal(g.numpy(), 1.0)


class TestPooling:
    """RobustPooling."""

    @pytest.mark.parametrize("penalty", PENALTIES)
    def test_layer_batch_equals_a_loop_and_gradcheck(self, penalty, rng):
        prob = bl.problems.RobustPooling(penalty, 0.8)
        layer = bl.torch.Layer(prob)
        assert layer.strategy.name == "analytic"
        x = rng.standard_normal((4, 5, 9))
        x_t = torch.tensor(x, requires_grad=True)
        y = layer(x_t)
        assert y.shape == (4, 5) and y.dtype == torch.float64
        np.testing.assert_array_equal(y.detach().numpy(), prob.solve(x).x)
        w = torch.tensor(rng.standard_normal((4, 5)))
        (y * w).sum().backward()
        np.testing.assert_array_equal(x_t.grad.numpy(),
                                      bl.vjp(prob, x, w.numpy(), "analytic"))
        if penalty in ("quadratic", "pseudo_huber", "welsch"):   # smooth: torch's own FD check
            assert torch.autograd.gradcheck(layer, (x_t.detach()[:1, :2].requires_grad_(),))

    def test_layer_float32_path(self, rng):
        layer = bl.torch.Layer(bl.problems.RobustPooling("welsch", 1.0))
        x = torch.tensor(rng.standard_normal((64, 49)), dtype=torch.float32, requires_grad=True)
        y = layer(x)
        assert y.dtype == torch.float32 and y.shape == (64,)
        y.sum().backward()
        assert x.grad.dtype == torch.float32
        # float32 input, float64 inside: the output is the float64 solution rounded once.
        y64 = bl.problems.RobustPooling("welsch", 1.0).solve(x.detach().double().numpy()).x
        np.testing.assert_allclose(y.detach().numpy(), y64, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(x.grad.sum(dim=-1).numpy(), 1.0, rtol=1e-5)

    @pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no thread team to leak")
    def test_a_parallel_kernel_leaves_torch_threads_as_they_were(self, rng):
        # 64 * 64 * 128 entries take the prange kernels, whose OpenMP team would otherwise
        # reset the thread count that torch shares with numba
        layer = bl.torch.Layer(bl.problems.RobustPooling("welsch", 1.0))
        x = torch.tensor(rng.standard_normal((64, 64, 128)), requires_grad=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            y = layer(x)
            assert torch.get_num_threads() == 1
            y.sum().backward()
            assert torch.get_num_threads() == 1
        finally:
            torch.set_num_threads(threads)


class TestProjections:
    """Projection (and EntropicSimplex in float32)."""

    @pytest.mark.parametrize("kind", SETS)
    def test_projection_layer_equals_a_loop_and_gradcheck(self, kind, rng):
        prob = bl.problems.Projection(kind, 1.2)
        layer = bl.torch.Layer(prob)
        x = rng.standard_normal((3, 4, 6))
        x_t = torch.tensor(x, requires_grad=True)
        y = layer(x_t)
        np.testing.assert_array_equal(y.detach().numpy(), prob.solve(x).x)
        w = torch.tensor(rng.standard_normal(x.shape))
        (y * w).sum().backward()
        loop = np.array([[bl.vjp(prob, x[i, j], w.numpy()[i, j], "analytic") for j in range(4)]
                         for i in range(3)])
        np.testing.assert_allclose(x_t.grad.numpy(), loop, rtol=1e-15, atol=1e-15)
        xs = x_t.detach()[:1, :2].clone().requires_grad_()
        assert torch.autograd.gradcheck(layer, (xs,), atol=1e-6)

    def test_layers_float32_path(self, rng):
        for prob in (bl.problems.Projection("simplex", 1.0), bl.problems.EntropicSimplex()):
            layer = bl.torch.Layer(prob)
            x = torch.tensor(rng.standard_normal((8, 5)), dtype=torch.float32, requires_grad=True)
            y = layer(x)
            assert y.dtype == torch.float32
            (y[:, 0]).sum().backward()
            assert x.grad.dtype == torch.float32
            # Rows of the simplex sum to 1, so the gradient of any row sum is orthogonal to 1.
            np.testing.assert_allclose(y.detach().sum(-1).numpy(), 1.0, rtol=1e-6)
            np.testing.assert_allclose(x.grad.sum(-1).numpy(), 0.0, atol=1e-6)


class TestTV:
    """TV1D."""

    @pytest.mark.parametrize("order, norm, strategy", [
        (1, "l1", "analytic"), (2, "l1", "partial_smoothness"), (1, "l2", "analytic"),
        (1, "l1", "fixed_point")])
    def test_layer_batch_equals_a_loop_and_gradcheck(self, order, norm, strategy):
        prob = bl.problems.TV1D(order, norm)
        rng = np.random.default_rng(7)
        S = (np.repeat(rng.standard_normal((3, 4)) * 4, 6, axis=1)
             + 0.1 * rng.standard_normal((3, 24)))
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

    def test_layer_float32_and_shared_lam(self):
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

    @pytest.mark.parametrize("s_shape, lam_shape", [
        ((2, 3, 12), (3,)),         # lam broadcast along the leading batch dimension
        ((3, 12), (2, 1)),          # both broadcast: batch (2, 3)
        ((12,), ()),                # one instance, no batch dimension
        ((3, 12), (3,))])           # the common layout
    def test_layer_broadcasts_batch_dimensions_like_a_loop(self, s_shape, lam_shape):
        prob = bl.problems.TV1D(1)
        layer = bl.torch.Layer(prob, "analytic")
        rng = np.random.default_rng(3)
        S = (np.repeat(rng.standard_normal(s_shape[:-1] + (4,)) * 3, 3, axis=-1)
             + 0.1 * rng.standard_normal(s_shape))       # noise: no exact ties (kinks)
        lam = rng.uniform(0.2, 0.8, lam_shape)
        s_t = torch.tensor(S, requires_grad=True)
        lam_t = torch.tensor(lam, requires_grad=True)
        Y = layer(s_t, lam_t)
        batch = np.broadcast_shapes(s_shape[:-1], lam_shape)
        assert Y.shape == batch + (12,)
        V = rng.standard_normal(Y.shape)
        (Y * torch.tensor(V)).sum().backward()
        S_b, lam_b = np.broadcast_to(S, batch + (12,)), np.broadcast_to(lam, batch)
        g_s, g_lam = np.zeros(batch + (12,)), np.zeros(batch)
        for i in np.ndindex(batch):
            np.testing.assert_allclose(Y[i].detach().numpy(),
                                       prob.solve((S_b[i], lam_b[i])).x, rtol=0, atol=1e-12)
            g_s[i], g_lam[i] = bl.vjp(prob, (S_b[i], lam_b[i]), V[i], "analytic")
        # a broadcast parameter's gradient: summed over the dimensions it was broadcast along
        for grad, rows, shape in ((s_t.grad, g_s, s_shape), (lam_t.grad, g_lam, lam_shape)):
            rows = rows.sum(axis=tuple(range(rows.ndim - len(shape))))
            rows = rows.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True)
            assert grad.shape == shape
            np.testing.assert_allclose(grad.numpy(), rows, atol=1e-12)

    def test_layer_and_problem_reject_bad_input(self):
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
            bl.torch.Layer(prob, theta_ndim=(1, -1))

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    def test_layer_keeps_cuda_tensors_on_the_device(self):
        layer = bl.torch.Layer(bl.problems.TV1D(1), "analytic")
        s = torch.tensor([[0.0, 0.0, 3.0, 3.0]], device="cuda", requires_grad=True)
        lam = torch.tensor(0.5, device="cuda", requires_grad=True)
        y = layer(s, lam)
        y.sum().backward()
        assert y.device.type == s.grad.device.type == lam.grad.device.type == "cuda"
        np.testing.assert_allclose(y.detach().cpu().numpy(), [[0.25, 0.25, 2.75, 2.75]])


class TestTV2D:
    """TV2D."""

    def test_layer_batches_images_like_a_loop(self, blocks, rng):
        prob = bl.problems.TV2D(tol=1e-11, max_iter=100000)
        layer = bl.torch.Layer(prob, bl.strategies.FixedPoint())
        F = torch.tensor(np.stack([blocks(rng, (4, 4)), blocks(rng, (4, 4))]), requires_grad=True)
        lam = torch.tensor([0.05, 0.1], dtype=torch.float64, requires_grad=True)
        V = torch.from_numpy(rng.standard_normal((2, 4, 4)))
        U = layer(F, lam)
        (U * V).sum().backward()
        for b in range(2):
            theta = (F[b].detach().numpy(), lam[b].detach().numpy())
            np.testing.assert_allclose(U[b].detach().numpy(), prob.solve(theta).x, atol=1e-14)
            g_f, g_lam = bl.vjp(prob, theta, V[b].numpy(), bl.strategies.FixedPoint())
            np.testing.assert_allclose(F.grad[b].numpy(), g_f, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(lam.grad[b].numpy(), g_lam, rtol=1e-10, atol=1e-12)
        with torch.no_grad():                   # no graph: the layer skips autograd.Function
            np.testing.assert_array_equal(layer(F, lam).numpy(), U.detach().numpy())
        out32 = layer(F.detach().float(), torch.tensor(0.1))
        assert out32.dtype == torch.float32 and out32.shape == (2, 4, 4)
        assert not out32.requires_grad
