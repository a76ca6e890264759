r"""Learned image priors: filter-based (fields-of-experts, analysis-operator) energies.

.. math:: u^*(\theta) = \arg\min_u \tfrac12\|A u - f\|^2
          + \sum_{k=1}^{K} \nu_k \sum_{ij} w_{ij}\, \rho\big((K_k u)_{ij}\big),
          \qquad K_k = \sum_{l=1}^{L} \vartheta_{kl} B_l

``A`` the identity (denoising) or a Gaussian blur (deblurring), ``B_l`` the fixed zero-mean
basis of the 2-D DCT-II atoms of a ``m x m`` window without the constant atom
(``L = m^2 - 1``), ``rho`` the log-Student-t ``log(1 + z^2)``, the smoothed l1
``sqrt(z^2 + eps^2) - eps`` or the l1 norm ``|z|``; theta ``(nu, vartheta)`` and, with
``weight_map=True``, a per-pixel weight map ``w`` (else ``w = 1``). The observed images
``f`` are data: the learning is over theta. Several images ``f`` of one size form one
block-separable energy (one block per image), solved at once.

Everything is written in torch and runs on the device of the data (``f`` a CUDA tensor, or
``device="cuda"``): the solver there, the torch maps on the device of the tensors they get.
Smooth ``rho``: L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search), polished by
Newton-CG steps on Hessian-vector products. ``rho = |.|``: the primal-dual method of
Chambolle and Pock (Condat-Vu with a blur) on the state ``(u, p)``.

References
----------
S. Roth, M. J. Black, "Fields of Experts", IJCV 2009 (the filter-based prior).
K. Kunisch, T. Pock, "A bilevel optimization approach for parameter learning in variational
models", SIAM J. Imaging Sci. 2013 (bilevel learning of the filters, DCT basis).
Y. Chen, R. Ranftl, T. Pock, "Insights into analysis operator learning: from patch-based
sparse models to higher order MRFs", IEEE TIP 2014.
P. Ochs, R. Ranftl, T. Brox, T. Pock, "Techniques for gradient-based bilevel optimization
with non-smooth lower level problems", J. Math. Imaging Vis. 2016 (the Bregman primal-dual
unrolling for ``rho = |.|``).
A. Chambolle, T. Pock, J. Math. Imaging Vis. 2011; L. Condat, JOTA 2013 (primal-dual).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from bilevel._registry import register_problem
from bilevel._threads import torch_threads
from bilevel._types import Optimality, StepMap
from bilevel.problems.base import Capabilities, Problem, check_array

__all__ = ["ImagePrior", "dct_basis"]

PENALTIES = ("student_t", "smooth_l1", "l1")
# Power iterations for the step sizes, and the safety factor on their estimate (power
# iteration approaches the largest eigenvalue from below).
_POWER_ITERATIONS = 50
_POWER_SAFETY = 1.1
# Newton-CG polish steps after L-BFGS.
_NEWTON_POLISH = 8
# Below this many pixels (images x height x width) torch runs on one thread on a CPU: a
# thread team costs more than the small convolutions it shares.
_SERIAL_MAX = 20_000

_NOT_A_SURROGATE = ("u* is a continuous map of theta (a smooth one for smooth rho): the "
                    "identity backward is a baseline for discontinuous maps, and u does not "
                    "share theta's shape")
_COMMON_WHY_NOT = {
    "analytic_vjp": "no closed form: the Jacobian of u* is the inverse of a Hessian that "
                    "couples all pixels through the filters (implicit, fixed_point)",
    "straight_through": _NOT_A_SURROGATE,
    "constraints": "u is unconstrained: no KKT system",
    "dual": "the filter coefficients enter rho((K_k u)_ij) non-linearly: E is not jointly "
            "convex in (u, theta), so p(theta) has no convex-dual gradient (envelope)",
}
_SMOOTH_WHY_NOT = {
    **_COMMON_WHY_NOT,
    "manifold": "the energy is smooth: u* has no active manifold but the whole space, on "
                "which partial smoothness is implicit differentiation (implicit)",
    "mirror": "u is unconstrained and the energy smooth: the Euclidean Bregman step is the "
              "gradient step (step)",
}
_L1_WHY_NOT = {
    **_COMMON_WHY_NOT,
    "optimality": "rho = |.| is not differentiable where (K_k u)_ij = 0: no optimality "
                  "residual (the primal-dual state is differentiated instead: fixed_point, "
                  "unroll)",
    "mirror": "the Bregman primal-dual method with the box mirror on the scaled dual "
              "p / (nu w) converges too slowly for an accurate derivative (measured on a 6 x 6 "
              "image: residual 8.5e-5 after 20000 steps, where the Euclidean primal-dual "
              "method reaches 1e-12 in 190): its tail is sublinear where the dual saturates; "
              "the Euclidean primal-dual state is differentiated instead (fixed_point, unroll)",
    "manifold": "||w (K_k u)||_1 is partly smooth relative to {(K_k u)_Z = 0}, but the "
                "first-order solver reaches u* only to its tolerance and does not identify "
                "Z exactly: the manifold is not certified",
}


def _serial_if_small(method):
    """Run a method on one torch thread when the instance is small (CPU only)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self._serial:
            with torch_threads(1):
                return method(self, *args, **kwargs)
        return method(self, *args, **kwargs)
    return wrapper


def dct_basis(size):
    """Return the ``size^2 - 1`` zero-mean 2-D DCT-II atoms of a ``size x size`` window.

    Returns
    -------
    ndarray, shape (size**2 - 1, size, size)
        Orthonormal atoms ``B_{pq}(i, j) = d_p(i) d_q(j)``, ``d_p`` the p-th orthonormal
        DCT-II vector, without the constant atom ``(p, q) = (0, 0)``.

    Examples
    --------
    >>> B = dct_basis(3)
    >>> B.shape, bool(np.allclose(B.sum(axis=(1, 2)), 0.0))
    ((8, 3, 3), True)
    """
    from scipy.fft import dct

    size = int(size)
    if size < 2:
        raise ValueError(f"filter_size must be >= 2, got {size}")
    d = dct(np.eye(size), norm="ortho", axis=0)          # row p: the p-th DCT-II vector
    atoms = np.einsum("pi,qj->pqij", d, d).reshape(size * size, size, size)
    return np.ascontiguousarray(atoms[1:])


def _rho(z, penalty, eps):
    if penalty == "student_t":
        return torch.log1p(z * z)
    if penalty == "smooth_l1":
        return torch.sqrt(z * z + eps * eps) - eps
    return torch.abs(z)


def _as_images(f):
    """``f`` as a float64 tensor ``(n, H, W)`` (a 2-D image is one image)."""
    if isinstance(f, torch.Tensor):
        device = f.device
        arr = check_array(f.detach().cpu().numpy(), "f", ndim=(2, 3))
    else:
        device = None
        arr = check_array(f, "f", ndim=(2, 3))
    if arr.ndim == 2:
        arr = arr[None]
    return arr, device


@register_problem
class ImagePrior(Problem):
    r"""A learned filter-based image prior; theta ``(nu, coeffs)`` or ``(nu, coeffs, w)``.

    ``E(u) = 1/2||A u - f||^2 + sum_k nu_k sum_ij w_ij rho((K_k u)_ij)``, with
    ``K_k = sum_l coeffs[k, l] B_l`` (:func:`dct_basis`), see the module docstring.

    Parameters
    ----------
    f : array_like or Tensor, shape (n, H, W) or (H, W)
        The observed images (data, not learned). A tensor fixes the device of the solver.
    penalty : {"student_t", "smooth_l1", "l1"}
        ``rho``: ``log(1 + z^2)``, ``sqrt(z^2 + eps^2) - eps`` or ``|z|``.
    operator : {"identity", "blur"}
        ``A``: the identity, or a Gaussian blur of standard deviation ``blur_sigma`` pixels
        (radius ``ceil(3 blur_sigma)``, reflected boundaries).
    filter_size : int
        ``m``: filters are ``m x m`` (odd), ``L = m^2 - 1`` coefficients each.
    eps : float
        Smoothing of ``smooth_l1``.
    weight_map : bool
        Whether theta carries a per-pixel weight map ``w`` of shape (H, W).
    tol : float
        Tolerance on the scale-relative residual: ``||grad_u E||_inf / ||f||_inf`` (smooth
        rho); for ``l1`` the larger of the stationarity ``||A^T(Au - f) + K^T p||_inf`` and
        the dual fixed-point residual ``||p - P(p + K u)||_inf``, over ``||f||_inf``.
        Rescaling ``f`` by ``s`` (and theta so that ``u*`` scales by ``s``) leaves it, and
        the iterations, unchanged.
    max_iter : int
        L-BFGS iterations, or primal-dual iterations for ``l1``.
    device : str or torch.device, optional
        Where to solve (default: ``f``'s device, or the CPU).

    Notes
    -----
    ``nu`` has shape (K,), >= 0; ``coeffs`` (K, L); ``w`` (H, W), >= 0. ``u`` has the shape
    of ``f`` as ``(n, H, W)``. Filters are applied with reflected boundaries (``H, W > m // 2``).
    Capabilities, smooth rho: ``optimality`` (``grad_u E`` by autograd: implicit solves with
    Hessian-vector products), ``step`` (``u - eta grad_u E``, ``eta = 1/L`` with ``L`` a
    power-iteration bound of the Hessian's largest eigenvalue), ``energy``. ``l1``: ``step``
    (the primal-dual map on ``z = (u, p)``) and ``energy``; no ``mirror`` (``why_not``: the
    box mirror's tail is too slow).
    The log-Student-t is not convex (``rho'' >= -1/4``): ``u*`` is a local minimizer,
    strict where the Hessian is positive definite.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> f = np.random.default_rng(0).random((1, 8, 8))
    >>> prob = bl.problems.ImagePrior(f)
    >>> nu, coeffs = np.full(2, 0.1), np.eye(2, 8)
    >>> sol = prob.solve((nu, coeffs))
    >>> sol.x.shape, sol.converged
    ((1, 8, 8), True)
    """

    name = "image_prior"

    def __init__(self, f, penalty="student_t", operator="identity", blur_sigma=1.0,
                 filter_size=3, eps=1e-2, weight_map=False, tol=1e-10, max_iter=5000,
                 device=None):
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
        if operator not in ("identity", "blur"):
            raise ValueError(f"operator must be 'identity' or 'blur', got {operator!r}")
        if not (np.isfinite(blur_sigma) and blur_sigma > 0):
            raise ValueError(f"blur_sigma must be > 0 (pixels), got {blur_sigma}")
        if int(filter_size) != filter_size or filter_size < 3 or filter_size % 2 == 0:
            raise ValueError(f"filter_size must be an odd integer >= 3, got {filter_size}")
        if not (np.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be finite and > 0, got {eps}")
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        images, f_device = _as_images(f)
        self.penalty, self.operator, self.blur_sigma = penalty, operator, float(blur_sigma)
        self.filter_size, self.eps, self.weight_map = int(filter_size), float(eps), bool(weight_map)
        self.tol, self.max_iter = float(tol), int(max_iter)
        self.device = torch.device(device) if device is not None else (f_device or
                                                                       torch.device("cpu"))
        self.identity = operator == "identity"
        radius = self.filter_size // 2
        if not self.identity:
            radius = max(radius, int(np.ceil(3 * self.blur_sigma)))
        if min(images.shape[1:]) <= radius:
            raise ValueError(f"f: images must be larger than {radius} pixels per side (the "
                             f"filter / blur radius, reflected boundaries), got {images.shape[1:]}")
        self.f = images
        self.shape = images.shape
        self.basis = dct_basis(self.filter_size)
        scale = float(np.abs(images).max())
        self.scale = scale if scale > 0 else 1.0
        if self.identity:
            self.kernel = None
        else:
            x = np.arange(-int(np.ceil(3 * self.blur_sigma)), int(np.ceil(3 * self.blur_sigma)) + 1)
            g = np.exp(-0.5 * (x / self.blur_sigma) ** 2)
            self.kernel = g / g.sum()
        self._cache = {}
        self._serial = self.device.type == "cpu" and images.size < _SERIAL_MAX

    def __repr__(self):
        blur = "" if self.identity else f", blur_sigma={self.blur_sigma}"
        return (f"ImagePrior(f of shape {self.shape}, penalty={self.penalty!r}, "
                f"operator={self.operator!r}{blur}, filter_size={self.filter_size}, "
                f"weight_map={self.weight_map})")

    @property
    def n_coeffs(self):
        """``L``: basis coefficients per filter."""
        return self.basis.shape[0]

    def offers(self):
        """Smooth rho: optimality, gradient step, energy; l1: primal-dual step, energy."""
        if self.penalty == "l1":
            return Capabilities(
                step=StepMap(self.step, start=self._pd_start, state=self._pd_state,
                             output=self._pd_output),
                energy=self.energy, why_not=_L1_WHY_NOT)
        return Capabilities(optimality=Optimality(self.optimality),
                            step=StepMap(self.step, start=self.init), energy=self.energy,
                            why_not=_SMOOTH_WHY_NOT)

    @classmethod
    def examples(cls):
        """Return two 3 x 3 filters on a 6 x 6 image (log-Student-t), one on 5 x 5 (l1)."""
        f = 0.5 + 0.5 * np.sin(np.add.outer(np.arange(6.0), 0.7 * np.arange(6.0)))[None]
        coeffs = np.array([[1.0, 0.2, 0.0, 0.3, 0, 0, 0, 0.1],
                           [0.0, 1.0, 0.1, 0.0, 0.2, 0, 0, 0.0]])
        # tol 1e-12: finite differences (the contract's reference for l1) divide solver
        # error by h.
        return [("image_prior-student_t", cls(f, tol=1e-12),
                 (np.array([0.05, 0.08]), coeffs)),
                ("image_prior-l1", cls(f[:, :5, :5], penalty="l1", tol=1e-12, max_iter=20000),
                 (np.array([0.02]), coeffs[:1]))]

    # validation -----------------------------------------------------------------------
    def check_theta(self, theta):
        """``(nu, coeffs[, w])``: nu (K,) >= 0, coeffs (K, L), w (H, W) >= 0, all finite."""
        n_parts = 3 if self.weight_map else 2
        if not isinstance(theta, (tuple, list)) or len(theta) != n_parts:
            what = "(nu, coeffs, w)" if self.weight_map else "(nu, coeffs)"
            raise ValueError(f"ImagePrior takes theta = {what}: per-filter weights, filter "
                             f"coefficients in the DCT basis{', a weight map' * self.weight_map}")
        nu = check_array(theta[0], "nu", ndim=1)
        if nu.size == 0:
            raise ValueError("nu must hold one weight per filter (at least one filter)")
        if np.any(nu < 0):
            raise ValueError(f"nu must be >= 0, got min {nu.min():.3g}; optimize log(nu) "
                             "(log_scale=True) to keep it positive")
        coeffs = check_array(theta[1], "coeffs", shape=(nu.size, self.n_coeffs))
        parts = (nu, np.ascontiguousarray(coeffs))
        if self.weight_map:
            w = check_array(theta[2], "w", shape=self.shape[1:])
            if np.any(w < 0):
                raise ValueError(f"w must be >= 0, got min {w.min():.3g}")
            parts += (np.ascontiguousarray(w),)
        return parts

    def init(self, parts):
        """Start from the observed images."""
        return self.f.copy()

    # torch operators ------------------------------------------------------------------
    def _data(self, like):
        """``f``, the basis and the blur kernel on ``like``'s device and dtype (cached)."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            def put(a):
                return None if a is None else torch.as_tensor(a).to(like.device, like.dtype)
            self._cache[key] = (put(self.f), put(self.basis), put(self.kernel))
        return self._cache[key]

    def _filters(self, coeffs, like):
        """``(K, m, m)`` filters ``sum_l coeffs[k, l] B_l``."""
        basis = self._data(like)[1]
        return torch.einsum("kl,lij->kij", coeffs.to(like.device, like.dtype), basis)

    def responses(self, u, filters):
        """``(K_k u)``: ``(n, K, H, W)``, correlation with reflected boundaries."""
        r = self.filter_size // 2
        padded = F.pad(u[:, None], (r, r, r, r), mode="reflect")
        return F.conv2d(padded, filters[:, None])

    def apply_operator(self, u):
        """Apply ``A``: the identity, or the separable Gaussian blur (reflected boundaries)."""
        if self.identity:
            return u
        g = self._data(u)[2]
        r = (g.numel() - 1) // 2
        x = F.pad(u[:, None], (r, r, r, r), mode="reflect")
        x = F.conv2d(x, g.reshape(1, 1, 1, -1))
        return F.conv2d(x, g.reshape(1, 1, -1, 1))[:, 0]

    def _parts(self, theta, like):
        parts = tuple(t.to(like.device, like.dtype) for t in theta)
        nu, coeffs = parts[0], parts[1]
        w = parts[2] if self.weight_map else None
        return nu, coeffs, w

    def _weights(self, nu, w):
        """``nu_k w_ij`` broadcast to ``(1, K, H, W)`` (or ``(1, K, 1, 1)``)."""
        scale = nu.reshape(1, -1, 1, 1)
        return scale if w is None else scale * w[None, None]

    def regularizer(self, u, theta):
        """``sum_k nu_k sum_ij w_ij rho((K_k u)_ij)``, summed over the images."""
        nu, coeffs, w = self._parts(theta, u)
        z = self.responses(u, self._filters(coeffs, u))
        return torch.sum(self._weights(nu, w) * _rho(z, self.penalty, self.eps))

    @_serial_if_small
    def energy(self, x, theta):
        """``E(u, theta)``, summed over the images (torch, on ``x``'s device)."""
        f = self._data(x)[0]
        return 0.5 * torch.sum((self.apply_operator(x) - f) ** 2) + self.regularizer(x, theta)

    @_serial_if_small
    def optimality(self, x, theta):
        """``grad_u E(u, theta)``, differentiable in u and theta (smooth rho)."""
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_()
            (grad,) = torch.autograd.grad(self.energy(x_in, theta), x_in, create_graph=True)
        return grad

    def _power(self, apply, like):
        """Largest eigenvalue of the PSD map ``apply`` on one image (power iteration)."""
        gen = torch.Generator().manual_seed(0)
        v = torch.rand((1,) + self.shape[1:], generator=gen, dtype=torch.float64)
        v = v.to(like.device, like.dtype)
        lam = 0.0
        with torch.no_grad():
            for _ in range(_POWER_ITERATIONS):
                v = v / torch.linalg.vector_norm(v)
                Av = apply(v)
                lam = float(torch.sum(v * Av))
                v = Av
        return _POWER_SAFETY * max(lam, 1e-300)

    def _quadratic_map(self, nu, coeffs, w, curvature, like):
        """``v -> A^T A v + curvature sum_k nu_k K_k^T diag(w) K_k v`` by autograd."""
        filters = self._filters(coeffs, like).detach()
        weights = self._weights(nu, w).detach()

        def apply(v):
            with torch.enable_grad():
                x = v.detach().requires_grad_()
                q = 0.5 * torch.sum(self.apply_operator(x) ** 2) + 0.5 * curvature * torch.sum(
                    weights * self.responses(x, filters) ** 2)
                return torch.autograd.grad(q, x)[0]
        return apply

    @_serial_if_small
    def _norm_k(self, coeffs, nu, like, w=None):
        """``||(nu_k w K_k)_k||``, the norm of the stacked weighted filters (power iteration)."""
        weights = self._weights(nu, w) ** 2
        filters = self._filters(coeffs, like)

        def gram(v):
            with torch.enable_grad():
                x = v.detach().requires_grad_()
                q = 0.5 * torch.sum(weights * self.responses(x, filters) ** 2)
                return torch.autograd.grad(q, x)[0]
        return float(np.sqrt(self._power(gram, like)))

    def step_sizes(self, theta, like=None):
        """Smooth rho: ``eta = 1/L``; l1: ``(tau, sigma, ||K||)`` of the primal-dual method.

        ``L >= ||A||^2 + max rho'' ||sum_k nu_k K_k^T diag(w) K_k||`` (``max rho''`` = 2
        for the log-Student-t, ``1/eps`` for the smoothed l1) by power iteration with a
        safety factor 1.1. ``l1``: ``||K||`` of the stacked filters ``K_k``;
        identity ``A``: ``tau = sigma = 0.99/||K||``; blur (Condat-Vu):
        ``sigma = 1/||K||``, ``tau = 1/(||K|| + ||A||^2)``.
        """
        like = torch.empty((), dtype=torch.float64, device=self.device) if like is None else like
        parts = tuple(torch.as_tensor(np.asarray(p)) if not isinstance(p, torch.Tensor)
                      else p.detach().cpu() for p in theta)
        key = ("steps", like.device, tuple(p.numpy().tobytes() for p in parts))
        if key in self._cache:
            return self._cache[key]
        nu, coeffs, w = self._parts(parts, like)
        if self.penalty == "l1":
            norm_k = self._norm_k(coeffs, torch.ones_like(nu), like)
            if self.identity:
                out = (0.99 / norm_k, 0.99 / norm_k, norm_k)
            else:
                lip = self._power(self._quadratic_map(nu, coeffs, w, 0.0, like), like)
                out = (1.0 / (norm_k + lip), 1.0 / norm_k, norm_k)
        else:
            curvature = 2.0 if self.penalty == "student_t" else 1.0 / self.eps
            out = 1.0 / self._power(self._quadratic_map(nu, coeffs, w, curvature, like), like)
        if len(self._cache) > 64:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "steps"}
        self._cache[key] = out
        return out

    # smooth rho: gradient step ---------------------------------------------------------
    @_serial_if_small
    def step(self, z, theta):
        """Smooth rho: ``u - eta grad_u E`` (``eta = 1/L``); l1: one primal-dual step."""
        if self.penalty == "l1":
            return self._pd_step(z, theta)
        return z - self.step_sizes(theta, z) * self.optimality(z, theta)

    # l1: primal-dual ------------------------------------------------------------------
    def _adjoint(self, p, filters, like):
        """``sum_k K_k^T p_k`` (autograd of the linear map, differentiable in p and filters)."""
        with torch.enable_grad():
            x = torch.zeros(self.shape, dtype=like.dtype, device=like.device, requires_grad=True)
            (g,) = torch.autograd.grad(torch.sum(self.responses(x, filters) * p), x,
                                       create_graph=True)
        return g

    def _pd_split(self, z, like):
        n, H, W = self.shape
        size = n * H * W
        return z[:size].reshape(self.shape), z[size:].reshape(n, -1, H, W)

    def _pd_iterate(self, u, p, f, filters, bound, tau, sigma):
        """Step ``u+`` (prox/gradient) from ``u - tau K^T p``, ``p+ = P(p + sigma K(2u+ - u))``."""
        kt = self._adjoint(p, filters, u)
        if self.identity:
            u_new = (u - tau * kt + tau * f) / (1.0 + tau)
        else:
            with torch.enable_grad():
                x = u.detach().requires_grad_() if not u.requires_grad else u
                data_grad = torch.autograd.grad(0.5 * torch.sum((self.apply_operator(x) - f) ** 2),
                                                x, create_graph=u.requires_grad)[0]
            u_new = u - tau * (data_grad + kt)
        q = p + sigma * self.responses(2.0 * u_new - u, filters)
        return u_new, torch.minimum(torch.maximum(q, -bound), bound)

    def _pd_step(self, z, theta):
        """One primal-dual step on the flattened state ``z = (u, p)``."""
        tau, sigma, _ = self.step_sizes(theta, z)
        nu, coeffs, w = self._parts(theta, z)
        u, p = self._pd_split(z, z)
        f = self._data(z)[0]
        bound = self._weights(nu, w).expand(p.shape)
        u_new, p_new = self._pd_iterate(u, p, f, self._filters(coeffs, z), bound, tau, sigma)
        return torch.cat([u_new.reshape(-1), p_new.reshape(-1)])

    def _pd_start(self, parts):
        """``z_0 = (f, 0)``, flattened."""
        n, H, W = self.shape
        return np.concatenate([self.f.ravel(), np.zeros(n * len(parts[0]) * H * W)])

    def _pd_state(self, solution):
        return np.concatenate([solution.x.ravel(), solution.info["dual"].ravel()])

    def _pd_output(self, z, theta):
        return z[:self.f.size].reshape(self.shape)

    def _pd_residual(self, u, p, f, filters, bound):
        """Scale-relative residual: stationarity and the dual fixed point, over ``||f||_inf``."""
        data = self.apply_operator(u) - f
        if not self.identity:
            with torch.enable_grad():
                x = u.detach().requires_grad_()
                data = torch.autograd.grad(0.5 * torch.sum((self.apply_operator(x) - f) ** 2),
                                           x)[0]
        stat = float(torch.max(torch.abs(data + self._adjoint(p, filters, u).detach())))
        q = p + self.responses(u, filters)
        dual = float(torch.max(torch.abs(p - torch.minimum(torch.maximum(q, -bound), bound))))
        return max(stat, dual) / self.scale

    # solvers --------------------------------------------------------------------------
    @_serial_if_small
    def _solve(self, theta, x0):
        like = torch.empty((), dtype=torch.float64, device=self.device)
        theta_t = tuple(torch.as_tensor(np.asarray(t)).to(self.device) for t in theta)
        u = torch.as_tensor(x0).to(self.device)
        if self.penalty == "l1":
            return self._solve_pd(theta_t, u, like)
        return self._solve_smooth(theta_t, u)

    def _solve_smooth(self, theta, u0):
        # L-BFGS on y = u / s, E(s y) / s^2 with s = ||f||_inf: the iterates are the same for
        # any rescaling of the data (f -> s f, nu -> s^2 nu, coeffs -> coeffs / s).
        s = self.scale
        y = (u0 / s).clone().requires_grad_()
        atol = self.tol * s
        opt = torch.optim.LBFGS([y], lr=1.0, max_iter=self.max_iter, max_eval=2 * self.max_iter,
                                tolerance_grad=self.tol, tolerance_change=0.0, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            value = self.energy(s * y, theta) / (s * s)
            value.backward()
            return value

        opt.step(closure)
        n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
        x = s * y.detach()
        grad = self.optimality(x, theta).detach()
        residual = float(grad.abs().max())
        for _ in range(_NEWTON_POLISH):      # L-BFGS stalls near round-off: Newton-CG finishes
            if residual <= atol:
                break
            candidate = x - self._newton_step(x, theta, grad)
            new_grad = self.optimality(candidate, theta).detach()
            new_residual = float(new_grad.abs().max())
            if not new_residual < residual:
                break
            x, grad, residual, n_iter = candidate, new_grad, new_residual, n_iter + 1
        return x.cpu().numpy(), n_iter, residual / self.scale

    def _newton_step(self, x, theta, grad):
        """``H^{-1} grad`` by conjugate gradients on Hessian-vector products (torch)."""
        xg = x.detach().requires_grad_()
        with torch.enable_grad():
            g = self.optimality(xg, theta)

        def hvp(v):
            return torch.autograd.grad(g, xg, v, retain_graph=True)[0]

        s = torch.zeros_like(grad)
        r = grad.clone()
        d = r.clone()
        rr = torch.sum(r * r)
        stop = (1e-14 * torch.sqrt(rr)) ** 2
        for _ in range(min(10 * grad.numel(), 2000)):
            Hd = hvp(d)
            curv = torch.sum(d * Hd)
            if not curv > 0:                 # negative curvature: not near a strict minimum
                break
            alpha = rr / curv
            s, r = s + alpha * d, r - alpha * Hd
            rr_new = torch.sum(r * r)
            if rr_new <= stop:
                break
            d, rr = r + (rr_new / rr) * d, rr_new
        return s.detach()

    def _solve_pd(self, theta, u, like):
        tau, sigma, _ = self.step_sizes(theta, like)
        nu, coeffs, w = self._parts(theta, like)
        f = self._data(like)[0]
        filters = self._filters(coeffs, like)
        n, H, W = self.shape
        p = torch.zeros((n, nu.numel(), H, W), dtype=torch.float64, device=self.device)
        bound = self._weights(nu, w).expand(p.shape)
        residual, k = np.inf, 0
        with torch.no_grad():
            for k in range(1, self.max_iter + 1):
                u, p = self._pd_iterate(u, p, f, filters, bound, tau, sigma)
                if k % 10 == 0 or k == self.max_iter:
                    residual = self._pd_residual(u, p, f, filters, bound)
                    if residual <= self.tol:
                        break
        return u.cpu().numpy(), k, residual, {"dual": p.cpu().numpy()}

