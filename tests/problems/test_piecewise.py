"""PiecewisePolynomial and ConnectedComponents: solvers, Jacobians, batches and bad input."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import bilevel as bl
from bilevel.solvers.piecewise import pp_dp_batched, pp_dp_rows

PP = bl.problems.PiecewisePolynomial
CC = bl.problems.ConnectedComponents


def lstsq_cost(x, degree):
    """Residual of the degree-d least-squares fit, numpy, on the abscissa centred and scaled."""
    L = x.size
    u = (np.arange(L) - (L - 1) / 2) / max((L - 1) / 2, 1)
    V = np.vander(u, degree + 1, increasing=True)
    res = x - V @ np.linalg.lstsq(V, x, rcond=None)[0]
    return res @ res


def brute_force(s, k, degrees):
    """Every partition of s into k intervals with its cost, sorted by cost."""
    n = s.size
    out = []
    for cuts in itertools.combinations(range(1, n), k - 1):
        b = (0, *cuts, n)
        out.append((sum(lstsq_cost(s[b[j]:b[j + 1]], degrees[j]) for j in range(k)), b))
    return sorted(out)


@given(st.integers(2, 9).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(1, min(n, 4)), st.lists(st.integers(0, 2), min_size=4, max_size=4),
    st.integers(0, 2**31 - 1))))
def test_dp_is_optimal_against_brute_force(args):
    n, k, degs, seed = args
    rng = np.random.default_rng(seed)
    s = np.repeat(rng.normal(0, 3, n), 1) + 0.3 * rng.standard_normal(n)
    prob = PP(k, degs[:k])
    sol = prob.solve(s)
    ranked = brute_force(s, k, degs[:k])
    scale = max(1.0, s @ s)
    # Exact DP against exhaustive search: costs agree to round-off.
    assert abs(sol.info["cost"] - ranked[0][0]) <= 1e-10 * scale
    assert np.sum((s - sol.x) ** 2) == pytest.approx(sol.info["cost"], abs=1e-10 * scale)
    b = sol.info["partition"]
    assert b[0] == 0 and b[-1] == n and np.all(np.diff(b) >= 1) and b.size == k + 1
    # the fit of the returned partition costs the optimum
    own = sum(lstsq_cost(s[b[j]:b[j + 1]], degs[j]) for j in range(k))
    assert own == pytest.approx(ranked[0][0], abs=1e-10 * scale)
    if len(ranked) > 1:
        gap = ranked[1][0] - ranked[0][0]
        assert sol.info["gap"] == pytest.approx(gap, abs=1e-9 * scale)
        if gap > 1e-8 * scale:
            assert tuple(b) == ranked[0][1]
    else:
        assert sol.info["gap"] == np.inf and sol.info["margin"] == np.inf


def naive_moment_cost(s, a, b, degree):
    """The textbook O(1) cost from global prefix moments (sum t^p s_t, sum t^p)."""
    t = np.arange(s.size, dtype=np.float64)
    P = [np.concatenate([[0.0], np.cumsum(t**p)]) for p in range(2 * degree + 1)]
    M = [np.concatenate([[0.0], np.cumsum(t**p * s)]) for p in range(degree + 1)]
    G = np.array([[P[p + q][b] - P[p + q][a] for q in range(degree + 1)]
                  for p in range(degree + 1)])
    r = np.array([M[p][b] - M[p][a] for p in range(degree + 1)])
    s2 = np.sum(s[a:b] ** 2)
    return s2 - r @ np.linalg.solve(G, r)


def test_segment_costs_are_stable_on_long_signals():
    # A slowly curving signal on a large offset with tiny noise: costs are small differences
    # of large moments. n = 3000, two quadratic pieces.
    n = 3000
    rng = np.random.default_rng(0)
    t = np.arange(n)
    s = 1e3 + np.where(t < 1900, (t / 300.0) ** 2, 50 - (t - 1900) / 40.0)
    s = s + 1e-3 * rng.standard_normal(n)
    prob = PP(2, 2)
    sol = prob.solve(s)
    b = sol.info["partition"]
    exact = [lstsq_cost(s[b[j]:b[j + 1]], 2) for j in range(2)]
    # Ours: QR updates, backward stable: round-off relative to the cost (~3e-3).
    assert sol.info["cost"] == pytest.approx(sum(exact), rel=1e-9)
    # The optimum over every breakpoint, by numpy least squares on centred abscissae.
    best = min(lstsq_cost(s[:c], 2) + lstsq_cost(s[c:], 2) for c in range(1880, 1921))
    assert sol.info["cost"] <= best * (1 + 1e-9)
    # The instance does exercise the issue: the textbook formula from global prefix moments
    # is off by more than 1e-3 (relative) on the last piece, a million times our error.
    naive = naive_moment_cost(s, b[1], b[2], 2)
    assert abs(naive - exact[1]) > 1e-3 * exact[1]


@pytest.mark.parametrize("degree", [0, 1, 2, 4])
def test_hat_matrices_equal_least_squares(degree):
    prob = PP(1, degree)
    for L in [1, 2, 3, 5, 8, 13, 40]:
        t = np.arange(L, dtype=np.float64)
        V = np.vander((t - t.mean()) / max(t.max(), 1), degree + 1, increasing=True)
        H_ref = V @ np.linalg.lstsq(V, np.eye(L), rcond=None)[0]
        H = prob.hat_matrix(L, degree)
        # numpy's SVD least squares vs our orthonormal polynomials: round-off.
        np.testing.assert_allclose(H, H_ref, atol=1e-11)
        Q = prob.basis(L, degree)
        assert Q.shape == (L, min(degree + 1, L))
        np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-12)
    assert prob.basis(8, degree) is prob.basis(8, degree)            # cached
    # A long piece: the orthonormal basis stays orthonormal and reproduces polynomials.
    Q = prob.basis(5000, degree)
    np.testing.assert_allclose(Q.T @ Q, np.eye(degree + 1), atol=1e-11)
    p = np.polynomial.polynomial.polyval(np.linspace(-1, 1, 5000), np.arange(1, degree + 2))
    np.testing.assert_allclose(Q @ (Q.T @ p), p, atol=1e-10 * np.abs(p).max())


@st.composite
def separated_signals(draw, max_pieces=4):
    """Piecewise polynomial signals with large jumps and small noise: a unique partition."""
    k = draw(st.integers(1, max_pieces))
    degs = draw(st.lists(st.integers(0, 2), min_size=k, max_size=k))
    lengths = draw(st.lists(st.integers(5, 9), min_size=k, max_size=k))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    pieces, level = [], 0.0
    for L, d in zip(lengths, degs):
        level += rng.choice([-1, 1]) * rng.uniform(5, 10)
        u = np.linspace(-1, 1, L)
        pieces.append(level + np.polynomial.polynomial.polyval(u, rng.uniform(-1, 1, d + 1)))
    s = np.concatenate(pieces) + 0.05 * rng.standard_normal(sum(lengths))
    return s, k, degs


def fd_jacobian(prob, s, h=1e-5):
    """Central differences, column by column, of the solution map (float64)."""
    cols = [(prob.solve(s + h * e).x - prob.solve(s - h * e).x) / (2 * h)
            for e in np.eye(s.size)]
    return np.array(cols).T


@given(separated_signals())
def test_vjp_matches_finite_differences(instance):
    s, k, degs = instance
    prob = PP(k, degs)
    sol = prob.solve(s)
    assume(sol.info["margin"] > 1e-3)
    J_fd = fd_jacobian(prob, s)
    J = bl.jacobian(prob, s, "analytic")
    # The map is linear on the partition: differences are exact up to eps |s| / h ~ 1e-10.
    np.testing.assert_allclose(J, J_fd, atol=1e-8)
    np.testing.assert_allclose(J, J.T, atol=1e-13)                   # a projector
    np.testing.assert_allclose(J @ J, J, atol=1e-12)
    v = np.random.default_rng(0).standard_normal(s.size)
    for name in ("partial_smoothness", "finite_difference"):
        np.testing.assert_allclose(bl.vjp(prob, s, v, name), J.T @ v, atol=1e-8, err_msg=name)
    np.testing.assert_allclose(bl.jvp(prob, s, v, "partial_smoothness"), J @ v, atol=1e-12)


@given(separated_signals())
def test_margin_guarantees_a_stable_partition(instance):
    s, k, degs = instance
    prob = PP(k, degs)
    sol = prob.solve(s)
    assume(np.isfinite(sol.info["margin"]))
    rng = np.random.default_rng(1)
    for _ in range(5):
        d = rng.standard_normal(s.size)
        d *= 0.99 * sol.info["margin"] * np.abs(s).max() / 5 / np.linalg.norm(d)
        np.testing.assert_array_equal(prob.solve(s + d).info["partition"],
                                      sol.info["partition"])


def test_value_gradient_is_the_residual():
    s = np.array([0.0, 0.3, 0.1, 4.0, 4.5, 5.1])
    prob = PP(2, 1)
    value, grad = bl.value_gradient(prob, s)
    sol = prob.solve(s)
    assert value == pytest.approx(0.5 * sol.info["cost"])
    np.testing.assert_allclose(grad, s - sol.x, atol=1e-14)


@pytest.mark.parametrize("degree", [0, 1, [0, 2, 1]])
def test_batch_equals_a_loop_of_singles(batch, degree):
    prob = PP(3, degree)
    S = batch()
    V = np.random.default_rng(3).standard_normal(S.shape)
    kernels = prob.capabilities.batch
    solved = kernels.solve(S)
    Y = solved.x
    (G,), margins = kernels.analytic_vjp(solved, V)
    for r in range(S.shape[0]):
        sol = prob.solve(S[r])
        np.testing.assert_array_equal(Y[r], sol.x)
        np.testing.assert_allclose(G[r], bl.vjp(prob, S[r], V[r], "analytic"), atol=1e-13)
        assert margins[r] == pytest.approx(sol.info["margin"], rel=1e-12)
    # prange kernel and its serial twin agree exactly; a fresh solve gives the same VJP
    out_b, out_s = pp_dp_batched(S, 3, prob.degrees), pp_dp_rows(S, 3, prob.degrees)
    for a, b in zip(out_b, out_s):
        np.testing.assert_array_equal(a, b)
    (G2,), _ = kernels.analytic_vjp(kernels.solve(S.copy()), V)
    np.testing.assert_array_equal(G2, G)


def test_bad_input():
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        PP(0)
    with pytest.raises(ValueError, match="k must be an integer"):
        PP(2.5)
    with pytest.raises(ValueError, match="degree must be >= 0"):
        PP(2, -1)
    with pytest.raises(ValueError, match="degree must be >= 0"):
        PP(2, [0, -2])
    with pytest.raises(ValueError, match="one integer or k=3"):
        PP(3, [0, 1])
    with pytest.raises(ValueError, match="degree must be an integer"):
        PP(2, 1.5)
    prob = PP(4, 1)
    with pytest.raises(ValueError, match="at least k; lower k"):
        prob.solve(np.ones(3))
    with pytest.raises(ValueError, match="s contains NaN"):
        prob.solve(np.array([1.0, np.nan, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="s must have 1 dimension"):
        prob.solve(np.ones((2, 5)))
    with pytest.raises(ValueError, match="1-tuple"):
        prob.solve((np.ones(5), 1.0))
    with pytest.raises(ValueError, match="v must have shape"):
        bl.vjp(prob, np.arange(6.0), np.ones(5))
    layer = bl.torch.Layer(prob, "analytic")
    with pytest.raises(ValueError, match="NaN"):
        layer(torch.tensor([[1.0, np.nan, 2.0, 3.0, 4.0]]))
    with pytest.raises(ValueError, match="at least k"):
        layer(torch.ones(2, 3))
    with pytest.raises(ValueError, match="levels must be"):
        CC(0)
    with pytest.raises(ValueError, match="lo < hi"):
        CC(4, value_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="connectivity"):
        CC(4, connectivity=3)
    with pytest.raises(ValueError, match="image must have 2 dimension"):
        CC(4).solve(np.ones(5))
    with pytest.raises(ValueError, match="image contains NaN"):
        CC(4).solve(np.array([[0.1, np.nan]]))
    with pytest.raises(ValueError, match="NaN"):
        bl.torch.Layer(CC(4))(torch.tensor([[[0.1, np.nan]]]))


# --- connected components ---
def dense_component_reference(image, levels, lo=0.0, hi=1.0, connectivity=2):
    """Labels from scipy.ndimage (independent of scikit-image), and the dense Jacobian."""
    from scipy import ndimage

    q = np.clip(np.floor((image - lo) / (hi - lo) * levels), 0, levels - 1)
    structure = np.ones((3, 3)) if connectivity == 2 else ndimage.generate_binary_structure(2, 1)
    labels = np.zeros(image.shape, dtype=int)
    count = 0
    for b in range(levels):
        lab, num = ndimage.label(q == b, structure=structure)
        labels[lab > 0] = lab[lab > 0] + count
        count += num
    flat = labels.ravel()
    J = (flat[:, None] == flat[None, :]) / np.bincount(flat)[flat][:, None]
    return J, labels


@st.composite
def images(draw):
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    levels = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    blocky = np.kron(rng.uniform(-0.1, 1.1, (3, 3)), np.ones((3, 3)))[:h, :w]
    return blocky + 0.1 * rng.standard_normal((h, w)), levels, draw(st.sampled_from([1, 2]))


@given(images())
def test_components_match_a_dense_reference_and_finite_differences(instance):
    image, levels, connectivity = instance
    prob = CC(levels, connectivity=connectivity)
    sol = prob.solve(image)
    J, labels = dense_component_reference(image, levels, connectivity=connectivity)
    assert sol.info["n_components"] == labels.max()
    np.testing.assert_allclose(sol.x.ravel(), J @ image.ravel(), atol=1e-14)
    v = np.random.default_rng(5).standard_normal(image.shape)
    g = bl.vjp(prob, image, v, "analytic")
    np.testing.assert_allclose(g.ravel(), J.T @ v.ravel(), atol=1e-13)
    np.testing.assert_allclose(bl.vjp(prob, image, v, "partial_smoothness"), g, atol=1e-13)
    margin = sol.info["margin"]
    assume(margin > 1e-3)
    # Central differences with steps inside the margin: the map is linear there.
    h = min(1e-4, margin * max(np.abs(image).max(), 1.0 / levels) / 4)
    J_fd = np.array([((prob.solve(image + h * e.reshape(image.shape)).x
                       - prob.solve(image - h * e.reshape(image.shape)).x) / (2 * h)).ravel()
                     for e in np.eye(image.size)]).T
    np.testing.assert_allclose(J_fd, J, atol=1e-8)
    np.testing.assert_allclose(bl.vjp(prob, image, v, "finite_difference"), g, atol=1e-8)


def test_components_margin_and_range():
    prob = CC(2, value_range=(-1.0, 1.0))
    image = np.array([[-3.0, -0.5], [0.5, 7.0]])       # outside the range: the end bins
    sol = prob.solve(image)
    np.testing.assert_array_equal(prob.quantize(image), [[0, 0], [1, 1]])
    np.testing.assert_allclose(sol.x, [[-1.75, -1.75], [3.75, 3.75]])
    assert sol.info["margin"] == pytest.approx(0.5 / 7.0)
    on_edge = prob.solve(np.array([[0.0, 0.5]]))
    assert on_edge.info["margin"] == 0.0
    with pytest.warns(bl.DegeneracyWarning):
        bl.vjp(prob, np.array([[0.0, 0.5]]), np.ones((1, 2)), "partial_smoothness")
