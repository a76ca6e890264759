r"""Piecewise-polynomial projections: 1-D k-piece fits and 2-D connected components.

.. math:: h^*(s) = \arg\min_{h \in \mathcal F^k_d} \tfrac12\|h - s\|^2

with :math:`\mathcal F^k_d` the signals that are polynomials of degree ``d`` on each of
``k`` consecutive pieces (a union of subspaces, one per partition). Where the optimal
partition ``B_1, ..., B_k`` is unique, it stays optimal near ``s`` and ``h^*`` is the
orthogonal projection onto that partition's subspace, so its Jacobian is block diagonal
(Theorem 1 of the paper below):

.. math:: \frac{\partial h^*}{\partial s} = \operatorname{diag}(H_1, \dots, H_k), \qquad
          H_j = V_j (V_j^\top V_j)^{-1} V_j^\top = Q_j Q_j^\top,

``V_j`` the Vandermonde matrix of the piece's local abscissa ``0..|B_j|-1`` and ``Q_j`` an
orthonormal basis of its range. ``H_j`` depends only on ``(|B_j|, d_j)``: it is cached per
pair and applied in O(|B_j| (d_j + 1)), never formed. In 2-D (:class:`ConnectedComponents`)
the partition is the connected components of the quantized image and each block averages
(equation (2) of the paper).

References
----------
"Differentiable programming for piecewise polynomial functions", anonymous authors,
paper under double-blind review.
H. V. Jagadish et al., "Optimal histograms with quality guarantees", VLDB 1998.
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import Batch, BatchSolution, Manifold
from bilevel.problems.base import Capabilities, Problem, check_array, no_kinks, pick_kernel

__all__ = ["ConnectedComponents", "PiecewisePolynomial"]

# Batches with fewer entries run serially (see bilevel.solvers.serial): the DP costs
# O(n^2 k) per row, so a few rows already fill a thread team.
_PARALLEL_MIN_WORK = 5_000_000
_PARALLEL_MIN_ENTRIES = 200_000
# Cached hat-matrix bases of single pieces (manifold, hat_matrix): at most this many
# float64 entries, then the cache restarts.
_BASIS_CACHE_MAX = 1 << 23
# The VJP kernel's table: every (length, degree) basis up to this length, within this
# many float64 entries (3 MB for degree 1); longer pieces get theirs computed on the fly.
_TABLE_LENGTH = 512
_TABLE_ENTRIES = 1 << 19


# Why the piecewise maps lack a capability (Capabilities.why_not).
_PP_WHY_NOT = {
    "optimality": "the k-piece polynomials are a union of subspaces (one per partition), not a "
                  "convex set: no optimality residual; h* is the projection onto the optimal "
                  "partition's subspace (analytic, partial_smoothness)",
    "constraints": "the k-piece polynomials are a union of subspaces, with no smooth "
                   "constraint description (which partition holds is combinatorial)",
    "step": "the projection onto the union of subspaces is discontinuous (its partition "
            "jumps) and computed by the exact dynamic program: a projected step is the solve "
            "itself, whose derivative is the partition's projector (analytic)",
    "mirror": "the k-piece polynomials are a union of subspaces with an empty interior: no "
              "Legendre function has it as its domain",
    "dual": "the feasible set (a union of subspaces) is not convex: no convex dual; "
            "p(s) = ||s - h*||^2 / 2 has the gradient s - h* by the envelope theorem "
            "(envelope)",
}
_CC_WHY_NOT = {
    "optimality": "the component map is a heuristic, not the minimizer of an energy (a mean "
                  "over the components of the quantized image): no optimality residual; its "
                  "derivative is the components' projector (analytic)",
    "constraints": "no energy is minimized: no KKT system",
    "step": "x* is not the fixed point of an iteration: it is computed directly, by labelling "
            "the components and averaging over them",
    "mirror": "x* is not the solution of a minimization over a set: no Bregman method",
    "dual": "no energy is minimized: no value p(theta) and no dual",
    "energy": "no energy is minimized (the partition is a heuristic of the paper): no optimal "
              "value to differentiate",
}


def _kernel(name, parallel):
    from bilevel.solvers import piecewise

    return pick_kernel(piecewise, name, parallel)


def _as_single(theta, name, ndim):
    if isinstance(theta, (tuple, list)):
        if len(theta) != 1:
            raise ValueError(f"theta is the {name} alone (an array, or a 1-tuple), "
                             f"got a tuple of {len(theta)}")
        theta = theta[0]
    return check_array(theta, name, ndim=ndim)


def _cotangent(v, shape):
    v = np.asarray(v, dtype=np.float64)
    if v.size != int(np.prod(shape)):
        raise ValueError(f"v must have the shape of x, {shape}, got {v.shape}")
    return np.ascontiguousarray(v.reshape(shape))


@register_problem
class PiecewisePolynomial(Problem):
    r"""Best l2 approximation by ``k`` consecutive polynomial pieces; theta is ``s``.

    .. math:: h^*(s) = \arg\min_h \tfrac12\|h - s\|^2 \quad\text{s.t. } h
              \text{ is a polynomial of degree } d_j \text{ on piece } B_j,
              \ B_1, \dots, B_k \text{ a partition of } 0..n-1 \text{ into intervals}

    Parameters
    ----------
    k : int
        Number of pieces, ``>= 1``; every piece is non-empty, so signals need ``n >= k``.
    degree : int or sequence of int
        Polynomial degree, ``>= 0``, of every piece (0: a k-histogram, 1: piecewise
        linear), or one degree per piece, left to right (length ``k``).

    Notes
    -----
    Solver (:func:`bilevel.solvers.pp_dp`): the exact dynamic program over partitions,
    O(n^2 (k + d^2)) time, O(n k) memory, with segment costs from running QR
    factorizations (stable on long signals). ``Solution.info`` holds ``partition``
    (boundaries ``b`` of shape (k + 1,): piece ``j`` is ``s[b[j]:b[j+1]]``),
    ``breakpoints`` (``b[1:-1]``), ``degrees``, ``cost`` (``||s - h*||^2``), ``gap`` (the
    second-best partition's cost minus the best) and ``margin``, the relative gap
    ``gap / (max|s| (max|s| + ||s - mean s||))``: a relative change of any ``s_i`` by less
    than about it keeps the partition optimal. Where the optimal partition is not unique
    (``gap = 0``: e.g. a signal with fewer than ``k`` true pieces, split anywhere at zero
    cost) the derivative is one one-sided derivative.

    Capabilities: ``analytic_vjp`` (the block-sparse Jacobian, cached hat matrices),
    ``manifold`` (the partition's subspace, for ``partial_smoothness`` and the steps of
    ``finite_difference``), ``energy`` (``1/2||x - s||^2``: ``bl.value_gradient`` gives
    ``s - h*``) and ``straight_through`` (the paper's identity-backward baseline).
    :class:`bilevel.torch.Layer` batches over leading dimensions with a numba fast path.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.PiecewisePolynomial(k=2, degree=0)
    >>> sol = prob.solve(np.array([0.0, 0.2, 0.1, 3.0, 3.2]))
    >>> sol.x.round(3), sol.info["partition"]
    (array([0.1, 0.1, 0.1, 3.1, 3.1]), array([0, 3, 5]))
    >>> bl.vjp(prob, np.array([0.0, 0.2, 0.1, 3.0, 3.2]), np.array([3.0, 0, 0, 1, 0]))
    array([1. , 1. , 1. , 0.5, 0.5])
    """

    name = "piecewise_polynomial"

    def __init__(self, k, degree=0):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1 (the number of pieces), got {k!r}")
        self.k = int(k)
        deg = np.atleast_1d(np.asarray(degree))
        if deg.ndim != 1 or not np.issubdtype(deg.dtype, np.integer):
            raise ValueError(f"degree must be an integer or a sequence of k={self.k} integers, "
                             f"got {degree!r}")
        if deg.size == 1:
            deg = np.full(self.k, deg[0])
        if deg.size != self.k:
            raise ValueError(f"degree must be one integer or k={self.k} of them (one per "
                             f"piece), got {deg.size}")
        if np.any(deg < 0):
            raise ValueError(f"degree must be >= 0 (0: piecewise constant), got {degree!r}")
        self.degrees = np.ascontiguousarray(deg, dtype=np.int64)
        self._bases = {}
        self._basis_size = 0
        self._basis_table = None

    def __repr__(self):
        d = self.degrees
        deg = int(d[0]) if np.all(d == d[0]) else d.tolist()
        return f"PiecewisePolynomial(k={self.k}, degree={deg})"

    def offers(self):
        """Return the block-sparse closed form, the partition's subspace, E, straight-through."""
        return Capabilities(analytic_vjp=self.analytic_vjp, manifold=self.manifold,
                            energy=self.energy, straight_through=True,
                            batch=Batch(theta_ndim=(1,), solve=self._solve_batch,
                                        analytic_vjp=self._vjp_batch,
                                        manifold_vjp=self._manifold_vjp_batch),
                            why_not=_PP_WHY_NOT)

    @classmethod
    def examples(cls):
        """Return a 2-histogram of a signal with a unique, well-separated partition."""
        # {0, 0.1} | {2}: the map is linear near theta.
        return [("piecewise_polynomial-histogram", cls(2, 0), np.array([0.0, 0.1, 2.0]))]

    check_batch = Problem.check_batch_finite    # check_theta: shapes and finiteness only

    def check_theta(self, theta):
        """``s`` of shape (n,) with ``n >= k``, finite (a bare array or a 1-tuple)."""
        s = _as_single(theta, "s", 1)
        if s.shape[0] < self.k:
            raise ValueError(f"s has {s.shape[0]} samples but k={self.k} non-empty pieces need "
                             "at least k; lower k")
        return (np.ascontiguousarray(s),)

    def init(self, parts):
        """Unused by the exact DP; the signal itself."""
        return parts[0].copy()

    @staticmethod
    def _margin(S, gaps):
        """Relative gaps ``gap / (max|s| (max|s| + ||s - mean||))`` of every row."""
        A = np.abs(S).max(axis=-1)
        B = np.linalg.norm(S - S.mean(axis=-1, keepdims=True), axis=-1)
        denom = A * (A + B)
        with np.errstate(divide="ignore", invalid="ignore"):
            m = np.where(denom > 0, gaps / np.where(denom > 0, denom, 1.0),
                         np.where(gaps > 0, np.inf, 0.0))
        return np.where(np.isinf(gaps), np.inf, np.maximum(m, 0.0))

    def _solve(self, theta, x0):
        from bilevel.solvers.piecewise import pp_dp

        s = np.ascontiguousarray(theta[0] if isinstance(theta, tuple) else theta)
        fit, breaks, cost, gap = pp_dp(s, self.k, self.degrees)
        margin = float(self._margin(s[None], np.array([gap]))[0])
        return fit, 1, 0.0, {"partition": breaks, "breakpoints": breaks[1:-1].copy(),
                             "degrees": self.degrees.copy(), "cost": float(cost),
                             "gap": float(gap), "margin": margin}

    # hat matrices ---------------------------------------------------------------------
    def _table(self):
        """Bases of every ``(length, degree)`` with length <= ``_TABLE_LENGTH``, built once."""
        if self._basis_table is None:
            from bilevel.solvers.piecewise import pp_basis_table

            dmax = int(self.degrees.max())
            per_length = (dmax + 1) * (dmax + 2) // 2          # sum over q of (q + 1)
            Lmax = int(min(_TABLE_LENGTH, np.sqrt(2 * _TABLE_ENTRIES / per_length)))
            self._basis_table = pp_basis_table(max(Lmax, 1), dmax)
        return self._basis_table

    def basis(self, length, degree):
        """Orthonormal ``Q`` (length, min(degree + 1, length)): the hat matrix is ``Q Q^T``.

        Cached per ``(length, degree)``.
        """
        key = (int(length), int(degree))
        Q = self._bases.get(key)
        if Q is None:
            from bilevel.solvers.piecewise import pp_basis

            Q = np.ascontiguousarray(pp_basis(key[0], key[1]))
            if self._basis_size + Q.size > _BASIS_CACHE_MAX:
                self._bases.clear()
                self._basis_size = 0
            self._bases[key] = Q
            self._basis_size += Q.size
        return Q

    def hat_matrix(self, length, degree):
        """Return the dense hat matrix ``V (V^T V)^+ V^T`` of one piece (inspection, tests)."""
        Q = self.basis(length, degree)
        return Q @ Q.T

    def _hat_vjp(self, V, breaks):
        """``G[r] = blockdiag(Q Q^T) V[r]`` for (b, n) cotangents and (b, k + 1) partitions."""
        table, offsets = self._table()
        return _kernel("pp_hat_vjp", V.size >= _PARALLEL_MIN_ENTRIES)(
            V, breaks, self.degrees, table, offsets)

    # torch map and structure ----------------------------------------------------------
    def energy(self, x, theta):
        """``1/2 ||x - s||^2`` (minimized over the piecewise polynomials ``x``)."""
        s = theta[0] if isinstance(theta, (tuple, list)) else theta
        return 0.5 * torch.sum((x - s) ** 2)

    def analytic_vjp(self, solution, v):
        """Block-sparse ``(dh*/ds)^T v``: ``Q_j Q_j^T v_{B_j}`` on every piece, O(n (d + 1))."""
        v = _cotangent(v, solution.x.shape)
        breaks = np.ascontiguousarray(solution.info["partition"], dtype=np.int64)
        return (self._hat_vjp(v[None], breaks[None])[0],)

    def manifold(self, solution):
        """Return the partition's subspace ``{blockdiag(Q_j) z}``; ``H_M = I``.

        ``E_M(z, s) = 1/2 ||B z - s||^2`` with ``B = blockdiag(Q_j)`` orthonormal, so
        ``grad_z E_M = z - B^T s`` and ``dh*/ds = B B^T``.
        """
        breaks = solution.info["partition"]
        blocks = [(int(a), int(b), self.basis(b - a, q))
                  for a, b, q in zip(breaks[:-1], breaks[1:], self.degrees)]
        dims = np.cumsum([0] + [Q.shape[1] for _, _, Q in blocks])
        n = solution.x.shape[0]

        def restrict(v):
            v = _cotangent(v, (n,))
            return np.concatenate([Q.T @ v[a:b] for a, b, Q in blocks])

        def lift(z):
            out = np.empty(n)
            for (a, b, Q), lo, hi in zip(blocks, dims[:-1], dims[1:]):
                out[a:b] = Q @ z[lo:hi]
            return out

        return Manifold(kind="partition", dim=int(dims[-1]), margin=solution.info["margin"],
                        restrict=restrict, lift=lift,
                        solve=lambda b, pinv=False: np.asarray(b, dtype=np.float64),
                        theta_vjp=lambda u: (-lift(u),),
                        theta_jvp=lambda dtheta: -restrict(dtheta[0]),
                        info={"partition": breaks, "gap": solution.info["gap"]})

    # batched kernels for bl.torch.Layer ------------------------------------------------
    def _solve_batch(self, S):
        """Fit every row of ``S`` (b, n); the partitions and margins are the certificate."""
        from bilevel.solvers import piecewise

        if S.shape[-1] < self.k:
            raise ValueError(f"s has {S.shape[-1]} samples but k={self.k} non-empty pieces "
                             "need at least k; lower k")
        if not np.all(np.isfinite(S)):
            raise ValueError("s contains NaN or Inf; clean the input first")
        work = S.shape[0] * S.shape[1] ** 2 * self.k
        kernel = pick_kernel(piecewise, "pp_dp", work >= _PARALLEL_MIN_WORK and S.shape[0] > 1)
        Y, breaks, _, gaps = kernel(np.ascontiguousarray(S), self.k, self.degrees)
        return BatchSolution(x=Y, parts=(S,), certificate={
            "partition": breaks, "margin": self._margin(S, gaps)})

    def _vjp_batch(self, batch, V):
        """Exact VJPs of every row: ``((G (b, n),), margins (b,))``."""
        cert = batch.certificate
        return (self._hat_vjp(np.ascontiguousarray(V), cert["partition"]),), cert["margin"]

    def _manifold_vjp_batch(self, batch, V, pinv=False):
        """Return the partition's projector (``H_M = I``: ``pinv`` is moot), as the closed form."""
        return self._vjp_batch(batch, V)


@register_problem
class ConnectedComponents(Problem):
    r"""Piecewise-constant 2-D map: the mean of the image over each connected component.

    .. math:: x^*(s)_p = \frac{1}{|C(p)|} \sum_{p' \in C(p)} s_{p'}, \qquad
              \frac{\partial x^*_p}{\partial s_{p'}} = \frac{[p' \in C(p)]}{|C(p)|},

    with ``C(p)`` the connected component of pixel ``p`` in the image quantized to
    ``levels`` bins: pixels are connected when they are neighbours with the same bin.
    The Jacobian (equation (2) of the paper) is the orthogonal projector onto the images
    constant on each component; its VJP averages ``v`` over each component.

    Parameters
    ----------
    levels : int
        Number of quantization bins, ``>= 1`` (the paper: 10).
    value_range : (float, float)
        ``(lo, hi)``: bin ``i`` is ``[lo + i w, lo + (i + 1) w)``, ``w = (hi - lo) /
        levels``; values outside fall into the first or last bin. Default (0, 1), the
        range of a sigmoid output.
    connectivity : {1, 2}
        1: 4-neighbourhood; 2: 8-neighbourhood (scikit-image's default for 2-D).

    Notes
    -----
    Labels by :func:`skimage.measure.label` (imported on first use). ``Solution.info``
    holds ``labels`` (H, W), ``n_components`` and ``margin``, the distance of the pixel
    closest to a bin edge divided by ``max(max|s|, w)``: a relative change of the pixels
    smaller than it leaves the components, hence the Jacobian, unchanged; ``margin = 0``
    means a pixel on an edge (a one-sided derivative). The partition is a heuristic of the
    paper, not the solution of an energy: the map is exact (the projection on the fixed
    components) where the margin is positive. Capabilities: ``analytic_vjp``, ``manifold``,
    ``straight_through``; :class:`bilevel.torch.Layer` batches over leading dimensions.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.ConnectedComponents(levels=2)
    >>> image = np.array([[0.1, 0.2, 0.9], [0.3, 0.8, 0.7]])
    >>> prob.solve(image).x
    array([[0.2, 0.2, 0.8],
           [0.2, 0.8, 0.8]])
    """

    name = "connected_components"

    def __init__(self, levels=10, value_range=(0.0, 1.0), connectivity=2):
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
            raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
        try:
            lo, hi = (float(v) for v in value_range)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"value_range must be (lo, hi), got {value_range!r}") from exc
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"value_range must be finite with lo < hi, got {value_range!r}")
        if connectivity not in (1, 2):
            raise ValueError(f"connectivity must be 1 (4 neighbours) or 2 (8), "
                             f"got {connectivity!r}")
        self.levels, self.value_range, self.connectivity = int(levels), (lo, hi), connectivity

    def offers(self):
        """Component averaging as the closed form and the manifold; straight-through."""
        return Capabilities(analytic_vjp=self.analytic_vjp, manifold=self.manifold,
                            straight_through=True,
                            batch=Batch(theta_ndim=(2,), solve=self._solve_batch,
                                        analytic_vjp=self._vjp_batch,
                                        manifold_vjp=self._manifold_vjp_batch),
                            why_not=_CC_WHY_NOT)

    @classmethod
    def examples(cls):
        """Return a 1 x 3 image away from the bin edges (the map is linear near it)."""
        return [("connected_components-image", cls(4), np.array([[0.12, 0.15, 0.81]]))]

    def __repr__(self):
        return (f"ConnectedComponents(levels={self.levels}, value_range={self.value_range}, "
                f"connectivity={self.connectivity})")

    check_batch = Problem.check_batch_finite    # check_theta: shapes and finiteness only

    def check_theta(self, theta):
        """``image`` of shape (H, W), finite (a bare array or a 1-tuple)."""
        image = _as_single(theta, "image", 2)
        if image.size == 0:
            raise ValueError(f"image must have at least one pixel, got shape {image.shape}")
        return (np.ascontiguousarray(image),)

    def init(self, parts):
        """Unused (a direct computation); the image itself."""
        return parts[0].copy()

    def quantize(self, image):
        """Bin index of every pixel, in ``0..levels-1`` (int32, image-shaped)."""
        lo, hi = self.value_range
        q = np.floor((np.asarray(image) - lo) * (self.levels / (hi - lo)))
        return np.clip(q, 0, self.levels - 1).astype(np.int32)

    def _labels(self, images):
        """Component labels ``0..K_r-1`` of every image (b, H, W), and the counts ``K_r``."""
        from skimage.measure import label

        Q = self.quantize(images)
        out = np.empty(Q.shape, dtype=np.int64)
        counts = np.empty(Q.shape[0], dtype=np.int64)
        for r in range(Q.shape[0]):
            lab, num = label(Q[r], background=-1, return_num=True,
                             connectivity=self.connectivity)
            out[r] = lab - 1
            counts[r] = num
        return out, counts

    def _margins(self, images):
        """Distance of the pixel closest to an interior bin edge, over ``max(max|s|, w)``."""
        b = images.shape[0]
        if self.levels == 1:
            return no_kinks(b)
        lo, hi = self.value_range
        w = (hi - lo) / self.levels
        frac = (images.reshape(b, -1) - lo) / w
        edge = np.clip(np.rint(frac), 1, self.levels - 1)
        dist = np.abs(frac - edge).min(axis=1) * w
        return dist / np.maximum(np.abs(images.reshape(b, -1)).max(axis=1), w)

    @staticmethod
    def _global(labels, counts):
        """Labels made distinct across the batch: row r's shifted by ``sum(counts[:r])``."""
        shift = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return (labels + shift.reshape((-1,) + (1,) * (labels.ndim - 1))).ravel()

    @staticmethod
    def _average(flat_labels, values, total):
        sums = np.bincount(flat_labels, weights=values.ravel(), minlength=total)
        sizes = np.bincount(flat_labels, minlength=total)
        return (sums / sizes)[flat_labels].reshape(values.shape)

    def _solve(self, theta, x0):
        image = theta[0] if isinstance(theta, tuple) else theta
        labels, counts = self._labels(image[None])
        x = self._average(labels.ravel(), image, int(counts[0]))
        return x, 1, 0.0, {"labels": labels[0], "n_components": int(counts[0]),
                           "margin": float(self._margins(image[None])[0])}

    def analytic_vjp(self, solution, v):
        """Average ``v`` over each component, broadcast to its pixels."""
        v = _cotangent(v, solution.x.shape)
        labels = solution.info["labels"]
        return (self._average(labels.ravel(), v, solution.info["n_components"]),)

    def manifold(self, solution):
        """Images constant on each component: ``B = [1_C / sqrt|C|]``, ``H_M = I``."""
        labels = solution.info["labels"].ravel()
        K = solution.info["n_components"]
        sqrt_sizes = np.sqrt(np.bincount(labels, minlength=K))
        shape = solution.x.shape

        def restrict(v):
            return np.bincount(labels, weights=_cotangent(v, shape).ravel(),
                               minlength=K) / sqrt_sizes

        def lift(z):
            return (np.asarray(z)[labels] / sqrt_sizes[labels]).reshape(shape)

        return Manifold(kind="connected components", dim=K, margin=solution.info["margin"],
                        restrict=restrict, lift=lift,
                        solve=lambda b, pinv=False: np.asarray(b, dtype=np.float64),
                        theta_vjp=lambda u: (-lift(u),),
                        theta_jvp=lambda dtheta: -restrict(dtheta[0]),
                        info={"labels": solution.info["labels"]})

    # batched kernels for bl.torch.Layer ------------------------------------------------
    def _solve_batch(self, S):
        """Component means of every image of ``S`` (b, H, W); the labels are the certificate."""
        if not np.all(np.isfinite(S)):
            raise ValueError("image contains NaN or Inf; clean the input first")
        labels, counts = self._labels(S)
        flat = self._global(labels, counts)
        total = int(counts.sum())
        return BatchSolution(x=self._average(flat, S, total), parts=(S,), certificate={
            "labels": flat, "n_components": total, "margin": self._margins(S)})

    def _vjp_batch(self, batch, V):
        """Component means of every cotangent image: ``((G (b, H, W),), margins (b,))``."""
        cert = batch.certificate
        return (self._average(cert["labels"], V, cert["n_components"]),), cert["margin"]

    def _manifold_vjp_batch(self, batch, V, pinv=False):
        """Return the components' projector (``H_M = I``: ``pinv`` is moot), as the closed form."""
        return self._vjp_batch(batch, V)
