"""Learn a filter-based image prior by bilevel optimization, and compare it with learned TV.
=========================================================================================

Lower level (``bl.problems.ImagePrior``), for degraded training patches f = A clean + noise::

    u*(theta) = argmin_u 1/2||A u - f||^2 + sum_k nu_k sum_ij rho((K_k u)_ij),
    K_k = sum_l coeffs[k, l] B_l   (B_l: zero-mean DCT-II atoms),

``A`` the identity (denoising) or a Gaussian blur, ``rho`` the log-Student-t
``log(1 + z^2)``, the smoothed l1 ``sqrt(z^2 + eps^2) - eps`` or ``|z|``. Upper level:
``sum over patches 1/2||u* - clean||^2`` over theta = (nu, coeffs).

Training recipe (after Chen, Ranftl and Pock 2014, who start from a TV-like operator and
optimize with L-BFGS):

1. TV-like start: the first two filters are the horizontal and vertical forward differences,
   the others the lowest-frequency DCT atoms of the same norm with a tenth of their weight;
   all filters are scaled by ``s`` (``--scale``: responses ``s (grad u)`` of order 1 where
   image gradients are ~0.1 for the log-Student-t; 1 for the l1 penalties, whose scale sits
   in ``nu``).
2. A 1-D search for the common weight: ``nu = a nu_rel`` over a log grid of ``a`` around the
   TV baseline's ``lam / s``, by the training loss (inner solves only).
3. L-BFGS (SciPy's L-BFGS-B) on ``(log nu, coeffs)`` with hypergradients from implicit
   differentiation (conjugate gradients on Hessian-vector products), warm-starting each inner
   solve and adjoint solve from the previous evaluation's. For the l1 penalties ``rho`` is
   homogeneous, so ``||K_k||`` is redundant with ``nu_k``: the filters are kept at norm
   ``sqrt(2) s`` (``coeffs = sqrt(2) s c / ||c||``), which also keeps the smoothing ``eps``
   meaningful.
4. ``rho = |z|`` (non-smooth): the smoothed-l1 prior's theta is the start, refined by L-BFGS
   on hypergradients of the primal-dual fixed point (``FixedPoint``, a truncated Neumann
   series).

The baseline is TV2D ``1/2||A u - f||^2 + lam ||grad u||_{2,1}`` with ``lam`` learned the
same way (L-BFGS on ``log lam``, hypergradients of the primal-dual fixed point summed over
the patches). Training images and held-out images are disjoint sets of scikit-image's
bundled images.

Run: ``python examples/learn_image_prior.py [--quick] [--out DIR]``; prints a PSNR table on
the held-out images and writes ``DIR/learn_image_prior.png`` (learned filters and
restorations; ``DIR`` defaults to ``examples/out``).

References: S. Roth, M. J. Black, "Fields of Experts", IJCV 2009; Y. Chen, R. Ranftl,
T. Pock, "Insights into analysis operator learning", IEEE TIP 2014; K. Kunisch, T. Pock,
SIAM J. Imaging Sci. 2013.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize

import bilevel as bl

TRAIN = ("camera", "astronaut", "coffee", "coins", "brick", "grass")
TEST = ("moon", "chelsea", "gravel")
LABELS = {"student_t": "log-t", "smooth_l1": "sm-l1", "l1": "l1"}


def load(name):
    """A bundled scikit-image picture as a grayscale float image in [0, 1], or None."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    try:
        img = getattr(skimage.data, name)()
    except Exception:            # noqa: BLE001 - an image that needs a download: skip it
        return None
    img = img_as_float(img)
    return rgb2gray(img[..., :3]) if img.ndim == 3 else img


def patches(names, size, per_image, rng):
    """Random ``size x size`` patches of the named images."""
    out = []
    for name in names:
        img = load(name)
        if img is None:
            continue
        for _ in range(per_image):
            i, j = (rng.integers(0, n - size) for n in img.shape)
            out.append(img[i:i + size, j:j + size])
    return np.stack(out)


def psnr(u, clean):
    return 10 * np.log10(1.0 / np.mean((u - clean) ** 2))


def degrade(clean, sigma, blur, rng):
    """``A clean + sigma/255 noise``; ``A`` a Gaussian blur of sd ``blur`` pixels (or none).

    The blur is ImagePrior's (radius ``ceil(3 blur)``, mirrored boundaries); TV2D's blur
    mirrors with the edge pixel repeated, which differs on the outermost pixels only.
    """
    from scipy.ndimage import gaussian_filter

    blurred = clean if not blur else np.stack(
        [gaussian_filter(c, blur, mode="mirror", truncate=3.0) for c in clean])
    return blurred + sigma / 255 * rng.standard_normal(clean.shape)


def lbfgs(fun, x0, iterations, desc, quiet):
    """SciPy's L-BFGS-B on ``fun(x) -> (value, grad)``, with a progress bar; the minimizer."""
    from tqdm import tqdm

    with tqdm(total=iterations, desc=desc, unit="iter", disable=quiet) as bar:
        def step(intermediate_result):          # SciPy passes the OptimizeResult by this name
            bar.set_postfix(loss=f"{intermediate_result.fun:.5g}")
            bar.update()

        return minimize(fun, x0, jac=True, method="L-BFGS-B", callback=step,
                        options={"maxiter": iterations, "maxfun": 2 * iterations}).x


def learn_tv(noisy, clean, args, blur):
    """``lam`` of TV2D: L-BFGS on ``log lam``, hypergradients summed over the patches.

    ``FixedPoint`` with a 200-term Neumann series: within 0.5% of central differences of the
    training loss on these patches (measured), a tenth of GMRES's time; its
    ``ConvergenceWarning`` (a truncated series by design) is silenced.
    """
    prob = bl.problems.TV2D("blur" if blur else "identity", blur_sigma=blur or 1.0)
    strategy = bl.strategies.FixedPoint(method="neumann", n_terms=200)
    losses = [bl.losses.Reconstruction(c) for c in clean]

    def fun(x):
        lam = float(np.exp(x[0]))
        value, grad = 0.0, 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bl.ConvergenceWarning)
            for f, loss in zip(noisy, losses):
                v, g = bl.hypergradient(prob, loss, (f, lam), strategy)
                value, grad = value + v, grad + float(g[1]) * lam
        return value, np.array([grad])

    return float(np.exp(lbfgs(fun, np.array([np.log(0.05)]), args.tv_iters, "TV2D lam",
                              args.quiet)[0]))


def initial_filters(n_filters, size, scale):
    """TV-like start: forward differences, then DCT atoms by frequency; weights ``nu_rel``."""
    basis = bl.problems.image_prior.dct_basis(size)
    c = size // 2
    dx = np.zeros((size, size))
    dx[c, c], dx[c, c + 1] = -1.0, 1.0
    diffs = [np.einsum("lij,ij->l", basis, h) for h in (dx, dx.T)]
    freq = [p + q for p in range(size) for q in range(size)][1:]     # atom l <-> (p, q)
    atoms = np.sqrt(2.0) * np.eye(size * size - 1)[np.argsort(freq, kind="stable")]
    rows = (diffs + list(atoms))[:n_filters]
    while len(rows) < n_filters:                 # more filters than atoms: repeat them
        rows.append(rows[len(rows) % len(atoms)])
    nu_rel = np.where(np.arange(n_filters) < 2, 1.0, 0.1)
    return nu_rel, scale * np.stack(rows)


class Prior:
    """The upper-level objective of one prior, ``x = (log nu, c) -> (loss, gradient)``.

    Keeps the last inner solution and adjoint as warm starts of the next evaluation.
    """

    def __init__(self, noisy, clean, penalty, args, blur, scale):
        self.penalty, self.scale, self.args = penalty, scale, args
        self.K = args.filters
        self.norm = np.sqrt(2.0) * scale if penalty != "student_t" else None
        operator = dict(operator="blur", blur_sigma=blur) if blur else {}
        # Inner tol 1e-6 (relative gradient residual): the hypergradient error it leaves is
        # far below the changes L-BFGS takes; max_iter bounds a bad trial step's cost.
        self.prob = bl.problems.ImagePrior(noisy, penalty=penalty, filter_size=args.filter_size,
                                           eps=args.eps, tol=1e-6, max_iter=500 if penalty !=
                                           "l1" else 5000, **operator)
        self.loss = bl.losses.Reconstruction(clean)
        self.strategy = (bl.strategies.FixedPoint(method="neumann", n_terms=args.l1_terms)
                         if penalty == "l1" else bl.strategies.Implicit(linear_solver="cg",
                                                                        tol=1e-6))
        self.clean, self.init, self.warm = clean, None, None

    def theta(self, x):
        nu, c = np.exp(x[:self.K]), x[self.K:].reshape(self.K, -1)
        if self.norm is None:
            return nu, c
        return nu, self.norm * c / np.linalg.norm(c, axis=1, keepdims=True)

    def __call__(self, x):
        nu, coeffs = self.theta(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bl.ConvergenceWarning)   # truncated Neumann (l1)
            value, grad, info = bl.hypergradient(self.prob, self.loss, (nu, coeffs),
                                                 self.strategy, init=self.init,
                                                 warm_start=self.warm, return_info=True)
        self.init, self.warm = info["solution"].x, info["warm_start"]
        g_c = grad[1]
        if self.norm is not None:   # through c -> norm c/||c||: (norm/||c||)(I - d d^T) g
            c = x[self.K:].reshape(self.K, -1)
            d = coeffs / self.norm
            g_c = self.norm * (g_c - d * np.sum(g_c * d, axis=1, keepdims=True)) \
                / np.linalg.norm(c, axis=1, keepdims=True)
        return value, np.concatenate([grad[0] * nu, g_c.ravel()])  # d/dlog nu = nu d/dnu

    def search(self, nu_rel, coeffs, center):
        """``a nu_rel`` with the least training loss, ``a`` on a log grid around ``center``."""
        best = (np.inf, None)
        for a in center * np.geomspace(0.25, 8.0, 11):
            u = self.prob.solve((a * nu_rel, coeffs)).x
            best = min(best, (0.5 * np.sum((u - self.clean) ** 2), a), key=lambda t: t[0])
        return best[1] * nu_rel


def learn_prior(noisy, clean, penalty, args, blur, lam, start=None):
    """Theta ``(nu, coeffs)`` of one prior (steps 1-4 of the module docstring)."""
    scale = args.scale if penalty == "student_t" else 1.0
    objective = Prior(noisy, clean, penalty, args, blur, scale)
    if start is None:
        nu_rel, coeffs = initial_filters(args.filters, args.filter_size, scale)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bl.ConvergenceWarning)
            nu = objective.search(nu_rel, coeffs, lam / scale)
    else:
        nu, coeffs = start
    iterations = args.l1_iters if penalty == "l1" else args.iters
    x = lbfgs(objective, np.concatenate([np.log(nu), coeffs.ravel()]), iterations,
              f"prior {penalty}", args.quiet)
    return objective.theta(x)


def restore_prior(noisy, theta, penalty, args, blur):
    operator = dict(operator="blur", blur_sigma=blur) if blur else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bl.ConvergenceWarning)   # tol 1e-8: PSNR is exact
        return bl.problems.ImagePrior(noisy, penalty=penalty, filter_size=args.filter_size,
                                      eps=args.eps, tol=1e-8, max_iter=5000,
                                      **operator).solve(theta).x


def run(sigma, blur, train_clean, test_clean, args):
    """Learn TV's lam and the priors at one degradation; PSNRs on the held-out images."""
    rng = np.random.default_rng(int(sigma) + int(100 * blur))
    train_noisy = degrade(train_clean, sigma, blur, rng)
    test_noisy = degrade(test_clean, sigma, blur, rng)
    start = time.perf_counter()
    lam = learn_tv(train_noisy, train_clean, args, blur)
    tv_prob = bl.problems.TV2D("blur" if blur else "identity", blur_sigma=blur or 1.0)
    restored = {"noisy": test_noisy,
                "TV2D": np.stack([tv_prob.solve((f, lam)).x for f in test_noisy])}
    thetas = {}
    for penalty in args.rho:
        begin = None if penalty != "l1" else thetas.get("smooth_l1")
        if penalty == "l1" and begin is None:
            raise SystemExit("--rho l1 starts from the smoothed-l1 prior: list smooth_l1 first")
        thetas[penalty] = learn_prior(train_noisy, train_clean, penalty, args, blur, lam, begin)
        restored[penalty] = restore_prior(test_noisy, thetas[penalty], penalty, args, blur)
    scores = {k: float(np.mean([psnr(u, c) for u, c in zip(v, test_clean)]))
              for k, v in restored.items()}
    label = f"{sigma:g}/255" + (f" blur {blur:g}" if blur else "")
    return dict(label=label, lam=lam, scores=scores, restored=restored, thetas=thetas,
                seconds=time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (well under a minute)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                        help="folder of the figure learn_image_prior.png (default: "
                             "examples/out)")
    parser.add_argument("--rho", nargs="+", choices=tuple(LABELS), default=None,
                        help="penalties (default: student_t smooth_l1; l1 starts from "
                             "smooth_l1 and costs a few minutes more per row)")
    parser.add_argument("--sigmas", type=int, nargs="*", default=None,
                        help="denoising noise levels, in 1/255 (default: 25 quick, 15 25 full; "
                             "none: only the deblurring row)")
    parser.add_argument("--blur", type=float, nargs=2, default=None, metavar=("SD", "SIGMA"),
                        help="also deblur: Gaussian blur sd in pixels, noise in 1/255 "
                             "(default: none quick, 1.0 5 full)")
    parser.add_argument("--no-blur", action="store_true", help="no deblurring row")
    parser.add_argument("--iters", type=int, default=None, help="L-BFGS iterations, smooth rho")
    parser.add_argument("--l1-iters", type=int, default=None, help="L-BFGS iterations, l1")
    parser.add_argument("--l1-terms", type=int, default=300,
                        help="Neumann terms of the l1 hypergradient")
    parser.add_argument("--tv-iters", type=int, default=None,
                        help="L-BFGS iterations, TV's lam (default: 4 quick, 8 full)")
    parser.add_argument("--filters", type=int, default=8, help="number of filters")
    parser.add_argument("--filter-size", type=int, default=3, help="odd filter width")
    parser.add_argument("--scale", type=float, default=10.0,
                        help="initial filter scale of the log-Student-t")
    parser.add_argument("--eps", type=float, default=1e-2, help="smoothing of smooth_l1")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--patches", type=int, nargs=2, default=None, metavar=("SIZE", "N"),
                        help="training patch size and patches per image")
    parser.add_argument("--test-size", type=int, default=None, help="held-out crop size")
    args = parser.parse_args(argv)
    q = args.quick
    args.rho = args.rho or ["student_t", "smooth_l1"]
    args.iters = args.iters or (20 if q else 60)
    args.l1_iters = args.l1_iters or 10
    args.tv_iters = args.tv_iters or (4 if q else 8)
    sigmas = args.sigmas if args.sigmas is not None else ((25,) if q else (15, 25))
    blur = None if (args.no_blur or (q and args.blur is None)) else (args.blur or (1.0, 5))
    if not sigmas and blur is None:
        parser.error("nothing to run: give --sigmas or --blur")
    size, per_image = args.patches or ((24, 2) if q else (32, 4))
    test_size = args.test_size or (64 if q else 128)
    # The training batches are small (10^3 - 10^4 pixels): one torch thread is several times
    # faster than a team whose threads wait on each other (a hypergradient on 2304 pixels:
    # 0.05 s against 0.9 s on two busy cores). Restored at the end: the docs build runs the
    # examples in one process.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        experiment(args, TRAIN[:4] if q else TRAIN, sigmas, blur, size, per_image, test_size)
    finally:
        torch.set_num_threads(threads)


def experiment(args, train_names, sigmas, blur, size, per_image, test_size):
    """Train and test at each degradation, print the table, save the figure."""
    train_clean = patches(train_names, size, per_image, np.random.default_rng(0))
    test_clean = patches(TEST, test_size, 1, np.random.default_rng(1))
    rows = [run(s, 0.0, train_clean, test_clean, args) for s in sigmas]
    if blur is not None:
        rows.append(run(blur[1], blur[0], train_clean, test_clean, args))
    print(f"PSNR (dB) on held-out images {', '.join(TEST)} ({test_size}x{test_size} crops); "
          f"training: {len(train_clean)} patches of {size}x{size}, {args.filters} filters "
          f"{args.filter_size}x{args.filter_size}")
    names = [LABELS[r] for r in args.rho]
    print(f"{'degradation':>16} {'noisy':>6} {'TV2D':>6} "
          + " ".join(f"{n:>6}" for n in names) + f" {'gain':>5} {'lam':>7} {'s':>6}")
    for row in rows:
        sc = row["scores"]
        gain = max(sc[r] for r in args.rho) - sc["TV2D"]
        print(f"{row['label']:>16} {sc['noisy']:6.2f} {sc['TV2D']:6.2f} "
              + " ".join(f"{sc[r]:6.2f}" for r in args.rho)
              + f" {gain:+5.2f} {row['lam']:7.4f} {row['seconds']:6.1f}")
    print("gain: best prior minus TV2D; s: wall seconds of the row (learning and restoring)")
    save_figure(args, next((r for r in rows if r["label"] == "25/255"), rows[0]), test_clean)


def save_figure(args, row, clean):
    """Learned filters of each prior (one row each) and the restorations of one crop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    basis = bl.problems.image_prior.dct_basis(args.filter_size)
    images = ["noisy", "TV2D", *args.rho]
    cols = max(min(args.filters, 12), len(images) + 1)
    per_prior = -(-args.filters // cols)                 # rows of filters per prior
    n_rows = per_prior * len(args.rho) + 1
    fig, axes = plt.subplots(n_rows, cols, figsize=(1.6 * cols, 1.9 * n_rows))
    for ax in axes.ravel():
        ax.axis("off")
    for r, penalty in enumerate(args.rho):
        nu, coeffs = row["thetas"][penalty]
        for k, h in enumerate(np.einsum("kl,lij->kij", coeffs, basis)):
            ax = axes[r * per_prior + k // cols, k % cols]
            ax.imshow(h, cmap="RdBu_r", vmin=-np.abs(h).max(), vmax=np.abs(h).max())
            ax.set_title(f"{LABELS[penalty]} nu={nu[k]:.2g}", fontsize=7)
    bottom = axes[-1]
    bottom[0].imshow(clean[1], cmap="gray", vmin=0, vmax=1)
    bottom[0].set_title("clean", fontsize=8)
    for ax, name in zip(bottom[1:], images):
        img = row["restored"][name][1]
        ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
        title = {"noisy": f"observed ({row['label']})", "TV2D": "TV2D, learned lam"}.get(
            name, f"learned {LABELS.get(name, name)}")
        ax.set_title(f"{title}\n{psnr(img, clean[1]):.2f} dB", fontsize=7)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "learn_image_prior.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
