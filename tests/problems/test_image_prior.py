"""ImagePrior: operators against SciPy, the solver's optimality and scaling, every strategy's
hypergradient against high-precision finite differences, bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bilevel as bl
from bilevel.problems.image_prior import dct_basis


def image(seed, shape=(16, 16)):
    """A smooth image with edges, values in [0, 1], plus Gaussian noise 0.05."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    clean = 0.5 + 0.3 * np.sin(0.4 * i + 0.25 * j) + 0.2 * (i > shape[0] // 2)
    return clean + 0.05 * rng.standard_normal(shape), clean


def theta0(n_filters=4, seed=1, nu=0.02):
    rng = np.random.default_rng(seed)
    return np.full(n_filters, nu) * rng.uniform(0.5, 1.5, n_filters), \
        rng.standard_normal((n_filters, 8))


def test_dct_basis_is_orthonormal_and_zero_mean():
    B = dct_basis(5).reshape(24, 25)
    np.testing.assert_allclose(B @ B.T, np.eye(24), atol=1e-14)
    np.testing.assert_allclose(B.sum(axis=1), 0.0, atol=1e-14)


@pytest.mark.parametrize("operator", ["identity", "blur"])
def test_operators_match_scipy(operator):
    from scipy.ndimage import correlate, gaussian_filter

    f, _ = image(0, (9, 11))
    prob = bl.problems.ImagePrior(f, operator=operator)
    nu, coeffs = theta0(3)
    u = torch.from_numpy(f[None])
    filters = torch.einsum("kl,lij->kij", torch.from_numpy(coeffs), torch.from_numpy(prob.basis))
    z = prob.responses(u, filters).numpy()
    for k in range(3):   # torch "reflect" padding is SciPy's "mirror" (edge not repeated)
        np.testing.assert_allclose(z[0, k], correlate(f, filters[k].numpy(), mode="mirror"),
                                   atol=1e-13)
    expected = f if operator == "identity" else gaussian_filter(f, 1.0, mode="mirror",
                                                                truncate=3.0)
    np.testing.assert_allclose(prob.apply_operator(u)[0].numpy(), expected, atol=1e-13)


@pytest.mark.parametrize("penalty", ["student_t", "smooth_l1"])
def test_smooth_solution_is_stationary_and_beats_perturbations(penalty):
    f, _ = image(2)
    prob = bl.problems.ImagePrior(f, penalty=penalty, eps=0.05)
    theta = theta0()
    sol = prob.solve(theta)
    assert sol.converged and sol.info["residual"] <= prob.tol
    # Independent check: a minimizer's energy is below that of random nearby images.
    x = torch.from_numpy(sol.x)
    th = tuple(torch.from_numpy(t) for t in theta)
    e0 = float(prob.energy(x, th))
    rng = np.random.default_rng(3)
    for _ in range(5):
        d = torch.from_numpy(1e-3 * rng.standard_normal(sol.x.shape))
        assert float(prob.energy(x + d, th)) > e0


def test_images_are_solved_as_independent_blocks():
    f1, _ = image(4)
    f2, _ = image(5)
    theta = theta0()
    both = bl.problems.ImagePrior(np.stack([f1, f2])).solve(theta).x
    for k, f in enumerate((f1, f2)):
        alone = bl.problems.ImagePrior(f).solve(theta).x
        # Both solves stop at relative residual 1e-10; the Hessian's smallest eigenvalue
        # is ~1 (identity data term, small nu): the iterates agree to ~1e-10.
        np.testing.assert_allclose(both[k], alone[0], atol=1e-8)


def test_warm_start_finishes_at_once():
    f, _ = image(6)
    prob = bl.problems.ImagePrior(f)
    theta = theta0()
    cold = prob.solve(theta)
    warm = prob.solve(theta, init=cold.x)
    assert warm.converged and warm.n_iter <= 2 < cold.n_iter


@given(log_s=st.floats(-3, 3))
def test_stopping_rule_is_scale_relative_student_t(log_s):
    # E(s u; s f, s^2 nu, c / s) = s^2 E(u; f, nu, c): u* scales by s, and the solver,
    # stopping on ||grad E||_inf / ||f||_inf, takes the same path.
    s = 10.0 ** log_s
    f, _ = image(7, (8, 8))
    nu, coeffs = theta0()
    base = bl.problems.ImagePrior(f, tol=1e-9).solve((nu, coeffs))
    scaled = bl.problems.ImagePrior(s * f, tol=1e-9).solve((s * s * nu, coeffs / s))
    assert scaled.converged
    np.testing.assert_allclose(scaled.x / s, base.x, atol=1e-7)   # both within ~1e-9 of u*
    assert abs(scaled.n_iter - base.n_iter) <= 2


@given(log_s=st.floats(-3, 3))
def test_stopping_rule_is_scale_relative_l1(log_s):
    # rho = |.| is 1-homogeneous: u*(s f, s nu) = s u*(f, nu), with the same iterations.
    s = 10.0 ** log_s
    f, _ = image(8, (8, 8))
    nu, coeffs = theta0(2, nu=0.01)
    base = bl.problems.ImagePrior(f, penalty="l1", tol=1e-7).solve((nu, coeffs))
    scaled = bl.problems.ImagePrior(s * f, penalty="l1", tol=1e-7).solve((s * nu, coeffs))
    assert scaled.converged and abs(scaled.n_iter - base.n_iter) <= 10
    np.testing.assert_allclose(scaled.x / s, base.x, atol=1e-5)


def directional_fd(prob, loss, theta, direction, h=1e-3):
    """Richardson-extrapolated central difference of ``L(x*(theta + t d))`` at ``t = 0``.

    Truncation ``O(h^4)`` (~1e-12 here), round-off ``~ tol |x| / h`` (~1e-9 with solves to
    1e-12): a reference to ~1e-8 relative on these instances.
    """
    def value(t):
        th = tuple(p + t * d for p, d in zip(theta, direction))
        return float(loss(torch.from_numpy(prob.solve(th).x)))

    d1 = (value(h) - value(-h)) / (2 * h)
    d2 = (value(h / 2) - value(-h / 2)) / h
    return (4 * d2 - d1) / 3


@pytest.fixture(scope="module")
def smooth_instance():
    f, clean = image(9)
    prob = bl.problems.ImagePrior(f, tol=1e-12)
    theta = theta0(nu=0.05)
    loss = bl.losses.Reconstruction(clean[None])
    rng = np.random.default_rng(10)
    direction = tuple(rng.standard_normal(p.shape) for p in theta)
    ref = directional_fd(prob, loss, theta, direction)
    return prob, loss, theta, direction, ref


# (strategy, relative tolerance, reason)
SMOOTH_STRATEGIES = [
    (bl.strategies.Implicit(linear_solver="cg", tol=1e-12), 1e-6,
     "CG on Hessian-vector products to 1e-12, x* to 1e-12: the FD reference's ~1e-8 dominates"),
    (bl.strategies.FixedPoint(), 1e-6, "GMRES on (I - d_x T)^T to 1e-10"),
    pytest.param(bl.strategies.Unroll(), 1e-6,
                 "replayed until x_n and its adjoint are within 1e-10",
                 marks=pytest.mark.slow),                       # ~20 s: a long replay
]


@pytest.mark.parametrize("strategy, rtol, reason", SMOOTH_STRATEGIES,
                         ids=["implicit_cg", "fixed_point", "unroll"])
def test_smooth_hypergradient_matches_finite_differences(smooth_instance, strategy, rtol,
                                                         reason):
    prob, loss, theta, direction, ref = smooth_instance
    _, grad = bl.hypergradient(prob, loss, theta, strategy)
    value = sum(float(np.sum(g * d)) for g, d in zip(grad, direction))
    assert abs(value - ref) <= rtol * abs(ref), (value, ref, reason)


def test_truncated_unroll_is_biased_and_says_so(smooth_instance):
    prob, loss, theta, direction, ref = smooth_instance
    with pytest.warns(bl.ConvergenceWarning, match="n_steps=3"):
        _, grad = bl.hypergradient(prob, loss, theta, bl.strategies.Unroll(n_steps=3))
    value = sum(float(np.sum(g * d)) for g, d in zip(grad, direction))
    assert abs(value - ref) > 1e-3 * abs(ref)


def test_implicit_agrees_with_finite_differences_for_weight_map_and_blur():
    f, clean = image(11, (10, 10))
    prob = bl.problems.ImagePrior(f, operator="blur", weight_map=True, tol=1e-12)
    nu, coeffs = theta0(nu=0.05)
    theta = (nu, coeffs, np.random.default_rng(12).uniform(0.5, 1.5, (10, 10)))
    loss = bl.losses.Reconstruction(clean[None])
    rng = np.random.default_rng(13)
    direction = tuple(rng.standard_normal(p.shape) for p in theta)
    ref = directional_fd(prob, loss, theta, direction)
    _, grad = bl.hypergradient(prob, loss, theta, bl.strategies.Implicit(linear_solver="cg",
                                                                          tol=1e-12))
    assert grad[2].shape == (10, 10)
    value = sum(float(np.sum(g * d)) for g, d in zip(grad, direction))
    assert abs(value - ref) <= 1e-6 * abs(ref)     # as in the identity case


@pytest.fixture(scope="module")
def l1_instance():
    f, clean = image(14, (8, 8))
    prob = bl.problems.ImagePrior(f, penalty="l1", tol=1e-12, max_iter=100000)
    theta = theta0(2, nu=0.01)
    loss = bl.losses.Reconstruction(clean[None])
    rng = np.random.default_rng(15)
    direction = tuple(rng.standard_normal(p.shape) for p in theta)
    # The map is piecewise smooth; h = 1e-4 keeps the stencil on one piece. PD solves to
    # 1e-12 over h = 1e-4: the reference holds to ~1e-7; 1e-5 below leaves a margin.
    return prob, loss, theta, direction, directional_fd(prob, loss, theta, direction, h=1e-4)


@pytest.mark.parametrize("strategy", [
    bl.strategies.FixedPoint(),
    pytest.param(bl.strategies.Unroll(), marks=pytest.mark.slow),  # ~25 s: long PD replay
], ids=["fixed_point", "unroll"])
def test_l1_strategies_match_finite_differences(l1_instance, strategy):
    prob, loss, theta, direction, ref = l1_instance
    _, grad = bl.hypergradient(prob, loss, theta, strategy)
    value = sum(float(np.sum(g * d)) for g, d in zip(grad, direction))
    assert abs(value - ref) <= 1e-5 * abs(ref), (strategy.name, value, ref)


def test_capabilities_are_typed_and_explained():
    f, _ = image(16, (6, 6))
    smooth = bl.problems.ImagePrior(f).capabilities
    assert {"optimality", "step", "energy"} <= smooth and "mirror" not in smooth
    l1 = bl.problems.ImagePrior(f, penalty="l1").capabilities
    assert {"step", "energy"} <= l1 and not {"optimality", "mirror"} & l1
    assert "not differentiable" in l1.why_not["optimality"]
    assert "sublinear" in l1.why_not["mirror"]
    with pytest.raises(bl.NotApplicable, match="optimality"):
        bl.vjp(bl.problems.ImagePrior(f, penalty="l1"), theta0(), np.ones((1, 6, 6)),
               "implicit")


@pytest.mark.parametrize("kwargs, match", [
    ({"penalty": "huber"}, "penalty must be one of"),
    ({"operator": "fft"}, "operator must be"),
    ({"filter_size": 4}, "filter_size must be an odd integer"),
    ({"eps": 0.0}, "eps must be finite and > 0"),
    ({"blur_sigma": -1.0}, "blur_sigma must be > 0"),
    ({"tol": 0.0}, "need tol > 0"),
])
def test_bad_constructor_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bl.problems.ImagePrior(np.zeros((6, 6)), **kwargs)


def test_bad_data_and_theta_are_named():
    with pytest.raises(ValueError, match="f contains NaN"):
        bl.problems.ImagePrior(np.full((6, 6), np.nan))
    with pytest.raises(ValueError, match="f must have"):
        bl.problems.ImagePrior(np.zeros(6))
    with pytest.raises(ValueError, match="larger than 3 pixels"):
        bl.problems.ImagePrior(np.zeros((3, 8)), operator="blur")
    prob = bl.problems.ImagePrior(np.zeros((6, 6)))
    nu, coeffs = theta0()
    with pytest.raises(ValueError, match=r"theta = \(nu, coeffs\)"):
        prob.solve(nu)
    with pytest.raises(ValueError, match="nu must be >= 0"):
        prob.solve((-nu, coeffs))
    with pytest.raises(ValueError, match=r"coeffs must have shape \(4, 8\)"):
        prob.solve((nu, coeffs[:, :5]))
    weighted = bl.problems.ImagePrior(np.zeros((6, 6)), weight_map=True)
    with pytest.raises(ValueError, match=r"w must have shape \(6, 6\)"):
        weighted.solve((nu, coeffs, np.ones((5, 6))))
    with pytest.raises(ValueError, match="w must be >= 0"):
        weighted.solve((nu, coeffs, -np.ones((6, 6))))


def test_unconverged_solve_warns():
    f, _ = image(17, (8, 8))
    with pytest.warns(bl.ConvergenceWarning, match="raise max_iter"):
        sol = bl.problems.ImagePrior(f, penalty="l1", max_iter=5).solve(theta0())
    assert not sol.converged
