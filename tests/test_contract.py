"""The API promises, walked over the registry: every applicable (problem, strategy) pair
returns theta's structure, float64, finite, and agrees with the exact VJP (implicit
differentiation, or on the active manifold for non-smooth problems)."""

import inspect

import numpy as np
import pytest

import bilevel as bl
from bilevel._registry import PROBLEMS, STRATEGIES, applicable_strategies
from bilevel.testing import regression_data

X, Y = regression_data(30, 3, seed=4)


def quadratic(x, t):
    return 0.5 * (x @ x) * t[0] - t[1] @ x + 0.1 * (x**4).sum()


INSTANCES = {
    "ridge-scalar": (bl.problems.Ridge(X, Y), np.asarray(0.2)),
    "ridge-vector": (bl.problems.Ridge(X, Y), np.array([0.1, 0.2, 0.3])),
    "logistic": (bl.problems.LogisticRegression(X, np.sign(Y)), np.asarray(0.05)),
    "logistic-l1": (bl.problems.LogisticRegression(X, np.sign(Y), penalty="l1"),
                    np.asarray(0.02)),
    "lasso-scalar": (bl.problems.Lasso(X, Y), np.asarray(0.1)),
    "lasso-vector": (bl.problems.Lasso(X, Y), np.array([0.1, 0.3, 0.05])),
    "elastic_net-tuple": (bl.problems.ElasticNet(X, Y), (np.asarray(0.1), np.asarray(0.2))),
    "tv1d-l1": (bl.problems.TV1D(1), (np.array([0.0, 2.0, 3.0]), np.asarray(0.2))),
    "tv1d-l2": (bl.problems.TV1D(2, "l2"), (np.array([0.0, 2.0, 2.3]), np.asarray(0.3))),
    # tol 1e-12 (Newton-polished): finite differences divide solver error by h ~ 7e-4.
    "smooth-tuple": (bl.problems.Smooth(quadratic, np.zeros(3), step_size=0.2, tol=1e-12),
                     (np.asarray(2.0), np.array([1.0, -1.0, 0.5]))),
    # A unique, well-separated optimal partition ({0, 0.1} | {2}); an image of 1 x 3 pixels
    # away from the bin edges: both maps are linear near theta.
    "piecewise_polynomial-histogram": (bl.problems.PiecewisePolynomial(2, 0),
                                       np.array([0.0, 0.1, 2.0])),
    "connected_components-image": (bl.problems.ConnectedComponents(4),
                                   np.array([[0.12, 0.15, 0.81]])),
    # Constrained problems: active inequalities with positive multipliers (no kinks).
    "constrained-sphere": (bl.problems.Constrained(
        lambda x, t: ((x - t) ** 2).sum(), eq=lambda x, t: (x * x).sum() - 1.0,
        ineq=lambda x, t: x[:1] - 0.2, x0=np.array([0.0, 1.0, 0.0])),
        np.array([1.0, 0.5, 0.2])),
    "equality_constrained_ls-moment": (bl.problems.EqualityConstrainedLS(
        *bl.problems.moment_matrix([-0.1, 0.1, 0.2], 0, 2)), np.array([0.3, 0.5, 0.1])),
    "qp-c": (bl.problems.QP(np.diag([2.0, 1.0, 1.5]), np.array([[1.0, 1.0, 0.0],
                                                                 [0.0, -1.0, 1.0]]),
                            np.array([0.5, 0.2])), np.array([-2.0, -1.0, 0.5])),
    "qp-tuple": (bl.problems.QP(np.diag([2.0, 1.0, 1.5]), np.array([[1.0, 1.0, 0.0],
                                                                     [0.0, -1.0, 1.0]])),
                 (np.array([-2.0, -1.0, 0.5]), np.array([0.5, 0.2]))),
    # Bregman problems: supports with clear margins; a game with a fully mixed equilibrium.
    "simplex_ls-b": (bl.problems.SimplexLeastSquares(np.array([[1.0, 0.2, 0.1], [0.3, 1.0, -0.2],
                                                               [0.1, 0.4, 1.0], [0.5, 0.0, 0.3]])),
                     np.array([1.0, 0.6, -0.5, 0.2])),
    "segmentation-pixels": (bl.problems.MultiLabelSegmentation(mu=0.2, alpha=0.5),
                            np.array([[[0.0, 0.3, 2.0], [0.2, 0.1, 2.0]]])),
    "matrix_game-A": (bl.problems.MatrixGame(), np.array([[2.0, -1.0], [-1.0, 1.0]])),
    "lad-u": (bl.problems.LeastAbsoluteDeviation(np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0],
                                                           [1.0, 3.0], [1.0, 4.0]])),
              np.array([0.1, 1.3, 1.9, 3.4, 3.8])),
    "linear_program-tuple": (bl.problems.LinearProgram(np.array([[1.0, 1.0, 1.0, 0.0],
                                                                 [1.0, -1.0, 0.0, 1.0]])),
                             (np.array([2.0, 0.5]), np.array([1.0, 2.0, 3.0, 2.5]))),
    # Pooling rows with an outlier, residuals away from the kinks; projections away from
    # kinks (support {0, 1} of the l1 ball, margin 0.3); softmax is smooth everywhere.
    "robust_pooling-pseudo_huber": (bl.problems.RobustPooling("pseudo_huber", 1.0),
                                    np.array([[0.0, 0.4, 3.0], [1.0, -0.5, 0.2]])),
    "robust_pooling-welsch": (bl.problems.RobustPooling("welsch", 1.0),
                              np.array([[0.0, 0.4, 3.0], [1.0, -0.5, 0.2]])),
    "projection-l1_ball": (bl.problems.Projection("l1_ball", 1.0), np.array([1.0, 0.8, -0.1])),
    "projection-l2_sphere": (bl.problems.Projection("l2_sphere", 2.0),
                             np.array([1.0, -2.0, 0.5])),
    "entropic_simplex-z": (bl.problems.EntropicSimplex(), np.array([0.5, -1.0, 2.0])),
    # tol 1e-12: finite differences (the reference here) divide solver error by h.
    "tv2d-identity": (bl.problems.TV2D(tol=1e-12, max_iter=100000),
                      (np.array([[0.0, 0.1, 1.0], [0.1, 0.9, 1.2]]), np.asarray(0.05))),
    "nnls-b": (bl.problems.NNLS(np.array([[1.0, 0.2, 0.1], [0.3, 1.0, -0.2], [0.1, 0.4, 1.0],
                                          [0.5, 0.0, 0.3]])), np.array([1.0, -1.0, 0.5, 0.2])),
}
PAIRS = [(k, s) for k, (p, _) in INSTANCES.items() for s in applicable_strategies(p)]


def test_registry_covers_every_class():
    assert set(PROBLEMS) == {"ridge", "logistic", "smooth", "lasso", "elastic_net", "tv1d", "tv2d",
                              "piecewise_polynomial", "connected_components",
                              "constrained", "equality_constrained_ls", "qp", "nnls",
                              "simplex_ls", "segmentation", "matrix_game", "lad",
                              "linear_program", "robust_pooling", "projection",
                              "entropic_simplex"}
    assert set(STRATEGIES) == {"analytic", "implicit", "fixed_point", "unroll",
                               "partial_smoothness", "finite_difference",
                               "straight_through", "bregman", "value_function"}
    assert {k.split("-")[0] for k in INSTANCES} == set(PROBLEMS)


@pytest.mark.parametrize("key, name", PAIRS)
def test_vjp_contract_and_agreement_with_implicit(key, name):
    problem, theta = INSTANCES[key]
    if name == "value_function":
        pytest.skip("value_function differentiates the optimal value p(theta), not x*: its "
                    "vjp raises; tests/test_value_function.py checks bl.value_gradient")
    shape = problem.solve(theta).x.shape
    v = np.linspace(-1, 1, int(np.prod(shape))).reshape(shape)
    strategy = STRATEGIES[name]() if name != "unroll" else bl.strategies.Unroll(n_steps=2000)
    # The disc mirror of isotropic TV has a sublinear tail (tests/test_bregman.py measures
    # it): the contract (structure, dtype, finite) on a step budget, without agreement.
    slow_tail = (key, name) == ("tv2d-identity", "bregman")
    if slow_tail:
        strategy = bl.strategies.BregmanUnroll(n_steps=2000, tol=None)
    g, info = bl.vjp(problem, theta, v, strategy, return_info=True)
    exact = ("implicit" if {"optimality", "constraints"} & problem.capabilities
             else "partial_smoothness" if "manifold" in problem.capabilities
             else "analytic" if "analytic_vjp" in problem.capabilities
             else "finite_difference")
    g_ref = bl.vjp(problem, theta, v, exact)
    assert isinstance(g, tuple) == isinstance(theta, tuple)
    for part, ref, t in zip(*(x if isinstance(x, tuple) else (x,) for x in (g, g_ref, theta))):
        assert part.shape == np.shape(t) and part.dtype == np.float64
        assert np.all(np.isfinite(part))
        if name == "straight_through" or slow_tail:
            continue    # the identity backward is biased by design: no agreement to check
        # Exact strategies to round-off; FD to ~1e-9; unroll after 2000 contracting steps.
        np.testing.assert_allclose(part, ref, rtol=1e-6, atol=1e-10)
    assert info["strategy"] == name and "time" in info and "iterations" in info


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_not_applicable_text(name):
    class Empty(bl.problems.Problem):
        name = "empty"

    cls = STRATEGIES[name]
    if not cls.requires:
        pytest.skip(f"{name} requires nothing")
    with pytest.raises(bl.NotApplicable) as exc:
        cls().vjp(Empty(), None, None)
    text = str(exc.value)
    assert name in text and all(c in text for c in cls.requires)
    assert "finite_difference" in text                  # always names what would work


def test_public_names_are_documented():
    modules = [bl, bl.problems, bl.strategies, bl.losses, bl.testing]
    for module in modules:
        assert module.__doc__, module.__name__
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_docs_matrix_is_generated_from_the_registry():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "docs" / "make_matrix.py"
    out = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, f"docs/matrix.md is stale: run python {script}\n{out.stdout}"


def test_check_vjp_fails_on_a_wrong_strategy():
    from bilevel.testing import check_vjp

    problem, lam = INSTANCES["logistic"]
    with pytest.raises(AssertionError, match="unroll VJP differs from finite_difference"):
        check_vjp(problem, lam, bl.strategies.Unroll(n_steps=1))
    assert check_vjp(problem, lam, "implicit", rtol=1e-7) < 1e-7
