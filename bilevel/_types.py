"""Value types and errors shared by problems, strategies and the API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ConvergenceWarning",
    "DegeneracyWarning",
    "Manifold",
    "NotApplicable",
    "SingularSystemError",
    "Solution",
    "as_tuple",
    "like_structure",
]


class NotApplicable(Exception):
    """A strategy cannot differentiate a problem: a required capability is missing.

    ``missing`` holds the names of the missing capabilities.
    """

    def __init__(self, message, missing=()):
        super().__init__(message)
        self.missing = tuple(missing)


class ConvergenceWarning(UserWarning):
    """An iterative solve stopped before reaching its tolerance."""


class DegeneracyWarning(UserWarning):
    """The active manifold at ``x*`` is unstable: x* may not be differentiable in theta.

    A non-degeneracy condition holds only with a margin at or below tolerance.
    """


class SingularSystemError(np.linalg.LinAlgError, ValueError):
    """A linear system of a strategy is singular or numerically singular."""


@dataclass(frozen=True)
class Solution:
    """A lower-level solution ``x* = argmin_x E(x, theta)`` with its certificate.

    Attributes
    ----------
    x : ndarray
        The minimizer.
    theta : ndarray or tuple of ndarray
        The parameters it was solved for, validated, in the structure the caller gave.
    n_iter : int
        Iterations of the inner solver.
    converged : bool
        Whether the solver reached its tolerance.
    info : dict
        Solver certificate: ``residual`` (optimality residual at ``x``), ``time`` and
        whatever a strategy may reuse.
    """

    x: np.ndarray
    theta: Any
    n_iter: int
    converged: bool
    info: dict = field(default_factory=dict)


def as_tuple(theta):
    """Return theta as a tuple of arrays (a bare array becomes a 1-tuple)."""
    return tuple(theta) if isinstance(theta, (tuple, list)) else (theta,)


def like_structure(parts, theta):
    """Return ``parts`` (a tuple) in theta's structure: bare if theta is bare."""
    return tuple(parts) if isinstance(theta, (tuple, list)) else parts[0]


@dataclass(frozen=True)
class Manifold:
    r"""The active manifold of a partly smooth energy at ``x*``, with restricted derivatives.

    Near a non-degenerate ``theta`` the solution stays on the manifold (Vaiter et al. 2016;
    Liang, Fadili, Peyre 2014): ``x*(theta) = lift(z*(theta))`` with ``z*`` the minimizer of
    the smooth restricted energy ``E_M(z, theta)``, so that
    ``dx*/dtheta = -B H_M^{-1} d_theta grad_z E_M`` with ``B = lift``, ``H_M = grad_z^2 E_M``.

    Attributes
    ----------
    kind : str
        What identifies the manifold ("support", "jump set", ...).
    dim : int
        Its dimension ``k`` (the support size for l1 penalties).
    margin : float
        Non-degeneracy margin, relative: how far the inactive constraints are from becoming
        active, or active ones inactive (for l1: the smallest of
        ``1 - |grad_j f| / lam_j`` off the support ``S`` and ``|x_j| / max|x|`` on it).
        Must be > 0.
    restrict, lift : callable
        ``v -> B^T v`` (x-shaped to ``(k,)``) and ``z -> B z``.
    solve : callable
        ``(b, pinv=False) -> H_M^{-1} b``; on a singular ``H_M`` raises
        :class:`SingularSystemError` naming the remedy, or with ``pinv`` applies the
        pseudo-inverse (the minimum-norm derivative).
    theta_vjp : callable
        ``u -> (d_theta grad_z E_M)^T u``, a tuple over theta.
    theta_jvp : callable
        ``dtheta (tuple) -> d_theta grad_z E_M . dtheta``, shape ``(k,)``.
    info : dict
        Extra description (``support``, ``signs``, ``margin_index``, ...).
    """

    kind: str
    dim: int
    margin: float
    restrict: Callable
    lift: Callable
    solve: Callable
    theta_vjp: Callable
    theta_jvp: Callable
    info: dict = field(default_factory=dict)
