"""Unrolling's memory grows with the steps it differentiates; implicit's does not
grow with the inner solver's iterations (measured: tracemalloc + autograd graph bytes)."""

import warnings

import numpy as np

import bilevel as bl
from bilevel._memory import measure_memory
from bilevel.testing import regression_data


def peak(strategy, problem, sol, v):
    strategy.vjp(problem, sol, v)          # warm: first calls allocate lazily-built caches
    with measure_memory() as mem:
        strategy.vjp(problem, sol, v)
    return mem.peak


def test_unroll_memory_grows_linearly_implicit_stays_flat():
    X, y = regression_data(200, 50, seed=0)
    problem = bl.problems.LogisticRegression(np.ascontiguousarray(X), np.sign(y))
    v = np.ones(50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bl.ConvergenceWarning)   # fixed budgets short of x*
        unroll = {n: peak(bl.strategies.Unroll(n_steps=n), problem, problem.solve(0.1), v)
                  for n in (50, 100, 200)}
    # Each differentiated step saves the same tensors: memory is affine in the steps, with a
    # constant per-step cost (the data X, saved once, is the intercept).
    per_step = [(unroll[100] - unroll[50]) / 50, (unroll[200] - unroll[100]) / 100]
    assert 0.8 < per_step[1] / per_step[0] < 1.25
    assert per_step[0] * 200 > unroll[50]
    # Implicit at solutions reached after few or many inner iterations (loose or tight tol).
    implicit = []
    for tol, max_iter in ((1e-4, 3), (1e-12, 100)):
        loose = bl.problems.LogisticRegression(problem.X, problem.y, tol=tol, max_iter=max_iter)
        sol = loose.solve(0.1)
        assert sol.converged
        implicit.append(peak(bl.strategies.Implicit(hvp="autograd", linear_solver="cg"),
                             loose, sol, v))
    assert abs(implicit[1] - implicit[0]) <= 0.1 * implicit[0]
    assert max(implicit) < unroll[200] / 4
