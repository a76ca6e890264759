"""PartialSmoothness: finite differences, degeneracy warnings, pinv on a collinear support."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given

import bilevel as bl
from bilevel.testing import check_vjp, regression_data, sparse_instances

PS = bl.strategies.PartialSmoothness()
PP = bl.problems.PiecewisePolynomial


@given(instance=sparse_instances("lasso"))
def test_partial_smoothness_matches_finite_differences(instance):
    problem, lam = instance
    # FD of a solver exact to round-off (polished), on a locally linear map: ~1e-9.
    check_vjp(problem, lam, PS, rtol=1e-7, atol=1e-9)


def test_collinear_support_raises_and_pinv_gives_the_prediction_gradient():
    X, y = regression_data(40, 6, seed=7)
    Xv, yv = regression_data(30, 6, seed=8)
    dup, dup_v = np.hstack([X, X[:, :1]]), np.hstack([Xv, Xv[:, :1]])
    problem, loss = bl.problems.Lasso(dup, y), bl.losses.SquaredError(dup_v, yv)
    lam = problem.lam_max() / 20
    x = problem.solve(lam).x        # cyclic CD puts the weight on the first copy; split it
    x[[0, 6]] = x[0] / 2
    assert np.count_nonzero(problem.solve(lam, init=x).x[[0, 6]]) == 2
    with pytest.raises(bl.SingularSystemError, match="pinv=True"):
        bl.hypergradient(problem, loss, lam, PS, init=x)
    # The duplicate column changes neither the predictions nor the validation loss's
    # gradient: the pseudo-inverse answer equals the gradient without the duplicate.
    # (lam per feature: a duplicated column at lam is one column at lam with weight 1.)
    _, g = bl.hypergradient(problem, loss, lam, bl.strategies.PartialSmoothness(pinv=True),
                            init=x)
    _, g_ref = bl.hypergradient(bl.problems.Lasso(X, y), bl.losses.SquaredError(Xv, yv),
                                lam, PS)
    np.testing.assert_allclose(g, g_ref, rtol=1e-8)


# --- degeneracy warnings ---
def test_degenerate_solution_warns_with_its_margin():
    problem = bl.problems.Lasso(*regression_data(30, 8, seed=2))
    lam = np.full(8, problem.lam_max() / 3)
    sol = problem.solve(lam)
    off = np.flatnonzero(sol.x == 0)
    assert off.size
    corr = problem.design.X.T @ (problem.y - problem.design.X @ sol.x) / 30
    j = off[np.argmax(np.abs(corr[off]))]
    lam[j] = abs(corr[j])          # the same solution, with feature j exactly at its kink
    with pytest.warns(bl.DegeneracyWarning, match=rf"margin .*coordinate {j}"):
        bl.vjp(problem, lam, np.ones(8), PS)
    with pytest.warns(bl.DegeneracyWarning):          # x* = 0 at lam_max: every margin 0
        bl.vjp(problem, problem.lam_max(), np.ones(8), PS)
    with warnings.catch_warnings():                   # no warning away from the kink
        warnings.simplefilter("error", bl.DegeneracyWarning)
        bl.vjp(problem, problem.lam_max() / 3, np.ones(8), PS)


def test_degenerate_merge_warns():
    prob = bl.problems.TV1D(1)
    s = np.array([0.0, 0.0, 1.0, 1.0])
    with pytest.warns(bl.DegeneracyWarning, match="jump set"):
        bl.vjp(prob, (s, 1.0), np.ones(4), "partial_smoothness")   # segments merge at lam=1
    with warnings.catch_warnings():
        warnings.simplefilter("error", bl.DegeneracyWarning)
        bl.vjp(prob, (s, 0.5), np.ones(4), "partial_smoothness")


def test_degenerate_partition_warns():
    prob = PP(2, 0)
    s = np.ones(6)                      # every split costs 0: no unique partition
    sol = prob.solve(s)
    assert sol.info["gap"] == 0.0 and sol.info["margin"] == 0.0
    with pytest.warns(bl.DegeneracyWarning, match="partition"):
        bl.vjp(prob, s, np.ones(6), "partial_smoothness")
    layer = bl.torch.Layer(prob, "analytic")
    y = layer(torch.ones(2, 6, dtype=torch.float64, requires_grad=True))
    with pytest.warns(bl.DegeneracyWarning, match="2 of 2"):
        y.sum().backward()
