"""Learn a filter-based image prior by bilevel optimization, and compare it with learned TV.
=========================================================================================

Lower level (``bl.problems.ImagePrior``), for noisy training patches f::

    u*(theta) = argmin_u 1/2||u - f||^2 + sum_k nu_k sum_ij log(1 + (K_k u)_ij^2),
    K_k = sum_l coeffs[k, l] B_l   (B_l: zero-mean DCT-II atoms),

upper level: ``sum over patches 1/2||u* - clean||^2``, minimized over theta = (nu, coeffs) by
Adam on hypergradients from implicit differentiation (conjugate gradients on Hessian-vector
products), warm-starting each inner solve from the previous solution. The baseline is TV2D
``1/2||u - f||^2 + lam ||grad u||_{2,1}`` with ``lam`` learned by ``bl.minimize`` on the same
patches. Training images and held-out images are disjoint sets of scikit-image's bundled
images.

Run: ``python examples/learn_image_prior.py [--quick] [--out DIR]``; prints a PSNR table on
the held-out images and writes ``DIR/image_prior.png`` (learned filters and restorations).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

import bilevel as bl

TRAIN = ("camera", "astronaut", "coffee", "coins", "brick", "grass")
TEST = ("moon", "chelsea", "gravel")


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


def learn_prior(noisy, clean, args):
    """Adam on log(nu) and coeffs, hypergradients by implicit differentiation."""
    from tqdm import tqdm

    rng = np.random.default_rng(0)
    n_coeffs = args.filter_size ** 2 - 1
    log_nu = np.full(args.filters, np.log(args.nu0))
    coeffs = 10.0 * rng.standard_normal((args.filters, n_coeffs)) / np.sqrt(n_coeffs)
    prob = bl.problems.ImagePrior(noisy, filter_size=args.filter_size, tol=1e-6, max_iter=500)
    loss = bl.losses.Reconstruction(clean)
    strategy = bl.strategies.Implicit(linear_solver="cg", tol=1e-6)
    params = [log_nu, coeffs]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    init, warm, beta1, beta2 = None, None, 0.9, 0.999
    bar = tqdm(range(1, args.steps + 1), desc="prior", disable=args.no_progress)
    for t in bar:
        theta = (np.exp(params[0]), params[1])
        value, grad, info = bl.hypergradient(prob, loss, theta, strategy, init=init,
                                             warm_start=warm, return_info=True)
        init, warm = info["solution"].x, info["warm_start"]     # warm starts, both levels
        grads = [grad[0] * theta[0], grad[1]]          # chain rule through nu = exp(log nu)
        for k, g in enumerate(grads):
            m[k] = beta1 * m[k] + (1 - beta1) * g
            v[k] = beta2 * v[k] + (1 - beta2) * g * g
            step = args.lr * (m[k] / (1 - beta1**t)) / (np.sqrt(v[k] / (1 - beta2**t)) + 1e-12)
            params[k] = params[k] - step
        bar.set_postfix(loss=f"{value / noisy.shape[0]:.4g}")
    return np.exp(params[0]), params[1]


def learn_tv(noisy, clean, args):
    """``lam`` of TV2D by ``bl.minimize`` on the patches side by side (one mosaic)."""
    f, target = np.concatenate(list(noisy), axis=1), np.concatenate(list(clean), axis=1)
    prob = bl.problems.TV2D(tol=1e-6, max_iter=20000)
    result = bl.minimize(prob, bl.losses.Reconstruction(target), (f, np.asarray(0.05)),
                         strategy=bl.strategies.FixedPoint(tol=1e-6), steps=args.tv_steps,
                         lr=0.1, log_scale=True, trainable=(False, True),
                         progress=not args.no_progress)
    return float(np.asarray(result.theta[1]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (well under a minute)")
    parser.add_argument("--out", type=Path, default=Path("examples/out"),
                        help="folder of the figure image_prior.png")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps of the prior")
    parser.add_argument("--tv-steps", type=int, default=None, help="steps of TV's lam")
    parser.add_argument("--filters", type=int, default=None, help="number of filters")
    parser.add_argument("--filter-size", type=int, default=None, help="odd filter width")
    parser.add_argument("--lr", type=float, default=0.1, help="Adam learning rate")
    parser.add_argument("--nu0", type=float, default=0.1, help="initial filter weights nu")
    parser.add_argument("--sigmas", type=int, nargs="+", default=None,
                        help="noise levels, in 1/255 (default: 25 quick, 15 25 full)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (15 if q else 150)
    args.tv_steps = args.tv_steps or (10 if q else 30)
    args.filters = args.filters or (4 if q else 16)
    args.filter_size = args.filter_size or (3 if q else 5)
    sigmas = args.sigmas or ((25,) if q else (15, 25))
    patch, per_image, test_size = (24, 1, 48) if q else (40, 4, 128)

    rng = np.random.default_rng(0)
    train_clean = patches(TRAIN[:4] if q else TRAIN, patch, per_image, rng)
    test_clean = patches(TEST, test_size, 1, np.random.default_rng(1))
    rows, figure_data = [], None
    for sigma in sigmas:
        start = time.perf_counter()
        noise = np.random.default_rng(sigma)
        train_noisy = train_clean + sigma / 255 * noise.standard_normal(train_clean.shape)
        test_noisy = test_clean + sigma / 255 * noise.standard_normal(test_clean.shape)
        lam = learn_tv(train_noisy, train_clean, args)
        nu, coeffs = learn_prior(train_noisy, train_clean, args)
        tv = np.stack([bl.problems.TV2D(tol=1e-6, max_iter=20000).solve((f, lam)).x
                       for f in test_noisy])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bl.ConvergenceWarning)   # tol 1e-8: PSNR is exact
            prior = bl.problems.ImagePrior(test_noisy, filter_size=args.filter_size, tol=1e-8,
                                           max_iter=2000).solve((nu, coeffs)).x
        scores = [np.mean([psnr(u, c) for u, c in zip(us, test_clean)])
                  for us in (test_noisy, tv, prior)]
        rows.append((sigma, lam, *scores, time.perf_counter() - start))
        figure_data = (nu, coeffs, test_clean[0], test_noisy[0], tv[0], prior[0], sigma)
    print(f"PSNR (dB) on held-out images {', '.join(TEST)} ({test_size}x{test_size} crops)")
    print(f"{'sigma':>7} {'noisy':>7} {'TV2D':>7} {'prior':>7} {'gain':>6} {'lam':>7} {'s':>6}")
    for sigma, lam, noisy, tv, prior, seconds in rows:
        print(f"{sigma:>4}/255 {noisy:7.2f} {tv:7.2f} {prior:7.2f} {prior - tv:+6.2f} "
              f"{lam:7.4f} {seconds:6.1f}")
    save_figure(args, figure_data)


def save_figure(args, data):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nu, coeffs, clean, noisy, tv, prior, sigma = data
    basis = bl.problems.image_prior.dct_basis(args.filter_size)
    filters = np.einsum("kl,lij->kij", coeffs, basis)
    fig, axes = plt.subplots(2, max(4, len(filters)), figsize=(2 * max(4, len(filters)), 4.4))
    for ax in axes.ravel():
        ax.axis("off")
    for k, h in enumerate(filters):
        axes[0, k].imshow(h, cmap="RdBu_r")
        axes[0, k].set_title(f"nu={nu[k]:.2g}", fontsize=8)
    for ax, img, title in zip(axes[1], (clean, noisy, tv, prior),
                              ("clean", f"noisy ({sigma}/255)", "TV2D, learned lam",
                               "learned prior")):
        ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title if title in ("clean",) else f"{title}\n{psnr(img, clean):.2f} dB",
                     fontsize=8)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "image_prior.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
