"""Public checks for hypergradients: :func:`check_vjp` and hypothesis instance builders.

Use them to test your own energies::

    from bilevel.testing import check_vjp
    check_vjp(my_problem, theta, "implicit", rtol=1e-6)

The builders need the ``test`` extra (hypothesis); they are imported lazily.
"""

from __future__ import annotations

import numpy as np

from bilevel._registry import get_strategy
from bilevel._types import as_tuple
from bilevel.datasets import regression_data

__all__ = ["check_vjp", "logistic_instances", "regression_data", "ridge_instances",
           "sparse_instances"]


def check_vjp(problem, theta, strategy, reference="finite_difference", *, rtol=1e-6,
              atol=0.0, n_directions=3, seed=0):
    """Assert that ``strategy``'s VJP matches ``reference``'s on random directions.

    Parameters
    ----------
    problem : Problem
    theta : ndarray or tuple of ndarray
    strategy, reference : Strategy or str
        The strategy under test and the one trusted (default: fourth-order finite
        differences).
    rtol, atol : float
        ``||g - g_ref|| <= atol + rtol ||g_ref||`` per direction (Euclidean over theta).
    n_directions : int
        Random Gaussian directions ``v`` drawn in x-space.
    seed : int
        Seed of the directions.

    Returns
    -------
    float
        The largest relative error seen.

    Raises
    ------
    AssertionError
        Naming the direction, both gradients and the error.
    """
    if not (np.isfinite(rtol) and rtol >= 0 and np.isfinite(atol) and atol >= 0
            and rtol + atol > 0):
        raise ValueError(f"rtol and atol must be finite, >= 0 and not both 0, got rtol={rtol}, "
                         f"atol={atol}")
    if isinstance(n_directions, bool) or not isinstance(n_directions, (int, np.integer)) \
            or n_directions < 1:
        raise ValueError(f"n_directions must be an integer >= 1 (checking no direction checks "
                         f"nothing), got {n_directions!r}")
    strat = get_strategy(strategy, problem)
    ref = get_strategy(reference, problem)
    sol = problem.solve(theta)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for k in range(n_directions):
        v = rng.standard_normal(sol.x.shape)
        g = np.concatenate([np.ravel(p) for p in as_tuple(strat.vjp(problem, sol, v)[0])])
        g_ref = np.concatenate([np.ravel(p) for p in as_tuple(ref.vjp(problem, sol, v)[0])])
        err = np.linalg.norm(g - g_ref)
        scale = np.linalg.norm(g_ref)
        worst = max(worst, err / max(scale, 1e-300))
        if not err <= atol + rtol * scale:
            raise AssertionError(
                f"{strat.name} VJP differs from {ref.name} on direction {k}: "
                f"|g - g_ref| = {err:.3e} > atol + rtol |g_ref| = {atol + rtol * scale:.3e}\n"
                f"  {strat.name}: {g}\n  {ref.name}: {g_ref}")
    return worst


def _sizes(st, max_features):
    return st.integers(2, max_features).flatmap(
        lambda p: st.tuples(st.integers(p + 1, 4 * p + 10), st.just(p)))


def ridge_instances(max_features=8, per_feature=None):
    """Hypothesis strategy drawing ``(Ridge problem, lam)``.

    ``lam`` is log-uniform in [1e-3, 10] (a scalar, or per feature when ``per_feature`` is
    True; either when None), so that the Hessian's condition number stays below ~1e4 and
    the hypergradients are well defined to ~1e-12.
    """
    from hypothesis import strategies as st

    from bilevel.problems import Ridge

    def build(args):
        (n, p), seed, kind, log_lams = args
        X, y = regression_data(n, p, seed=seed)
        lam = 10.0 ** np.asarray(log_lams[:p]) if kind else np.asarray(10.0 ** log_lams[0])
        return Ridge(X, y), lam

    kinds = st.booleans() if per_feature is None else st.just(per_feature)
    return st.tuples(_sizes(st, max_features), st.integers(0, 2**31 - 1), kinds,
                     st.lists(st.floats(-3, 1), min_size=max_features,
                              max_size=max_features)).map(build)


def logistic_instances(max_features=6):
    """Hypothesis strategy drawing ``(LogisticRegression problem, lam)``, lam in [1e-2, 1]."""
    from hypothesis import strategies as st

    from bilevel.problems import LogisticRegression

    def build(args):
        (n, p), seed, log_lam = args
        X, score = regression_data(n, p, seed=seed, noise=1.0)
        y = np.where(score > 0, 1.0, -1.0)
        return LogisticRegression(X, y), np.asarray(10.0 ** log_lam)

    return st.tuples(_sizes(st, max_features), st.integers(0, 2**31 - 1),
                     st.floats(-2, 0)).map(build)


def _stable(problem, theta, min_margin=1e-3, min_active=1e-3):
    """Whether ``x*`` has a support that is non-degenerate and away from a transition."""
    from bilevel._types import SingularSystemError

    sol = problem.solve(theta)
    if not sol.converged or not sol.info["support"].size:
        return False
    try:
        manifold = problem.capabilities.manifold(sol)
        manifold.solve(np.zeros(manifold.dim))
    except SingularSystemError:
        return False
    active = np.abs(sol.x[sol.info["support"]])
    return manifold.margin > min_margin and active.min() > min_active * active.max()


def sparse_instances(kind="lasso", max_features=12, per_feature=None, sparse=False):
    """Hypothesis strategy drawing ``(problem, theta)`` for an l1-penalized model.

    ``kind`` is "lasso", "elastic_net" or "logistic_l1". ``lam`` is a fraction in
    [0.05, 0.8] of ``lam_max`` (per feature when ``per_feature``, drawn when None); only
    instances whose support is stable are kept: non-degeneracy margin > 1e-3, active
    coefficients above 1e-3 of the largest, and a positive definite restricted Hessian.
    ``sparse`` passes X as a ``scipy.sparse`` CSC matrix with about half its entries zero.
    """
    import scipy.sparse
    from hypothesis import strategies as st

    from bilevel.problems import ElasticNet, Lasso, LogisticRegression

    if kind not in ("lasso", "elastic_net", "logistic_l1"):
        raise ValueError(f"kind must be 'lasso', 'elastic_net' or 'logistic_l1', got {kind!r}")

    def build(args):
        p, n, seed, weighted, fracs = args
        X, score = regression_data(n, p, seed=seed, noise=1.0)
        if sparse:
            X = scipy.sparse.csc_matrix(X * (np.random.default_rng(seed).random(X.shape) < 0.5))
        if kind == "logistic_l1":
            labels = np.where(score > 0, 1.0, -1.0)
            labels[0] = -labels[1]                  # both classes, so that lam_max > 0
            problem = LogisticRegression(X, labels, penalty="l1")
        elif kind == "elastic_net":
            problem = ElasticNet(X, score)
        else:
            problem = Lasso(X, score)
        lam = problem.lam_max() * (np.asarray(fracs[:p]) if weighted else np.asarray(fracs[0]))
        theta = (lam, np.asarray(0.1 * fracs[-1])) if kind == "elastic_net" else lam
        return problem, theta

    kinds = st.booleans() if per_feature is None else st.just(per_feature)
    sizes = st.integers(2, max_features).flatmap(
        lambda p: st.tuples(st.just(p), st.integers(max(4, p // 2), 3 * p + 10)))
    return st.tuples(sizes, st.integers(0, 2**31 - 1), kinds,
                     st.lists(st.floats(0.05, 0.8), min_size=max_features + 1,
                              max_size=max_features + 1)).map(
        lambda a: (a[0][0], a[0][1], a[1], a[2], a[3])).map(build).filter(
        lambda inst: _stable(*inst))
