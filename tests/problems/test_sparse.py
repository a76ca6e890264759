"""Lasso and ElasticNet: solvers against closed forms and scikit-learn, sparse designs, VJPs."""

import warnings

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given
from hypothesis import strategies as st

import bilevel as bl
from bilevel.testing import regression_data, sparse_instances

PS = bl.strategies.PartialSmoothness()


def closed_form(problem, sol):
    """Support, signs, restricted Hessian H and dx*_S/dlam1 (per support feature) by numpy."""
    S = np.flatnonzero(sol.x)
    s = np.sign(sol.x[S])
    X = problem.design.X
    XS = X[:, S].toarray() if scipy.sparse.issparse(X) else X[:, S]
    n = XS.shape[0]
    if isinstance(problem, bl.problems.LogisticRegression):
        prob1 = 1 / (1 + np.exp(-problem.y * (XS @ sol.x[S])))
        H = XS.T @ (XS * (prob1 * (1 - prob1) / n)[:, None])
    else:
        H = XS.T @ XS / n
        if isinstance(sol.theta, tuple):
            H += np.broadcast_to(sol.theta[1], sol.x.shape)[S] * np.eye(S.size)
    return S, s, H


def lam1_of(theta):
    return theta[0] if isinstance(theta, tuple) else theta


# --- solvers ---
@given(instance=sparse_instances("lasso"))
def test_lasso_solution_is_the_closed_form_on_its_support(instance):
    problem, lam = instance
    sol = problem.solve(lam)
    S, s, H = closed_form(problem, sol)
    X, y, n = problem.design.X, problem.y, problem.y.shape[0]
    lam_v = np.broadcast_to(lam, sol.x.shape)
    exact = np.linalg.solve(H, X[:, S].T @ y / n - lam_v[S] * s)
    # Polished on its support: round-off of a well-conditioned k x k solve.
    np.testing.assert_allclose(sol.x[S], exact, rtol=1e-9, atol=1e-12)
    corr = X.T @ (y - X @ sol.x) / n                      # KKT off the support
    off = np.setdiff1d(np.arange(sol.x.size), S)
    assert np.all(np.abs(corr[off]) < lam_v[off])
    assert sol.info["gap"] <= 1e-12
    np.testing.assert_array_equal(sol.info["support"], S)
    np.testing.assert_array_equal(sol.info["signs"], s)


@given(instance=sparse_instances("lasso", per_feature=False))
def test_lasso_matches_scikit_learn(instance):
    from sklearn.linear_model import Lasso as SkLasso

    problem, lam = instance
    sk = SkLasso(alpha=float(lam), fit_intercept=False, tol=1e-14, max_iter=1_000_000)
    sk.fit(problem.design.X, problem.y)
    x = problem.solve(lam).x
    # sklearn stops on a duality gap of 1e-14 ||y||^2/n: its coefficients are ~1e-7 off.
    np.testing.assert_allclose(x, sk.coef_, rtol=1e-6, atol=1e-6 * np.abs(x).max())
    np.testing.assert_array_equal(np.sign(x), np.sign(np.round(sk.coef_, 10)))


@given(instance=sparse_instances("elastic_net", per_feature=False))
def test_elastic_net_matches_scikit_learn(instance):
    from sklearn.linear_model import ElasticNet as SkElasticNet

    problem, (lam1, lam2) = instance
    alpha = float(lam1 + lam2)
    sk = SkElasticNet(alpha=alpha, l1_ratio=float(lam1) / alpha, fit_intercept=False,
                      tol=1e-14, max_iter=1_000_000).fit(problem.design.X, problem.y)
    x = problem.solve((lam1, lam2)).x
    np.testing.assert_allclose(x, sk.coef_, rtol=1e-6, atol=1e-6 * np.abs(x).max())


@given(instance=sparse_instances("lasso", sparse=True))
def test_sparse_design_equals_dense(instance):
    problem, lam = instance
    dense = bl.problems.Lasso(problem.design.X.toarray(), problem.y)
    a, b = problem.solve(lam), dense.solve(lam)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-10, atol=1e-13)
    v = np.linspace(-1, 1, a.x.size)
    for strategy in (PS, bl.strategies.FixedPoint()):
        np.testing.assert_allclose(bl.vjp(problem, lam, v, strategy),
                                   bl.vjp(dense, lam, v, strategy), rtol=1e-8, atol=1e-12)


def test_sparse_logistic_and_elastic_net_equal_dense():
    X, score = regression_data(40, 15, seed=3, noise=1.0)
    X[np.abs(X) < 0.7] = 0.0
    y = np.where(score > 0, 1.0, -1.0)
    for make, theta in ((lambda A: bl.problems.LogisticRegression(A, y, penalty="l1"), 0.02),
                        (lambda A: bl.problems.ElasticNet(A, score), (0.05, 0.1))):
        a = make(scipy.sparse.csr_matrix(X)).solve(theta)
        b = make(X).solve(theta)
        np.testing.assert_allclose(a.x, b.x, rtol=1e-10, atol=1e-13)


def test_torch_maps_agree_with_the_solver():
    import torch

    for problem, theta in (
            (bl.problems.Lasso(*regression_data(30, 8, seed=2)), np.asarray(0.1)),
            (bl.problems.ElasticNet(*regression_data(30, 8, seed=2)), (0.1, 0.3)),
            (bl.problems.LogisticRegression(regression_data(30, 8, seed=2)[0],
                                            np.sign(regression_data(30, 8, seed=2)[1]),
                                            penalty="l1"), np.asarray(0.02))):
        sol = problem.solve(theta)
        x = torch.tensor(sol.x)
        t = tuple(torch.tensor(np.asarray(p, float)) for p in bl._types.as_tuple(theta))
        t = t if isinstance(theta, tuple) else t[0]
        # x* is the fixed point of the proximal-gradient step, to round-off.
        np.testing.assert_allclose(problem.step(x, t).numpy(), sol.x, atol=1e-12)
        # Energy at x* is below the energy at nearby points.
        e = float(problem.energy(x, t))
        for k in range(3):
            dx = torch.tensor(np.random.default_rng(k).standard_normal(sol.x.size)) * 1e-3
            assert float(problem.energy(x + dx, t)) > e


def test_non_convergence_warns():
    problem = bl.problems.Lasso(*regression_data(30, 20, seed=0), max_epochs=1)
    with pytest.warns(bl.ConvergenceWarning, match="max_iter"):
        sol = problem.solve(problem.lam_max() / 100)
    assert not sol.converged


# --- derivatives on the support ---
@pytest.mark.parametrize("kind", ["lasso", "elastic_net", "logistic_l1"])
@given(data=st.data())
def test_vjp_and_jvp_match_the_closed_form(kind, data):
    problem, theta = data.draw(sparse_instances(kind, max_features=10))
    sol = problem.solve(theta)
    S, s, H = closed_form(problem, sol)
    dxs_dlam1 = -np.linalg.solve(H, np.diag(s))                 # column j: d x_S / d lam1_S[j]
    v = np.random.default_rng(0).standard_normal(sol.x.size)
    g = bl.vjp(problem, theta, v, PS)
    g1 = np.zeros(sol.x.size)
    g1[S] = dxs_dlam1.T @ v[S]
    lam1 = lam1_of(theta)
    expected = g1.sum() if np.ndim(lam1) == 0 else g1
    # Both sides solve the same well-conditioned k x k system: round-off only.
    np.testing.assert_allclose(lam1_of(g), expected, rtol=1e-8, atol=1e-10 * np.abs(g1).max())
    if kind == "elastic_net":
        g2 = -np.linalg.solve(H, sol.x[S]) @ v[S]
        np.testing.assert_allclose(g[1], g2, rtol=1e-8, atol=1e-12)
    # Forward mode along dtheta = theta: the same derivative, contracted the other way.
    dx = bl.jvp(problem, theta, theta, PS)
    lam_v = np.broadcast_to(lam1, sol.x.shape)
    expected_dx = dxs_dlam1 @ lam_v[S]
    if kind == "elastic_net":
        expected_dx += -np.linalg.solve(H, sol.x[S]) * float(theta[1])
    np.testing.assert_allclose(dx[S], expected_dx, rtol=1e-8, atol=1e-10 * np.abs(dx).max())
    assert np.all(np.delete(dx, S) == 0)


@pytest.mark.parametrize("kind", ["lasso", "elastic_net"])
@given(data=st.data())
def test_the_polished_solution_carries_its_restricted_hessian(kind, data):
    """info["hessian"] is X_S^T X_S / n + diag(lam2_S); the VJP gives the same without it."""
    sparse = data.draw(st.booleans())
    problem, theta = data.draw(sparse_instances(kind, max_features=10, sparse=sparse))
    sol = problem.solve(theta)
    assert sol.info["polished"]        # stable instances are polished on their support
    S, _, H = closed_form(problem, sol)
    # Both are k x k Gram matrices of the same columns: round-off of n-term sums.
    np.testing.assert_allclose(sol.info["hessian"], H, rtol=1e-12, atol=1e-14 * np.abs(H).max())
    v = np.random.default_rng(1).standard_normal(sol.x.size)
    info = {k: a for k, a in sol.info.items() if k != "hessian"}
    recomputed = bl.Solution(sol.x, sol.theta, sol.n_iter, sol.converged, info)
    for a, b in zip(bl._types.as_tuple(PS.vjp(problem, sol, v)[0]),
                    bl._types.as_tuple(PS.vjp(problem, recomputed, v)[0])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * np.abs(b).max())


def test_design_columns_are_those_of_x():
    X, _ = regression_data(12, 7, seed=5)
    X[np.abs(X) < 0.5] = 0.0
    cols = np.array([5, 0, 3])
    for given_X in (X, scipy.sparse.csc_matrix(X)):
        np.testing.assert_array_equal(bl.problems.Lasso(given_X, X[:, 0]).design.columns(cols),
                                      X[:, cols])


@given(instance=sparse_instances("lasso", max_features=8, per_feature=False))
def test_fixed_point_and_unroll_converge_to_it(instance):
    problem, lam = instance
    sol = problem.solve(lam)
    S, _, H = closed_form(problem, sol)
    v = np.random.default_rng(1).standard_normal(sol.x.size)
    exact = bl.vjp(problem, lam, v, PS)
    fixed = bl.vjp(problem, lam, v, bl.strategies.FixedPoint(tol=1e-13))
    np.testing.assert_allclose(fixed, exact, rtol=1e-8, atol=1e-10)
    # On the support the step contracts at rho = 1 - lambda_min(H) / L: take enough steps
    # from x* for rho^n < 1e-10 and compare; the error is geometric in the steps.
    L = problem.design.sigma_max() ** 2 / problem.y.shape[0]
    rho = 1 - np.linalg.eigvalsh(H)[0] / L
    n_steps = int(np.ceil(np.log(1e-10) / np.log(rho))) if rho > 0 else 1
    if n_steps > 5000:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bl.ConvergenceWarning)    # a budget study
        errors = [abs(float(bl.vjp(problem, lam, v, bl.strategies.Unroll(n_steps=k,
                                                                         start="solution")))
                      - float(exact)) for k in (max(1, n_steps // 4), n_steps)]
    assert errors[1] <= 1e-7 * max(abs(float(exact)), 1e-3)
    assert errors[1] <= errors[0] + 1e-12


# --- bad input ---
@pytest.mark.parametrize("bad, match", [
    (lambda X, y: bl.problems.Lasso(X, y).solve(0.0), "lam must be > 0"),
    (lambda X, y: bl.problems.Lasso(X, y).solve(-1.0), "lam must be >= 0"),
    (lambda X, y: bl.problems.Lasso(X, y).solve(np.ones(3)), r"shape \(\) or \(5,\)"),
    (lambda X, y: bl.problems.ElasticNet(X, y).solve(0.1), r"theta = \(lam1, lam2\)"),
    (lambda X, y: bl.problems.Lasso(X, y[:-1]), "y must have shape"),
    (lambda X, y: bl.problems.Lasso(np.where(X > 1, np.nan, X), y), "X contains NaN"),
    (lambda X, y: bl.problems.LogisticRegression(scipy.sparse.csr_matrix(X), np.sign(y)),
     "dense X"),
    (lambda X, y: bl.problems.LogisticRegression(X, np.sign(y)).lam_max(), "penalty='l1'"),
    (lambda X, y: bl.problems.LogisticRegression(X, y, penalty="l1"), r"\{-1, \+1\}"),
])
def test_bad_input_is_named(bad, match):
    X, y = regression_data(20, 5, seed=0)
    with pytest.raises(ValueError, match=match):
        bad(X, y)


def test_strided_data_reuse_the_kernel_compiled_for_contiguous_data():
    """A column of a matrix as y, X in Fortran order: no second specialization of the kernel
    (another numba compile, seconds, and its performance warnings)."""
    from bilevel.solvers.coordinate_descent import enet_cd

    X, y = regression_data(40, 6, seed=3)
    bl.problems.Lasso(X, y).solve(0.05)
    compiled = set(enet_cd.signatures)
    strided_y = np.stack([y, -y], axis=1)[:, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = bl.problems.Lasso(np.asfortranarray(X), strided_y).solve(0.05).x
    assert set(enet_cd.signatures) == compiled
    np.testing.assert_array_equal(x, bl.problems.Lasso(X, y).solve(0.05).x)
