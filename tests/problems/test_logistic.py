"""LogisticRegression (l2, l1): solvers against scikit-learn, hypergradients, the torch view."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given

import bilevel as bl
from bilevel.datasets import load, split_standardize
from bilevel.testing import check_vjp, logistic_instances, sparse_instances


@pytest.fixture(scope="module")
def breast_cancer():
    X, y = load("breast_cancer")
    X_train, y_train, X_val, y_val = split_standardize(X, y)
    return (bl.problems.LogisticRegression(X_train, y_train),
            bl.losses.LogisticLoss(X_val, y_val))


def test_solution_matches_scikit_learn(breast_cancer):
    from sklearn.linear_model import LogisticRegression as SkLogistic

    problem, _ = breast_cancer
    lam = 0.01
    n = problem.X.shape[0]
    # sklearn minimizes C sum log(1 + exp(-y Xw)) + ||w||^2 / 2, i.e. ours with C = 1/(n lam).
    sk = SkLogistic(C=1 / (n * lam), fit_intercept=False, tol=1e-12, max_iter=10000,
                    solver="newton-cholesky").fit(problem.X, problem.y)
    sol = problem.solve(lam)
    assert sol.converged and sol.info["residual"] <= 1e-10
    # Both Newton solvers stop at gradients ~1e-12: agreement to 1e-8 is solver tolerance.
    np.testing.assert_allclose(sol.x, sk.coef_.ravel(), rtol=1e-8, atol=1e-10)


@given(instance=logistic_instances())
def test_implicit_and_fixed_point_match_finite_differences(instance):
    problem, lam = instance
    # FD: 4th order, Newton solves to ~1e-15, h ~ 7e-4 lam: error ~1e-10; 1e-7 leaves margin.
    for strategy in ("implicit", bl.strategies.Implicit(hvp="autograd", linear_solver="cg",
                                                        tol=1e-12),
                     bl.strategies.FixedPoint(tol=1e-12)):
        check_vjp(problem, lam, strategy, rtol=1e-7)


def test_breast_cancer_hypergradient(breast_cancer):
    problem, loss = breast_cancer
    lam = 0.01
    _, g_implicit = bl.hypergradient(problem, loss, lam, "implicit")
    _, g_fd = bl.hypergradient(problem, loss, lam, "finite_difference")
    _, g_fd2 = bl.hypergradient(problem, loss, lam, bl.strategies.FiniteDifference(order=2))
    assert float(g_implicit) == pytest.approx(float(g_fd), rel=1e-8)
    # Second-order differences are coarser (h ~ 6e-6 lam, error ~ h^2 + 1e-16/h): 1e-5.
    assert float(g_implicit) == pytest.approx(float(g_fd2), rel=1e-5)


def test_torch_view_agrees_with_numba(breast_cancer):
    problem, _ = breast_cancer
    lam = np.asarray(0.05)
    sol = problem.solve(lam)
    x_t, lam_t = torch.from_numpy(sol.x), torch.tensor(0.05, dtype=torch.float64)
    residual = problem.optimality(x_t, lam_t).abs().max().item()
    assert residual <= 1e-10                          # the solver's tolerance
    from bilevel.solvers.logistic import logistic_l2_energy

    assert problem.energy(x_t, lam_t).item() == pytest.approx(
        logistic_l2_energy(problem.X, problem.y, 0.05, sol.x), rel=1e-14)
    H_torch = torch.autograd.functional.hessian(lambda x: problem.energy(x, lam_t), x_t)
    np.testing.assert_allclose(problem.hessian(sol), H_torch.numpy(), rtol=1e-12, atol=1e-14)
    step = problem.step(x_t, lam_t).numpy()
    np.testing.assert_allclose(step, sol.x, atol=1e-10)   # x* is the step map's fixed point


def test_value_gradient_matches_finite_differences(breast_cancer):
    problem, _ = breast_cancer
    lam, h = 0.02, 1e-5
    value, grad = bl.value_gradient(problem, lam)
    energy = lambda t: problem.energy(torch.from_numpy(problem.solve(t).x),  # noqa: E731
                                      torch.tensor(t, dtype=torch.float64)).item()
    assert value == pytest.approx(energy(lam), rel=1e-14)
    # Danskin: dp/dlam = ||x*||^2 / 2; central difference error ~h^2 (solves to 1e-14).
    fd = (energy(lam + h) - energy(lam - h)) / (2 * h)
    assert float(grad) == pytest.approx(fd, rel=1e-6)
    assert float(grad) == pytest.approx(0.5 * problem.solve(lam).x @ problem.solve(lam).x,
                                        rel=1e-12)


# --- the l1 penalty ---
@given(instance=sparse_instances("logistic_l1", max_features=8))
def test_l1_logistic_meets_kkt_and_matches_scikit_learn(instance):
    from sklearn.linear_model import LogisticRegression as SkLogistic

    problem, lam = instance
    sol = problem.solve(lam)
    X, y, n = problem.design.X, problem.y, problem.y.shape[0]
    corr = X.T @ (y / (1 + np.exp(y * (X @ sol.x)))) / n       # -grad of the data term
    lam_v = np.broadcast_to(lam, sol.x.shape)
    S = np.flatnonzero(sol.x)
    # Newton-polished on the support: stationarity to round-off.
    np.testing.assert_allclose(corr[S], lam_v[S] * np.sign(sol.x[S]), rtol=1e-9, atol=1e-13)
    assert np.all(np.abs(np.delete(corr, S)) < np.delete(lam_v, S))
    if np.ndim(lam) == 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                   # sklearn's own deprecations
            sk = SkLogistic(penalty="l1", C=1 / (n * float(lam)), solver="liblinear",
                            fit_intercept=False, tol=1e-12, max_iter=100_000).fit(X, y)
        # liblinear's stopping rule is loose relative to ours: 1e-5 of the scale.
        np.testing.assert_allclose(sol.x, sk.coef_.ravel(), atol=1e-5 * np.abs(sol.x).max())


def test_separable_data_at_lam_zero_report_no_minimizer():
    """On separable data E(t x) decreases in t > 0 at lam = 0: no point is a minimizer."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3))
    y = np.sign(X @ np.array([1.0, 2.0, -1.0]))
    with pytest.warns(bl.ConvergenceWarning, match="linearly separable.*use lam > 0"):
        sol = bl.problems.LogisticRegression(X, y).solve(0.0)
    assert not sol.converged
    assert np.all(y * (X @ sol.x) > 0)            # the certificate: x separates the data
    flipped = y.copy()
    flipped[:5] *= -1                             # not separable: a minimizer exists
    sol = bl.problems.LogisticRegression(X, flipped).solve(0.0)
    assert sol.converged and "failure" not in sol.info
