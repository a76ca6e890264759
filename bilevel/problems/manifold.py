"""Solving with the Hessian of an energy restricted to its active manifold.

Partial smoothness differentiates ``x*(theta)`` through ``H_M^{-1}``, the Hessian of the
energy restricted to the manifold ``M`` at ``x*``: positive definite at a non-degenerate,
strongly convex-on-``M`` solution, singular when ``x*`` is not unique on ``M`` (collinear
active features), where the pseudo-inverse gives the minimum-norm derivative.
"""

from __future__ import annotations

import numpy as np

from bilevel._types import SingularSystemError

__all__ = ["restricted_solver"]

# Reciprocal condition number below which a restricted Hessian counts as singular (and,
# relative to the largest eigenvalue, the cut-off of its pseudo-inverse).
RCOND_MIN = 1e-13


def restricted_solver(H, what, remedy):
    """Return ``solve(b, pinv=False) -> H^{-1} b`` for a symmetric ``H`` (k, k), factored once.

    A singular ``H`` (reciprocal condition at most :data:`RCOND_MIN`) raises
    :class:`~bilevel.SingularSystemError` naming ``what`` it restricts to and the
    ``remedy``, unless ``pinv``: then the pseudo-inverse.
    """
    import scipy.linalg  # lazily: keeps `import bilevel` light
    from scipy.linalg import lapack

    k = H.shape[0]
    factor, rcond = None, 1.0
    if k:       # LAPACK directly: scipy.linalg's checked wrappers cost more than k = 30 does
        factor, failed = lapack.dpotrf(H, lower=0)
        rcond = 0.0 if failed else lapack.dpocon(factor, lapack.dlange("1", H))[0]

    def solve(b, pinv=False):
        if not k:
            return np.zeros(0)
        if rcond > RCOND_MIN:
            return lapack.dpotrs(factor, b, lower=0)[0]
        if not pinv:
            raise SingularSystemError(
                f"the Hessian restricted to {what} is singular (reciprocal condition "
                f"{rcond:.1e}): restricted positive definiteness fails and x* is not unique. "
                "If the upper loss sees x* only through quantities with the same "
                "dependencies (predictions X x* with collinear columns), "
                "PartialSmoothness(pinv=True) gives its exact gradient. " + remedy)
        return scipy.linalg.pinvh(H, atol=0.0, rtol=RCOND_MIN) @ b

    return solve
