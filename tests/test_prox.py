"""The ready terms of bilevel.prox: each prox against an independent solver or closed form,
its Jacobian against finite differences (gradcheck, away from kinks), its margin at a kink."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bilevel as bl

T = 0.7      # a prox step


def vectors(n=6):
    return st.lists(st.floats(-3, 3), min_size=n, max_size=n).map(np.array)


def as_t(x):
    return torch.tensor(np.asarray(x, dtype=np.float64))


@given(vectors(), st.floats(0.05, 1.0))
def test_penalty_proxes_are_their_closed_forms(z, w):
    soft = np.sign(z) * np.maximum(np.abs(z) - T * w, 0.0)
    np.testing.assert_allclose(bl.prox.L1().prox(as_t(z), T, w).numpy(), soft, atol=1e-15)
    groups = np.array([0, 0, 1, 1, 1, 2])
    expected = z.copy()
    for g in range(3):
        norm = np.linalg.norm(z[groups == g])
        expected[groups == g] *= max(1.0 - T * w / norm, 0.0) if norm > 0 else 0.0
    np.testing.assert_allclose(bl.prox.GroupL1(groups).prox(as_t(z), T, w).numpy(), expected,
                               atol=1e-14)


@given(vectors(), st.floats(0.2, 2.0))
def test_set_proxes_are_the_projections(z, radius):
    # the numba projection kernels of bl.problems.Projection: an independent implementation
    for term, name in ((bl.prox.Simplex(radius), "simplex"), (bl.prox.L2Ball(radius), "l2_ball"),
                       (bl.prox.L1Ball(radius), "l1_ball"),
                       (bl.prox.LinfBall(radius), "linf_ball")):
        ref = bl.problems.Projection(name, radius).solve(z).x
        np.testing.assert_allclose(term.prox(as_t(z), T, None).numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(bl.prox.NonNegative().prox(as_t(z), T, None).numpy(),
                               np.maximum(z, 0.0))
    np.testing.assert_allclose(bl.prox.Box(-0.5, 1.0).prox(as_t(z), T, None).numpy(),
                               np.clip(z, -0.5, 1.0))


def test_tv_proxes_are_the_tv_problems():
    rng = np.random.default_rng(0)
    s = np.repeat([0.0, 1.0, -0.5], 5) + 0.1 * rng.standard_normal(15)
    for order in (1, 2, 3):
        ref = bl.problems.TV1D(order).solve((s, T * 0.4)).x
        np.testing.assert_allclose(bl.prox.TV1D(order).prox(as_t(s), T, 0.4).numpy(), ref,
                                   atol=1e-12)
    f = rng.standard_normal((3, 3))
    ref = bl.problems.TV2D(tol=1e-12, max_iter=100000).solve((f, np.asarray(T * 0.2))).x
    np.testing.assert_allclose(bl.prox.TV2D().prox(as_t(f), T, 0.2).numpy(), ref, atol=1e-10)


@pytest.mark.parametrize("term, z, w", [
    (bl.prox.L1(), [1.0, -0.2, 0.05, 2.0], 0.5),
    (bl.prox.GroupL1([0, 0, 1, 1]), [1.0, -0.2, 0.05, 0.1], 0.5),
    (bl.prox.Simplex(1.0), [0.8, 0.3, -0.4, 0.5], None),
    (bl.prox.L2Ball(0.5), [0.8, 0.3, -0.4, 0.5], None),
    (bl.prox.L1Ball(1.0), [0.8, 0.3, -0.4, 0.05], None),
    (bl.prox.Box(-0.3, 0.6), [0.8, 0.3, -0.4, 0.5], None),
    (bl.prox.TV1D(1), [0.0, 0.1, 1.0, 1.2, 0.5], 0.2),
    (bl.prox.TV1D(2), [0.0, 0.1, 1.0, 1.2, 0.5, 0.3], 0.1),
])
def test_prox_jacobians_match_finite_differences(term, z, w):
    # torch autograd (or the TV manifold projector) against central differences, at points
    # away from the kinks (margins > 1e-2 checked): gradcheck's 1e-6 step stays on one piece
    z = as_t(z).requires_grad_()
    assert term.margin(z.detach(), T, w) > 1e-2
    if w is None:
        assert torch.autograd.gradcheck(lambda v: term.prox(v, T, None), (z,), eps=1e-6)
    else:
        wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v, u: term.prox(v, T, u), (z, wt), eps=1e-6)


def test_the_tv1d_terms_margin_on_a_long_order_3_signal_uses_its_solvers_dual():
    """n = 3000, order 3: the dual recovered from the prox through D D^T (cond ~ 5e19) gave
    a margin of -0.15, below any possible value; the solver's dual gives a margin in (0, 1)."""
    rng = np.random.default_rng(0)
    n = 3000
    cuts = np.sort(rng.choice(np.arange(1, n), n // 25, replace=False))
    z = (np.repeat(rng.uniform(10, 100, cuts.size + 1), np.diff(np.r_[0, cuts, n]))
         + 5 * rng.standard_normal(n))
    assert 0 < bl.prox.TV1D(3).margin(as_t(z), 1.0, 2.6) < 1
    with pytest.raises(ValueError, match="scalar weight"):
        bl.prox.TV1D(3).margin(as_t(z), 1.0, [2.6, 1.0])


def test_margins_vanish_at_kinks_and_weights_are_validated():
    lam = T * 0.5
    assert bl.prox.L1().margin(as_t([lam, 1.0]), T, 0.5) == pytest.approx(0.0, abs=1e-15)
    assert bl.prox.NonNegative().margin(as_t([0.0, 1.0]), T, None) == 0.0
    assert bl.prox.L2Ball(1.0).margin(as_t([0.6, 0.8]), T, None) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        bl.prox.L1(weight=-1.0)
    with pytest.raises(ValueError, match="lo < hi"):
        bl.prox.Box(1.0, 0.0)
    with pytest.raises(ValueError, match="groups"):
        bl.prox.GroupL1([0.5, 1.5])
    with pytest.raises(ValueError, match="order"):
        bl.prox.TV1D(4)
    term = bl.prox.L1(weight_part=2)
    with pytest.raises(ValueError, match="theta part 2.*2 part"):
        term.weight((as_t(1.0), as_t(2.0)))
