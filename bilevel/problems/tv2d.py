r"""2-D isotropic total-variation denoising and deblurring.

.. math:: u^*(f, \lambda) = \arg\min_u \tfrac12\|A u - f\|^2
          + \lambda \sum_{ij} \|(\nabla u)_{ij}\|_2

``A`` the identity (denoising, the ROF model) or a Gaussian blur (deblurring). Solved by a
fixed-step primal-dual method in numba (:mod:`bilevel.solvers.tv2d`). The derivative goes
through the same iteration, written in torch on the primal-dual state ``z = (u, p)``:
``Unroll`` replays it, ``FixedPoint`` differentiates its fixed point ``(u*, p*)``; the
output is the ``u`` part of the state.

References
----------
L. Rudin, S. Osher, E. Fatemi, "Nonlinear total variation based noise removal
algorithms", Physica D 1992. A. Chambolle, T. Pock, J. Math. Imaging Vis. 2011.
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import Batch, StepMap
from bilevel.problems.base import Capabilities, Problem, check_array

__all__ = ["TV2D"]

# Why TV2D lacks a capability (Capabilities.why_not).
_WHY_NOT = {
    "analytic_vjp": "no closed form: on its manifold the isotropic norm |(grad u)_ij| has "
                    "curvature terms lam (I - n n^T) / |(grad u)_ij| (not polyhedral, unlike "
                    "TV1D's): the derivative is a linear system, not a projector",
    "manifold": "||grad u||_{2,1} is partly smooth relative to {(grad u)_Z = 0}, but the "
                "first-order solver reaches u* only to its tolerance and does not identify Z "
                "exactly (grad u* vanishes only to ~tol there): the manifold is not certified",
    "optimality": "the isotropic TV ||grad u||_{2,1} is not smooth where (grad u)_ij = 0: no "
                  "optimality residual",
    "constraints": "u is unconstrained: no KKT system (the non-smooth TV enters through its "
                   "dual discs, in the step and mirror maps)",
    "straight_through": "u* is a continuous map of f (for A = I the prox of a convex penalty, "
                        "1-Lipschitz), differentiable almost everywhere: the identity backward "
                        "is a baseline for discontinuous maps (partitions, quantizers)",
    "dual": "lam multiplies ||grad u||_{2,1}: E is not jointly convex in (u, lam), so p has no "
            "convex-dual gradient; the envelope theorem gives it (envelope)",
}


def _torch_grad(u):
    """Forward differences along both axes, zero across the last row / column."""
    zero_row = torch.zeros_like(u[..., :1, :])
    zero_col = torch.zeros_like(u[..., :, :1])
    gx = torch.cat([u[..., 1:, :] - u[..., :-1, :], zero_row], dim=-2)
    gy = torch.cat([u[..., :, 1:] - u[..., :, :-1], zero_col], dim=-1)
    return gx, gy


def _torch_div(gx, gy):
    """``div = -grad^T``."""
    zero_row = torch.zeros_like(gx[..., :1, :])
    zero_col = torch.zeros_like(gy[..., :, :1])
    qx = torch.cat([gx[..., :-1, :], zero_row], dim=-2)
    qy = torch.cat([gy[..., :, :-1], zero_col], dim=-1)
    dx = qx - torch.cat([zero_row, qx[..., :-1, :]], dim=-2)
    dy = qy - torch.cat([zero_col, qy[..., :, :-1]], dim=-1)
    return dx + dy


# Widest blur accepted: the constructor's bound (the kernel's 6 sigma + 1 taps are stored)
# and, at solve time, the kernel radius relative to the image's larger side. Beyond these the
# blurred image is its mean to rounding; the convolution's cost grows with the radius.
_MAX_BLUR_SIGMA = 1e4
_MAX_BLUR_RADIUS_RATIO = 4


@register_problem
class TV2D(Problem):
    """2-D isotropic TV ``1/2||A u - f||^2 + lam ||grad u||_{2,1}``; theta ``(f, lam)``.

    Parameters
    ----------
    operator : {"identity", "blur"}
        ``A``: the identity (denoising) or a separable Gaussian blur with standard deviation
        ``blur_sigma`` pixels, radius ``ceil(3 blur_sigma)``, half-sample symmetric boundaries
        (a symmetric operator, ``||A|| <= 1``).
    blur_sigma : float
        Standard deviation of the blur, in pixels (``operator="blur"``).
    tol : float
        Tolerance on the relative KKT residual (stationarity
        ``||A^T(Au - f) - div p||_inf / ||f||_inf`` and complementarity
        ``sum (lam |grad u| - <p, grad u>) / (||f||^2/2)``): relative to the data, so that
        ``u*(c f, c lam) = c u*(f, lam)`` holds for every ``c > 0``, to the same tolerance.
    max_iter : int
        Primal-dual iterations.

    Notes
    -----
    ``f`` has shape (H, W) with ``H, W >= 2``, ``lam`` is a scalar > 0. First-order methods
    reach 1e-6 quickly and 1e-10 only slowly (the tail of the iteration is sublinear):
    derivatives are as accurate as the KKT pair ``(u*, p*)`` in ``Solution.info["dual"]``.
    Capabilities: ``step`` (the primal-dual map on ``z = (u, p)``: ``Unroll``,
    ``FixedPoint``), ``mirror`` (a Bregman primal-dual method) and ``energy``.
    :class:`bilevel.torch.Layer` takes batches of images.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> f = np.zeros((4, 4)); f[:, 2:] = 1.0
    >>> sol = bl.problems.TV2D().solve((f, 0.1))
    >>> bool(sol.converged), np.round(sol.x[0], 3)     # the edge shrinks by 2 lam / 2
    (True, array([0.05, 0.05, 0.95, 0.95]))
    """

    name = "tv2d"

    def __init__(self, operator="identity", blur_sigma=1.0, tol=1e-6, max_iter=20000):
        if operator not in ("identity", "blur"):
            raise ValueError(f"operator must be 'identity' or 'blur', got {operator!r}")
        if not (np.isfinite(blur_sigma) and blur_sigma > 0):
            raise ValueError(f"blur_sigma must be > 0 (pixels), got {blur_sigma}")
        if blur_sigma > _MAX_BLUR_SIGMA:
            raise ValueError(f"blur_sigma must be <= {_MAX_BLUR_SIGMA:.0f} pixels (a kernel of "
                             f"radius 3 blur_sigma), got {blur_sigma:.3g}: a blur that wide "
                             "turns any image into its mean and cannot be inverted")
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        from bilevel.solvers.tv2d import gaussian_kernel

        self.operator, self.blur_sigma = operator, float(blur_sigma)
        self.tol, self.max_iter = float(tol), int(max_iter)
        self.identity = operator == "identity"
        self.kernel = np.array([1.0]) if self.identity else gaussian_kernel(self.blur_sigma)
        self._indices = {}

    def __repr__(self):
        blur = "" if self.identity else f", blur_sigma={self.blur_sigma}"
        return f"TV2D(operator={self.operator!r}{blur})"

    def offers(self):
        """Return the primal-dual step on ``z = (u, p)``, the Bregman method, the energy."""
        return Capabilities(
            step=StepMap(self.step, start=self._step_init, state=self._step_state,
                         output=self._step_output),
            mirror=self.mirror, energy=self.energy, batch=Batch(theta_ndim=(2, 0)),
            why_not=_WHY_NOT)

    @classmethod
    def examples(cls):
        """Denoising of a 2 x 3 image, solved to 1e-12."""
        # tol 1e-12: finite differences (the reference here) divide solver error by h.
        return [("tv2d-identity", cls(tol=1e-12, max_iter=100000),
                 (np.array([[0.0, 0.1, 1.0], [0.1, 0.9, 1.2]]), np.asarray(0.05)))]

    def check_theta(self, theta):
        """``(f, lam)``: f of shape (H, W), H, W >= 2, finite; lam a scalar > 0."""
        if not isinstance(theta, (tuple, list)) or len(theta) != 2:
            raise ValueError("TV2D takes theta = (f, lam): the observed image and the weight")
        f = check_array(theta[0], "f", ndim=2)
        if min(f.shape) < 2:
            raise ValueError(f"f must be an image of at least 2 x 2 pixels, got {f.shape}")
        lam = check_array(theta[1], "lam")
        if lam.shape != ():
            raise ValueError(f"lam must be a scalar, got shape {lam.shape}")
        if not lam > 0:
            raise ValueError(f"lam must be > 0, got {float(lam):.3g}; optimize log(lam) "
                             "(log_scale=True) to keep it positive")
        return np.ascontiguousarray(f), lam

    def init(self, parts):
        """Start from the observed image."""
        return parts[0].copy()

    def _solve(self, theta, x0):
        from bilevel.solvers.tv2d import tv2d_solve

        f, lam = theta[0], float(theta[1])
        radius = (self.kernel.size - 1) // 2
        if radius > _MAX_BLUR_RADIUS_RATIO * max(f.shape):
            raise ValueError(
                f"blur_sigma={self.blur_sigma:.3g} is too wide for a {f.shape[0]} x "
                f"{f.shape[1]} image f: the kernel radius ceil(3 blur_sigma) = {radius} exceeds "
                f"{_MAX_BLUR_RADIUS_RATIO} times the image size, so A f is nearly constant "
                "and the deblurring ill-posed (and slow); use blur_sigma <= "
                f"{_MAX_BLUR_RADIUS_RATIO * max(f.shape) / 3:.3g}")
        u, p, n_iter, residual = tv2d_solve(f, lam, x0, np.zeros((2,) + f.shape), self.kernel,
                                            self.identity, self.tol, self.max_iter)
        return u, n_iter, residual, {"dual": p}

    # primal-dual state for Unroll / FixedPoint ------------------------------------------
    def _step_init(self, parts):
        """Return the initial state ``z_0 = (f, 0)``, flattened."""
        f = parts[0]
        return np.concatenate([f.ravel(), np.zeros(2 * f.size)])

    def _step_state(self, solution):
        """Return the state at the solution, ``z* = (u*, p*)``, flattened."""
        return np.concatenate([solution.x.ravel(), solution.info["dual"].ravel()])

    def _step_output(self, z, theta):
        """``u``, the image part of the state."""
        f = theta[0]
        return z[:f.numel()].reshape(f.shape)

    def step(self, z, theta):
        """One primal-dual step on ``z = (u, p)`` (the solver's map; fixed point ``z*``).

        ``A = I``: ``u+ = (u + tau (div p + f)) / (1 + tau)``; otherwise
        ``u+ = u - tau (A (A u - f) - div p)``; then ``p+ = P_lam(p + sigma grad(2u+ - u))``.
        """
        from bilevel.solvers.tv2d import tv2d_steps

        f, lam = theta
        H, W = f.shape
        u = z[:H * W].reshape(H, W)
        px, py = z[H * W:2 * H * W].reshape(H, W), z[2 * H * W:].reshape(H, W)
        tau, sigma = tv2d_steps(self.identity)
        div = _torch_div(px, py)
        if self.identity:
            u_new = (u + tau * (div + f)) / (1.0 + tau)
        else:
            u_new = u - tau * (self._blur(self._blur(u) - f) - div)
        gx, gy = _torch_grad(2.0 * u_new - u)
        ax, ay = px + sigma * gx, py + sigma * gy
        scale = lam / torch.sqrt(torch.maximum(ax * ax + ay * ay, lam * lam))
        return torch.cat([u_new.reshape(-1), (ax * scale).reshape(-1), (ay * scale).reshape(-1)])

    def mirror(self, solution):
        """Return the Bregman primal-dual method (disc mirror on the dual) for ``bregman``.

        ``min_u max_{|z_ij| <= 1} 1/2||A u - f||^2 + lam <grad u, z>`` from ``(0, 0)``:
        ``u+ = u - tau (A^T(A u - f) - lam div z)``,
        ``z+ = tanh(|w|) w / |w|``, ``w = atanh(|z|) z / |z| + sigma lam grad(2u+ - u)``,
        ``tau = 1/(1 + 10 kappa)``, ``sigma = 10/kappa``, ``kappa = lam sqrt(8) >= ||lam grad||``
        (``(1/tau - 1)/sigma = kappa^2``). Its tail is slow (sublinear on images whose dual
        nearly saturates where ``grad u*`` nearly vanishes): use it with a step budget.
        """
        from bilevel._types import Mirror
        from bilevel.solvers.bregman import bregman_pd_tv2d

        f, lam = (np.asarray(p, dtype=np.float64) for p in solution.theta)
        f = np.ascontiguousarray(f)
        kappa = max(float(lam) * np.sqrt(8.0), 1e-12)
        u0, z0 = np.zeros(f.shape), np.zeros(f.shape + (2,))

        def forward(n_steps, tol, tau, sigma):
            u, z, n, r = bregman_pd_tv2d(f, float(lam), self.kernel, self.identity, u0, z0,
                                         tau, sigma, n_steps, tol)
            return (u, z), n, r

        def gradient(u, theta):
            return u - theta[0] if self.identity else self._blur(self._blur(u) - theta[0])

        return Mirror(kind="euclidean", scheme="primal_dual", start=(u0, z0),
                      step_size=1.0 / (1.0 + 10.0 * kappa), dual_kind="ball",
                      dual_step_size=10.0 / kappa, gradient=gradient,
                      operator=lambda u, theta: theta[1] * torch.stack(_torch_grad(u), dim=-1),
                      adjoint=lambda z, theta: -theta[1] * _torch_div(z[..., 0], z[..., 1]),
                      forward=forward, info={"method": "Bregman primal-dual method"})

    def _blur(self, u):
        """Apply the Gaussian blur in torch (same boundary rule as the numba kernel)."""
        from bilevel.solvers.tv2d import _reflected_indices

        H, W = u.shape[-2:]
        r = (self.kernel.size - 1) // 2
        if (H, W) not in self._indices:
            win = np.arange(2 * r + 1)
            self._indices[H, W] = tuple(
                torch.from_numpy(_reflected_indices(n, r)[np.arange(n)[:, None] + win])
                for n in (H, W))
        rows, cols = self._indices[H, W]
        w = torch.from_numpy(self.kernel).to(u.dtype)
        tmp = u[..., :, cols] @ w                                   # along the columns
        return (tmp[..., rows, :] * w[None, :, None]).sum(dim=-2)   # then the rows

    def energy(self, u, theta):
        """``1/2||A u - f||^2 + lam sum |grad u|``."""
        f, lam = theta
        Au = u if self.identity else self._blur(u)
        gx, gy = _torch_grad(u)
        return 0.5 * torch.sum((Au - f) ** 2) + lam * torch.sum(torch.sqrt(gx * gx + gy * gy))
