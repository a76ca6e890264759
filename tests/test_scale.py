"""Scale laws: rescaling a problem's data rescales its solution and nothing else.

For every registered problem family with a scaling law, ``x*(c data) = c^k x*(data)`` for
``c`` from 1e-12 to 1e12 (24 orders of magnitude), with no ``ConvergenceWarning`` (pyproject
turns it into an error): the solvers' stopping rules are relative to the problem's own scale
(issue 17). Each family's law, and for the families without one the reason, is in
:data:`LAWS`; a family this module does not know is skipped with that reason, so that a new
family is listed here the day it is registered.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bilevel import problems as P
from bilevel import prox
from bilevel._registry import PROBLEMS

# Four scales over 24 orders of magnitude, none a power of 2 (the scaled data are rounded).
SCALES = (1e-12, 3e-5, 7e6, 1e12)


# -- laws: (problem, theta, c) -> (problem at scale c, theta at scale c, k) ----------------
def _ridge(p, theta, c):
    return P.Ridge(p.X, c * p.y), theta, 1            # w*(X, c y; lam) = c w*


def _lasso(p, theta, c):
    return P.Lasso(p.design.X, c * p.y, tol=p.tol), c * theta, 1      # (c y, c lam): c w*


def _elastic_net(p, theta, c):
    return P.ElasticNet(p.design.X, c * p.y, tol=p.tol), (c * theta[0], theta[1]), 1


def _logistic(p, theta, c):
    # loss(Xw) is unchanged by (c X, w / c); the penalty then needs lam c^2 (l2), lam c (l1)
    lam = theta * (c * c if p.penalty == "l2" else c)
    return P.LogisticRegression(c * p.X, p.y, penalty=p.penalty), lam, -1


def _tv1d(p, theta, c):
    s, lam = theta                                     # l1: (c s, c lam); l2 is linear in s
    lam = c * lam if p.norm == "l1" else lam
    return P.TV1D(p.order, p.norm, tol=p.tol, max_iter=p.max_iter), (c * s, lam), 1


def _tv2d(p, theta, c):
    return (P.TV2D(p.operator, p.blur_sigma, tol=p.tol, max_iter=p.max_iter),
            (c * theta[0], c * theta[1]), 1)


def _pooling(p, theta, c):
    # phi(c z; c alpha) = c^2 phi(z; alpha) for every penalty: y*(c x; c alpha) = c y*
    return (P.RobustPooling(p.penalty, c * p.alpha, tol=p.tol, max_iter=p.max_iter,
                            start=p.start), c * theta, 1)


def _projection(p, theta, c):
    return P.Projection(p.set, c * p.radius, p.plateau), c * theta, 1


def _ecls(p, theta, c):
    return P.EqualityConstrainedLS(p.D, c * p.beta), c * theta, 1


def _qp(p, theta, c):
    if isinstance(theta, tuple):                       # (c c, c h): c x*
        return P.QP(p.Q, p.G, tol=p.tol), (c * theta[0], c * theta[1]), 1
    return P.QP(p.Q, p.G, c * p.h, tol=p.tol), c * theta, 1


def _nnls(p, theta, c):
    return P.NNLS(p.A), c * theta, 1


def _lad(p, theta, c):
    return P.LeastAbsoluteDeviation(p.A), c * theta, 1


def _linear_program(p, theta, c):
    return P.LinearProgram(p.A), (c * theta[0], c * theta[1]), 1    # vertices scale with b


def _simplex_ls(p, theta, c):
    return P.SimplexLeastSquares(c * p.A, tol=p.tol, max_iter=p.max_iter), c * theta, 0


def _segmentation(p, theta, c):
    return (P.MultiLabelSegmentation(c * p.mu, c * p.alpha, tol=p.tol, max_iter=p.max_iter),
            c * theta, 0)


def _matrix_game(p, theta, c):
    return p, c * theta, 0


def _piecewise(p, theta, c):
    return p, c * theta, 1                             # a projection onto a union of cones


def _components(p, theta, c):
    lo, hi = p.value_range                             # the levels scale with the range
    return (P.ConnectedComponents(p.levels, (c * lo, c * hi), p.connectivity), c * theta, 1)


def _quartic(x, t):
    return 0.5 * (x @ x) * t[0] - t[1] @ x + 0.1 * (x**4).sum()


def _smooth(p, theta, c):
    # c E has the minimizers of E; step_size would scale with 1/c: not part of the law
    return P.Smooth(lambda x, t: c * _quartic(x, t), np.zeros(3), tol=p.tol), theta, 0


def _constrained(p, theta, c):
    return (P.Constrained(lambda x, t: c * ((x - t) ** 2).sum(),
                          eq=lambda x, t: (x * x).sum() - 1.0, ineq=lambda x, t: x[:1] - 0.2,
                          x0=np.array([0.0, 1.0, 0.0])), theta, 0)


def _composite(p, theta, c):
    # the fused lasso built here: 1/2||x - s||^2 + lam TV(x) + 0 ||x||_1, with (c s, c lam)
    def denoise(x, t):
        return 0.5 * ((x - t[0]) ** 2).sum()

    prob = P.Composite(denoise, [prox.TV1D(1, weight_part=1)], np.zeros(5))
    s = np.array([0.0, 2.0, 2.1, 3.0, -1.0])
    return prob, (c * s, c * np.asarray(0.2)), 1


LAWS = {
    "ridge": _ridge, "lasso": _lasso, "elastic_net": _elastic_net, "logistic": _logistic,
    "tv1d": _tv1d, "tv2d": _tv2d, "robust_pooling": _pooling, "projection": _projection,
    "equality_constrained_ls": _ecls, "qp": _qp, "nnls": _nnls, "lad": _lad,
    "linear_program": _linear_program, "simplex_ls": _simplex_ls,
    "segmentation": _segmentation, "matrix_game": _matrix_game,
    "piecewise_polynomial": _piecewise, "connected_components": _components,
    "smooth": _smooth, "constrained": _constrained, "composite": _composite,
    # no law:
    "entropic_simplex": "softmax(c z) is not softmax(z) (no temperature to rescale); its law "
                        "is a translation, softmax(z + t 1) = softmax(z), not a scaling",
}

# Relative tolerances on x*(c data) / c^k against x*(data), with their reasons. Default:
# direct or active-set solvers, and iterations that are exactly equivariant under the scaling,
# agree to rounding of the scaled data (~1e-15), well inside 1e-9.
RTOL = {
    # first-order / tolerance-stopped solvers: both solves are within their tol of x*
    "tv2d": 1e-7, "segmentation": 1e-7, "matrix_game": 1e-7, "simplex_ls": 1e-8,
    "constrained": 1e-6, "composite": 1e-8, "logistic": 1e-7, "smooth": 1e-9,
}


def _variants():
    out = []
    for name, cls in PROBLEMS.items():
        law = LAWS.get(name)
        if law is None:
            out.append(pytest.param(name, None, None, marks=pytest.mark.skip(
                reason=f"{name}: no scaling law declared in tests/test_scale.py (a family "
                       "registered after it was written: add its law or why it has none)")))
            continue
        if isinstance(law, str):
            out.append(pytest.param(name, None, None, marks=pytest.mark.skip(reason=law)))
            continue
        if name in ("smooth", "constrained", "composite"):     # built by the law itself
            label, prob, theta = cls.examples()[0]
            out.append(pytest.param(name, prob, theta, id=name))
            continue
        for label, prob, theta in cls.examples():
            out.append(pytest.param(name, prob, theta, id=label))
    return out


def _x(sol):
    return np.asarray(sol.x, dtype=np.float64)


@pytest.mark.parametrize(("name", "prob", "theta"), _variants())
def test_scale_law(name, prob, theta):
    """``solve(c data) = c^k solve(data)`` for c in 1e-12 .. 1e12, converged, no warning."""
    law = LAWS[name]
    base_prob, base_theta, _ = law(prob, theta, 1.0)
    ref = base_prob.solve(base_theta)
    assert ref.converged
    x_ref = _x(ref)
    rtol = RTOL.get(name, 1e-9)
    for c in SCALES:
        prob_c, theta_c, k = law(prob, theta, c)
        sol = prob_c.solve(theta_c)
        assert sol.converged, (name, c)
        got = _x(sol) / c**k
        err = float(np.max(np.abs(got - x_ref), initial=0.0))
        assert err <= rtol * max(float(np.max(np.abs(x_ref), initial=0.0)), 1e-300), \
            (name, c, err)


@given(exponent=st.floats(-12, 12), seed=st.integers(0, 2**16))
def test_nnls_scale_against_scipy(exponent, seed):
    """NNLS at any scale matches scipy's nnls (an independent Lawson-Hanson) on the data."""
    import scipy.optimize

    rng = np.random.default_rng(seed)
    A = rng.standard_normal((7, 4))
    b = rng.standard_normal(7) * 10.0**exponent
    x = P.NNLS(A).solve(b).x
    ref = scipy.optimize.nnls(A, b)[0]
    # 1e-9: both are exact active-set solutions; rounding of lstsq on a well-posed A
    assert np.allclose(x, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max(initial=0.0))
