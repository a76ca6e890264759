"""Value types and errors shared by problems, strategies and the API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Batch",
    "BatchSolution",
    "ConvergenceWarning",
    "DegeneracyWarning",
    "Dual",
    "KKTSystem",
    "LazyGradient",
    "Manifold",
    "Mirror",
    "NotApplicable",
    "Optimality",
    "SingularSystemError",
    "Solution",
    "StepMap",
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


class LazyGradient:
    r"""``X^T g``, the gradient in ``x`` of a loss of linear predictions ``X x``, on demand.

    ``np.asarray`` gives all of it, in ``O(mp)``; :meth:`at` only the entries at some
    coordinates, ``X[:, S]^T g`` in ``O(m|S|)``: all that a derivative on a support ``S``
    reads, as in Bertrand, Klopfenstein, Blondel, Vaiter, Gramfort, Salmon, "Implicit
    differentiation of Lasso-type models for hyperparameter optimization", ICML 2020.

    Parameters
    ----------
    X : ndarray, shape (m, p)
    weights : ndarray, shape (m,)
        ``g``, finite.
    columns : tuple or None
        ``(S, X[:, S])`` if already gathered (for the predictions of a sparse ``x``).
    """

    def __init__(self, X, weights, columns=None):
        self.X, self.weights, self.columns = X, weights, columns
        self.shape = (X.shape[1],)

    def at(self, coordinates):
        """``(X^T g)[coordinates]``, computed from those columns only."""
        if self.columns is not None and self.columns[0].tobytes() == coordinates.tobytes():
            return self.columns[1].T @ self.weights
        return self.X[:, coordinates].T @ self.weights

    def __array__(self, dtype=None, copy=None):
        full = self.X.T @ self.weights
        return full if dtype is None else full.astype(dtype, copy=False)


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
    coordinates : ndarray or None
        Where ``restrict`` selects coordinates, ``restrict(v) = v.ravel()[coordinates]``:
        the entries of ``v`` it reads (a :class:`LazyGradient` then computes only those).
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
    coordinates: np.ndarray | None = None


MIRROR_KINDS = ("euclidean", "entropy", "simplex", "box", "ball")


@dataclass(frozen=True)
class Mirror:
    r"""A smooth Bregman method that solves a problem: what :class:`BregmanUnroll` replays.

    The mirror step of a kind is ``M(x, g) = grad psi*(grad psi(x) - g)``, smooth and with
    values in the interior of the constraint set (Ochs et al. 2016):

    - ``"euclidean"``: ``psi = |x|^2/2``, ``M = x - g`` (no constraint);
    - ``"entropy"``: ``psi = sum x log x``, ``M = x exp(-g)`` (``x >= 0``);
    - ``"simplex"``: entropy on the unit simplex of the last axis, ``M = softmax(log x - g)``;
    - ``"box"``: ``psi = ((1+x)log(1+x) + (1-x)log(1-x))/2``, ``M = tanh(atanh(x) - g)``
      (``[-1, 1]``);
    - ``"ball"``: the box's ``psi`` on the radius ``r = |x|`` of the last axis,
      ``M = tanh(|w|) w / |w|`` with ``w = atanh(|x|) x / |x| - g`` (unit balls).

    ``scheme="gradient"``: the Bregman proximal-gradient method
    ``x+ = M(x, tau grad_x f(x, theta))`` for ``min_{x in C} f(x, theta)``.
    ``scheme="primal_dual"``: the Bregman primal-dual method (Chambolle and Pock 2016) for
    ``min_x max_z f(x, theta) + <K_theta x, z>`` with ``z`` in the dual mirror's set:
    ``x+ = M(x, tau (grad_x f(x) + K^T z))``, ``z+ = M_z(z, -sigma K (2 x+ - x))``.

    Attributes
    ----------
    kind : str
        Mirror of ``x`` (one of ``MIRROR_KINDS``).
    scheme : {"gradient", "primal_dual"}
    start : tuple of ndarray
        Interior starting state: ``(x0,)``, or ``(x0, z0)`` for a primal-dual method.
    step_size : float
        ``tau``.
    gradient : callable
        ``(x, theta) -> grad_x f`` on torch tensors (zeros for a bilinear game).
    forward : callable
        ``(n_steps, tol, tau, sigma) -> (state, n_iter, residual)``: the same iteration in
        numba from ``start`` with steps ``tau`` (and ``sigma``), stopped after ``n_steps``
        steps or at the first iterate whose optimality residual is ``<= tol``; ``state`` is
        a tuple of arrays like ``start``.
    dual_kind : str, optional
        Mirror of ``z`` (primal-dual).
    dual_step_size : float, optional
        ``sigma`` (primal-dual).
    operator, adjoint : callable, optional
        ``(x, theta) -> K_theta x`` and ``(z, theta) -> K_theta^T z`` in torch (primal-dual).
    output : callable, optional
        ``state -> x`` in torch, the problem's variable (default: the first entry).
    info : dict
        Description (the iteration's name, its step-size rule).
    """

    kind: str
    scheme: str
    start: tuple
    step_size: float
    gradient: Callable
    forward: Callable
    dual_kind: str | None = None
    dual_step_size: float | None = None
    operator: Callable | None = None
    adjoint: Callable | None = None
    output: Callable | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        kinds = (self.kind,) + ((self.dual_kind,) if self.scheme == "primal_dual" else ())
        if any(k not in MIRROR_KINDS for k in kinds):
            raise ValueError(f"mirror kinds must be in {MIRROR_KINDS}, got {kinds}")
        if self.scheme not in ("gradient", "primal_dual"):
            raise ValueError(f"scheme must be 'gradient' or 'primal_dual', got {self.scheme!r}")
        if self.scheme == "primal_dual" and (self.operator is None or self.adjoint is None
                                             or self.dual_step_size is None
                                             or len(self.start) != 2):
            raise ValueError("a primal-dual Mirror needs operator, adjoint, dual_kind, "
                             "dual_step_size and a start (x0, z0)")


@dataclass(frozen=True)
class Dual:
    r"""The dual certificate of a value function ``p(theta) = min_x E(x, theta)``.

    For ``E`` jointly convex in ``(x, theta)`` the subdifferential of ``p`` is the dual
    solution set (Mehmood and Ochs 2021): ``partial p(theta) = argmax_y <theta, y> -
    E^*(0, y)``; ``gradient`` is that solution mapped to theta's structure (the envelope
    theorem's ``grad_theta E(x*, theta)`` for smooth energies, the Lagrange multipliers of
    constraints that theta enters).

    Attributes
    ----------
    value : float
        ``p(theta)``.
    gradient : ndarray or tuple of ndarray
        ``grad p(theta)`` in theta's structure.
    y : ndarray
        The dual solution it comes from.
    gap : float
        Duality gap (or optimality residual) of the certificate.
    iterates : callable, optional
        ``n -> list`` of ``n`` gradient estimates from the dual iterates of a primal-dual
        method, which converge to ``gradient`` (the derivative sequence).
    info : dict
        Extra description.
    """

    value: float
    gradient: Any
    y: np.ndarray
    gap: float = 0.0
    iterates: Callable | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Optimality:
    r"""An optimality residual ``F`` with ``F(x*, theta) = 0`` and ``d_x F`` invertible at ``x*``.

    :class:`~bilevel.strategies.Implicit` differentiates it:
    ``(dx*/dtheta)^T v = -(d_theta F)^T u`` with ``(d_x F)^T u = v``.

    Attributes
    ----------
    residual : callable
        ``(x, theta) -> F`` in torch, shaped like ``x``, differentiable in both (for a
        smooth energy ``F = grad_x E``).
    hessian : callable, optional
        ``solution -> d_x F`` at ``x*`` as a dense ndarray ``(n, n)``: a NumPy fast path.
    theta_vjp : callable, optional
        ``(solution, u) -> (d_theta F)^T u``, a tuple over theta's parts: the fast path's
        second half. Implicit uses the fast path when both are given.
    """

    residual: Callable
    hessian: Callable | None = None
    theta_vjp: Callable | None = None

    @property
    def fast_path(self):
        """Whether both NumPy fast paths are offered."""
        return self.hessian is not None and self.theta_vjp is not None


@dataclass(frozen=True)
class StepMap:
    r"""The solver's fixed-point map ``z+ = T(z, theta)``, on a state ``z`` that ``x`` is read off.

    :class:`~bilevel.strategies.Unroll` replays it from ``start``;
    :class:`~bilevel.strategies.FixedPoint` differentiates its fixed point ``z*``. For most
    problems the state is ``x`` itself; a primal-dual method carries ``z = (x, p)``.

    Attributes
    ----------
    step : callable
        ``(z, theta) -> z+`` in torch, a contraction (or averaged map) with fixed point ``z*``.
    start : callable
        ``parts -> z_0`` (NumPy): the iteration's start for theta's parts (a tuple).
    state : callable, optional
        ``solution -> z*`` (NumPy); default ``solution.x``.
    output : callable, optional
        ``(z, theta) -> x`` in torch; default the state itself.
    """

    step: Callable
    start: Callable
    state: Callable | None = None
    output: Callable | None = None

    def at_solution(self, solution):
        """Return ``z*`` of a solution."""
        return solution.x if self.state is None else self.state(solution)

    def read(self, z, theta):
        """Return ``x`` read off the state ``z`` (torch)."""
        return z if self.output is None else self.output(z, theta)


@dataclass(frozen=True)
class KKTSystem:
    r"""The linearized KKT conditions at ``(x*, mu*)`` of a constrained problem.

    With ``c = (h, g_A)`` (equalities and active inequalities) and multipliers
    ``mu = (nu, lam_A)``, the map ``K(x, mu, theta) = (grad_x f + (d_x c)^T mu, c)`` vanishes
    at the solution; its Jacobian in ``(x, mu)`` is the symmetric indefinite
    ``[[H, A^T], [A, 0]]`` (Gould, Hartley, Campbell 2021, Propositions 4.5-4.6).

    Attributes
    ----------
    n_x : int
        Size of ``x`` (the first block of the unknowns).
    size : int
        ``n_x`` plus the number of active multipliers.
    matvec : callable
        ``w -> [[H, A^T], [A, 0]] w`` on 1-D arrays of ``size`` (the matrix is symmetric).
    theta_vjp : callable
        ``w -> (d_theta K)^T w``, a tuple over theta's parts.
    info : dict
        ``active``, ``nu``, ``lam`` (all q, zero off the active set), ``multipliers`` (their
        source), ``stationarity``, ``one_sided`` and ``weakly_active``.
    """

    n_x: int
    size: int
    matvec: Callable
    theta_vjp: Callable
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BatchSolution:
    """Solutions of a batch of instances, each theta part stacked along a first axis ``B``.

    Attributes
    ----------
    x : ndarray, shape (B, ...)
        The minimizers.
    parts : tuple of ndarray
        Theta's parts, each ``(B, ...)``.
    solutions : tuple of Solution, optional
        One per row, when the rows were solved one at a time (their certificates).
    certificate : dict
        Per-row arrays of the batched solver's certificate (partitions, margins, ...),
        when the batch was solved by the problem's batched kernel.
    """

    x: np.ndarray
    parts: tuple
    solutions: tuple | None = None
    certificate: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """How an instance batches: its parameters' instance dimensions and batched kernels.

    Attributes
    ----------
    theta_ndim : tuple of int
        Dimensions of one instance's theta parts (``(1, 0)``: a signal and a scalar); the
        leading dimensions beyond them are batch dimensions.
    solve : callable, optional
        ``(*parts) -> BatchSolution`` on ``(B, ...)`` parts: every row at once, with the
        certificate its batched VJPs read.
    analytic_vjp : callable, optional
        ``(batch_solution, V) -> (grads, margins)``: the closed-form VJP of every row
        (``grads`` a tuple of ``(B, ...)`` arrays, ``margins`` ``(B,)`` non-degeneracy
        margins), for :class:`~bilevel.strategies.Analytic`.
    manifold_vjp : callable, optional
        The same signature, on the active manifold, for
        :class:`~bilevel.strategies.PartialSmoothness`.
    """

    theta_ndim: tuple
    solve: Callable | None = None
    analytic_vjp: Callable | None = None
    manifold_vjp: Callable | None = None

    def __post_init__(self):
        if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in self.theta_ndim):
            raise ValueError(f"theta_ndim must hold integers >= 0, one per theta part, "
                             f"got {self.theta_ndim!r}")
        if (self.analytic_vjp or self.manifold_vjp) and self.solve is None:
            raise ValueError("batched VJPs read the batched solve's certificate: give solve")
