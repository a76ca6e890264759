"""Value types and errors shared by problems, strategies and the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ConvergenceWarning",
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
