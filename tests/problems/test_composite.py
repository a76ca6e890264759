"""Composite energies agree with the dedicated problems they restate: solutions and VJPs of
every strategy both offer, on instances drawn by hypothesis; the new terms' VJPs agree with
high-precision finite differences."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import bilevel as bl
from bilevel.testing import regression_data, sparse_instances

# Every Composite solve ends with semismooth Newton steps on the identified manifold: its
# solution is exact to round-off, as are the dedicated solvers'. The agreement tolerance
# 1e-8 is the issue's; exact strategies agree to ~1e-13.
TOL = 1e-8
# Each drawn instance costs a few solves per strategy (finite differences: 4 per entry of
# theta): fewer examples than the suite's default 15.
FEW = settings(max_examples=6)


def least_squares(X, y, n=None):
    Xt, yt = torch.from_numpy(np.asarray(X)), torch.from_numpy(np.asarray(y))
    n = 1.0 if n is None else float(n)

    def f(x, theta):
        r = Xt @ x - yt
        return 0.5 * (r @ r) / n
    return f


def agree(a, b, tol=TOL):
    for p, q in zip(*(x if isinstance(x, tuple) else (x,) for x in (a, b))):
        np.testing.assert_allclose(p, q, rtol=tol, atol=tol * max(1.0, np.abs(q).max()))


def lipschitz(X, n):
    return float(np.linalg.eigvalsh(X.T @ X / n)[-1])


@FEW
@given(sparse_instances("lasso", max_features=8, per_feature=False))
def test_composite_lasso_is_the_lasso(instance):
    lasso, lam = instance
    X, y, n = lasso.design.X, lasso.y, lasso.y.shape[0]
    comp = bl.problems.Composite(least_squares(X, y, n), bl.prox.L1(weight_part=0),
                                 np.zeros(X.shape[1]), step_size=1.0 / lipschitz(X, n))
    agree(comp.solve(lam).x, lasso.solve(lam).x)
    v = np.random.default_rng(0).standard_normal(X.shape[1])
    for name in ("partial_smoothness", "fixed_point", "finite_difference"):
        agree(bl.vjp(comp, lam, v, name), bl.vjp(lasso, lam, v, name))


@FEW
@given(sparse_instances("elastic_net", max_features=6, per_feature=False))
def test_composite_elastic_net_is_the_elastic_net(instance):
    enet, theta = instance
    X, y, n = enet.design.X, enet.y, enet.y.shape[0]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def f(x, t):
        r = Xt @ x - yt
        return 0.5 * (r @ r) / n + 0.5 * t[1] * (x * x).sum()

    comp = bl.problems.Composite(f, bl.prox.L1(weight_part=0), np.zeros(X.shape[1]),
                                 step_size=1.0 / (lipschitz(X, n) + float(theta[1])))
    agree(comp.solve(theta).x, enet.solve(theta).x)
    v = np.random.default_rng(1).standard_normal(X.shape[1])
    for name in ("partial_smoothness", "fixed_point", "finite_difference"):
        agree(bl.vjp(comp, theta, v, name), bl.vjp(enet, theta, v, name))


@st.composite
def designs(draw, min_rows=3):
    n = draw(st.integers(2, 5))
    m = draw(st.integers(max(min_rows, n + 1), n + 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    return rng.standard_normal((m, n)), rng.standard_normal(m)


def _nonnegative_margin(problem, b):
    sol = problem.solve(b)
    free = sol.x > 0
    lam = sol.info["lam"]
    scale = max(1.0, np.abs(lam).max())
    return (free.any() and sol.x[free].min() > 1e-3 * sol.x.max()
            and (lam[~free].min(initial=np.inf) > 1e-3 * scale))


@FEW
@given(designs())
def test_composite_nnls_is_nnls(instance):
    A, b = instance
    nnls = bl.problems.NNLS(A)
    assume(_nonnegative_margin(nnls, b))            # strict complementarity
    At = torch.from_numpy(A)
    comp = bl.problems.Composite(lambda x, t: 0.5 * ((At @ x - t) ** 2).sum(),
                                 bl.prox.NonNegative(), np.zeros(A.shape[1]),
                                 step_size=1.0 / float(np.linalg.eigvalsh(A.T @ A)[-1]))
    agree(comp.solve(b).x, nnls.solve(b).x)
    v = np.random.default_rng(2).standard_normal(A.shape[1])
    exact = bl.vjp(nnls, b, v, "analytic")
    for name in ("implicit", "partial_smoothness", "fixed_point", "finite_difference"):
        agree(bl.vjp(comp, b, v, name), exact)


@FEW
@given(designs(min_rows=4))
def test_composite_simplex_least_squares_is_simplex_least_squares(instance):
    A, b = instance
    ls = bl.problems.SimplexLeastSquares(A)
    sol = ls.solve(b)
    support = sol.x > 1e-9
    assume(support.sum() >= 1 and sol.x[support].min() > 1e-3)
    At = torch.from_numpy(A)
    comp = bl.problems.Composite(lambda x, t: 0.5 * ((At @ x - t) ** 2).sum(),
                                 bl.prox.Simplex(), np.full(A.shape[1], 1.0 / A.shape[1]),
                                 step_size=1.0 / float(np.linalg.eigvalsh(A.T @ A)[-1]))
    csol = comp.solve(b)
    # the dual (residual) margin of the zero entries: a kink is a draw for neither
    manifold = comp.capabilities.manifold(csol)
    assume(manifold.margin > 1e-3)
    agree(csol.x, sol.x)
    v = np.random.default_rng(3).standard_normal(A.shape[1])
    exact = bl.vjp(ls, b, v, "analytic")
    for name in ("implicit", "partial_smoothness", "fixed_point", "finite_difference"):
        agree(bl.vjp(comp, b, v, name), exact)


@FEW
@given(st.integers(1, 3), st.integers(0, 2**31 - 1), st.floats(0.05, 0.5))
def test_composite_tv1d_is_tv1d(order, seed, lam):
    rng = np.random.default_rng(seed)
    s = np.repeat(rng.uniform(-2, 2, 3), 6) + 0.1 * rng.standard_normal(18)
    tv = bl.problems.TV1D(order)
    theta = (s, np.asarray(lam))
    assume(tv.capabilities.manifold(tv.solve(theta)).margin > 1e-4)
    comp = bl.problems.Composite(lambda x, t: 0.5 * ((x - t[0]) ** 2).sum(),
                                 bl.prox.TV1D(order, weight_part=1), np.zeros(18), step_size=1.0)
    agree(comp.solve(theta).x, tv.solve(theta).x)
    v = rng.standard_normal(18)
    exact = bl.vjp(tv, theta, v, "partial_smoothness")
    for name in ("partial_smoothness", "fixed_point", "unroll", "finite_difference"):
        agree(bl.vjp(comp, theta, v, name), exact)


def test_composite_bregman_unrolls_to_the_dedicated_problems():
    # Both unroll their entropic mirror descent to a residual of 1e-12: the iterate's
    # derivative converges at the method's rate, to ~1e-9 there (a fixed instance with a
    # clear support: random draws can sit near a face, where the method slows down).
    A = np.array([[1.0, 0.2, 0.1], [0.3, 1.0, -0.2], [0.1, 0.4, 1.0], [0.5, 0.0, 0.3]])
    At = torch.from_numpy(A)
    step = 1.0 / float(np.linalg.eigvalsh(A.T @ A)[-1])
    v = np.array([0.3, -1.0, 0.5])
    for dedicated, term, b in ((bl.problems.NNLS(A), bl.prox.NonNegative(),
                                np.array([1.0, -1.0, 0.5, 0.2])),
                               (bl.problems.SimplexLeastSquares(A), bl.prox.Simplex(),
                                np.array([1.0, 0.6, -0.5, 0.2]))):
        comp = bl.problems.Composite(lambda x, t: 0.5 * ((At @ x - t) ** 2).sum(), term,
                                     np.full(3, 1.0 / 3), step_size=step)
        exact = bl.vjp(dedicated, b, v, "analytic")
        agree(bl.vjp(comp, b, v, "bregman"), exact, tol=1e-7)
        agree(bl.vjp(dedicated, b, v, "bregman"), exact, tol=1e-7)


def test_composite_lasso_unrolls_to_the_lasso():
    X, y = regression_data(40, 6, seed=7)
    lasso = bl.problems.Lasso(X, y)
    lam = lasso.lam_max() / 4
    comp = bl.problems.Composite(least_squares(X, y, 40), bl.prox.L1(weight_part=0),
                                 np.zeros(6), step_size=1.0 / lipschitz(X, 40))
    v = np.linspace(-1.0, 1.0, 6)
    # both replay ISTA from zero with the same step until converged (1e-10): the same VJP
    agree(bl.vjp(comp, lam, v, "unroll"), bl.vjp(lasso, lam, v, "partial_smoothness"),
          tol=1e-7)


# --- the new terms, against finite differences -----------------------------------------

X, Y = regression_data(30, 6, seed=5)


def _check_against_fd(problem, theta, strategies, tol):
    sol = problem.solve(theta)
    manifold = problem.capabilities.manifold(sol)
    assert manifold.margin > 1e-4, manifold.margin           # away from a kink
    v = np.random.default_rng(4).standard_normal(sol.x.shape)
    ref = bl.vjp(problem, theta, v, bl.strategies.FiniteDifference(order=4))
    for name in strategies:
        agree(bl.vjp(problem, theta, v, name), ref, tol=tol)
    return sol


FD_TOL = 1e-7   # 4th-order differences of solves exact to round-off, steps ~7e-4 |theta|


@pytest.mark.parametrize("term, theta, strategies", [
    (bl.prox.GroupL1([0, 0, 1, 1, 2, 2], weight_part=0), np.asarray(0.1),
     ("partial_smoothness", "fixed_point", "unroll")),
    (bl.prox.Box(-0.3, 0.4), np.asarray(1.0),
     ("partial_smoothness", "implicit", "fixed_point", "unroll", "bregman")),
    # (the ball's mirror is offered, but its tangential steps shrink as the iterates near
    # the sphere where this solution lies: a sublinear tail, like TV2D's disc mirror)
    (bl.prox.L2Ball(0.6), np.asarray(1.0),
     ("partial_smoothness", "implicit", "fixed_point", "unroll")),
    (bl.prox.LinfBall(0.25), np.asarray(1.0),
     ("partial_smoothness", "implicit", "fixed_point", "unroll", "bregman")),
    (bl.prox.L1Ball(0.8), np.asarray(1.0), ("partial_smoothness", "fixed_point", "unroll")),
])
def test_new_terms_match_finite_differences(term, theta, strategies):
    # theta scales the targets: y * theta, so that every term has a theta to move
    Xt, yt = torch.from_numpy(X), torch.from_numpy(Y)

    def f(x, t):
        r = Xt @ x - yt * (t if term.is_set else 1.0)
        return 0.5 * (r @ r) / 30

    problem = bl.problems.Composite(f, term, np.zeros(6), step_size=1.0 / lipschitz(X, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_against_fd(problem, theta, strategies,
                          tol=1e-6 if "bregman" in strategies else FD_TOL)


def test_fused_lasso_pair_matches_finite_differences():
    rng = np.random.default_rng(6)
    s = np.repeat([0.0, 1.5, 0.4], 5) + 0.05 * rng.standard_normal(15)
    problem = bl.problems.Composite(lambda x, t: 0.5 * ((x - t[0]) ** 2).sum(),
                                    [bl.prox.TV1D(1, weight_part=1), bl.prox.L1(weight=0.1)],
                                    np.zeros(15), step_size=1.0)
    _check_against_fd(problem, (s, np.asarray(0.2)),
                      ("partial_smoothness", "fixed_point", "unroll"), FD_TOL)


def test_isotropic_tv_term_matches_finite_differences():
    f = np.array([[0.0, 0.1, 1.0], [0.05, 0.9, 1.1]])    # small: every prox is a solve
    problem = bl.problems.Composite(lambda x, t: 0.5 * ((x - t[0]) ** 2).sum(),
                                    bl.prox.TV2D(weight_part=1), np.zeros((2, 3)),
                                    step_size=1.0)
    # the prox is a primal-dual solve to 1e-12: differences of it are good to ~1e-7
    _check_against_fd(problem, (f, np.asarray(0.1)), ("partial_smoothness", "fixed_point"),
                      1e-6)


def test_composite_rejects_bad_input_naming_the_argument():
    f = least_squares(X, Y)
    with pytest.raises(ValueError, match="not known in closed form"):
        bl.problems.Composite(f, [bl.prox.L1(), bl.prox.Simplex()], np.zeros(6))
    with pytest.raises(TypeError, match="bilevel.prox"):
        bl.problems.Composite(f, ["l1"], np.zeros(6))
    with pytest.raises(ValueError, match="step_size"):
        bl.problems.Composite(f, bl.prox.L1(), np.zeros(6), step_size=-1.0)
    with pytest.raises(ValueError, match="weight_part"):
        bl.prox.L1(weight_part=-1)
    problem = bl.problems.Composite(f, bl.prox.L1(weight_part=0), np.zeros(6))
    with pytest.raises(ValueError, match="theta part 0.*>= 0"):
        problem.solve(np.asarray(-0.1))
    with pytest.raises(bl.NotApplicable, match="step_size"):
        bl.vjp(problem, np.asarray(0.1), np.ones(6), "unroll")


def test_composite_solution_is_exact_and_scale_relative():
    # the stopping rule is relative to the problem's scale: scaling the data by c scales x*
    for c in (1e-6, 1.0, 1e6):
        Xt, yt = torch.from_numpy(X), torch.from_numpy(Y * c)

        def f(x, t, Xt=Xt, yt=yt):
            r = Xt @ x - yt
            return 0.5 * (r @ r) / 30

        lam = bl.problems.Lasso(X, Y).lam_max() / 3
        problem = bl.problems.Composite(f, bl.prox.L1(weight_part=0), np.zeros(6))
        sol = problem.solve(np.asarray(lam * c))
        agree(sol.x / c, bl.problems.Lasso(X, Y).solve(lam).x, tol=1e-10)
        assert sol.converged and sol.info["newton"] >= 1


def test_composite_works_with_minimize_check_vjp_and_the_layer():
    from bilevel.testing import check_vjp

    X, y = regression_data(30, 5, seed=3, noise=0.5)
    X_val, y_val = regression_data(20, 5, seed=4, noise=0.5)
    n = X.shape[0]
    comp = bl.problems.Composite(least_squares(X, y, n), bl.prox.L1(weight_part=0),
                                 np.zeros(5), step_size=1.0 / lipschitz(X, n))
    lasso = bl.problems.Lasso(X, y)
    loss = bl.losses.SquaredError(X_val, y_val)
    lam = np.asarray(0.3 * lasso.lam_max())
    # check_vjp: partial smoothness against central finite differences (truncation ~h^2).
    assert check_vjp(comp, lam, "partial_smoothness", rtol=1e-6) < 1e-6
    # minimize: the same outer path as the dedicated Lasso, to the solvers' round-off.
    runs = [bl.minimize(p, loss, lam, "partial_smoothness", optimizer="gd", steps=5,
                        lr=1e-3, progress=False) for p in (comp, lasso)]
    np.testing.assert_allclose(runs[0].theta, runs[1].theta, rtol=1e-8)
    assert runs[0].loss < loss.value_and_grad(lasso.solve(lam).x)[0]
    # The layer: a batch of two weights, each row solved and differentiated on its own.
    layer = bl.torch.Layer(comp, "partial_smoothness", theta_ndim=(0,))
    lams = torch.tensor([0.2, 0.4], dtype=torch.float64) * lasso.lam_max()
    lams.requires_grad_()
    out = layer(lams)
    v = torch.ones_like(out)
    (g,) = torch.autograd.grad(out, lams, v)
    for k in range(2):
        x_k = lasso.solve(lams[k].detach().numpy()).x
        agree(out[k].detach().numpy(), x_k)
        agree(np.asarray(g[k]), bl.vjp(lasso, lams[k].detach().numpy(), np.ones(5),
                                      "partial_smoothness"))
