"""Learn the weight of 2-D TV denoising (or deblurring) on scikit-image's camera image.
====================================================================================

Lower level (``bl.problems.TV2D``), for the noisy image f::

    u*(f, lam) = argmin_u  1/2 ||A u - f||^2 + lam sum_ij |(grad u)_ij|_2

with A the identity (``--operator identity``, the default) or a Gaussian blur of 1.5 px
(``--operator blur``). Upper level: the reconstruction error ``1/2 ||u* - clean||^2``,
minimized over ``log lam`` by ``bl.minimize`` (L-BFGS) with ``trainable=(False, True)``:
the image is data, only lam is learned. The hypergradient comes from ``FixedPoint``: the
Neumann series of the solver's primal-dual step map at its fixed point ``(u*, p*)``,
truncated at 200 terms. The primal-dual map contracts slowly on large flat regions (the
derivative averages over them, and a local iteration needs many sweeps to carry that
across), so the truncated series is a few percent off the exact hypergradient; its sign
and scale are right, which is what a first-order outer loop needs.

Data: ``skimage.data.camera()`` (512 x 512, bundled with scikit-image), averaged over 4 x 4
blocks to 128 x 128 (``--size 256`` for 2 x 2), scaled to [0, 1], plus Gaussian noise of sd
0.1 (seed 0; blurred first with ``--operator blur``). A grid of 12 lam values is the check:
the learned lam must sit at the grid's minimum, between grid points.

Run: ``python examples/tv2d_camera.py [--operator blur] [--size 128] [--quick]``; writes
``examples/out/tv2d_camera.png`` (clean / noisy / reconstruction / loss against time).
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import bilevel as bl
from bilevel.solvers.tv2d import blur_apply


def camera(size):
    from skimage import data

    img = data.camera().astype(np.float64) / 255.0
    k = img.shape[0] // size
    return img[:k * size, :k * size].reshape(size, k, size, k).mean(axis=(1, 3))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operator", choices=("identity", "blur"), default="identity")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="64 x 64, 6 steps, 5 grid values")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args(argv)
    size, steps, n_grid = (64, 6, 5) if args.quick else (args.size, args.steps, 12)

    torch.set_num_threads(1)                # small tensors: threads only add overhead
    rng = np.random.default_rng(0)
    clean = camera(size)
    problem = bl.problems.TV2D(args.operator, blur_sigma=1.5, tol=1e-6, max_iter=50000)
    observed = blur_apply(clean, problem.kernel) if args.operator == "blur" else clean
    noisy = observed + args.noise * rng.standard_normal(clean.shape)
    loss = bl.losses.Reconstruction(clean)
    strategy = bl.strategies.FixedPoint(method="neumann", n_terms=200)

    def mse(u):
        return float(np.mean((u - clean) ** 2))

    print(f"camera {size} x {size}, operator {args.operator}, noise sd {args.noise}; "
          f"MSE of the observed image {mse(noisy):.3e}")
    grid = np.geomspace(0.01, 0.5, n_grid) if args.operator == "identity" else \
        np.geomspace(0.001, 0.1, n_grid)
    start, grid_mse = time.perf_counter(), []
    for lam in grid:
        grid_mse.append(mse(problem.solve((noisy, lam)).x))
    grid_time = time.perf_counter() - start
    best = int(np.argmin(grid_mse))
    print(f"grid of {n_grid} lam in [{grid[0]:g}, {grid[-1]:g}]: best lam {grid[best]:.4g}, "
          f"MSE {grid_mse[best]:.4e} ({grid_time:.1f} s)")

    lam0 = grid[0] * 3
    previous = []

    def settled(step, theta, value, grad):     # stop once L-BFGS no longer moves lam
        previous.append(float(theta[1]))
        return len(previous) > 1 and abs(previous[-1] / previous[-2] - 1) < 1e-6

    with warnings.catch_warnings():
        # 200 Neumann terms leave the adjoint residual above fixed_point's tol, by design (a
        # few percent, see above): FixedPoint warns at every step. The solver's warnings stay.
        warnings.filterwarnings("ignore", message="fixed_point: the Neumann series",
                                category=bl.ConvergenceWarning)
        result = bl.minimize(problem, loss, (noisy, lam0), strategy, optimizer="lbfgs",
                             steps=steps, log_scale=True, trainable=(False, True),
                             progress=False, callback=settled)
    lam = float(result.theta[1])
    u = problem.solve((noisy, lam)).x
    h = result.history
    print(f"bl.minimize (L-BFGS on log lam, {strategy.name} Neumann 200), from lam {lam0:.3g}: "
          f"lam {lam:.4g}, MSE {mse(u):.4e} in {h['time'][-1]:.1f} s")
    for k, (value, theta) in enumerate(zip(h["loss"], h["theta"])):
        print(f"  step {k:2d}  lam {float(theta[1]):.5g}  MSE {2 * value / clean.size:.5e}")
    ok = mse(u) <= min(grid_mse) * 1.01      # within 1% of the grid's best, or below
    print(f"learned MSE / best grid MSE = {mse(u) / min(grid_mse):.4f} "
          f"({'at or below' if ok else 'ABOVE'} the grid's best)")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure")
        return 0 if ok else 1
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6))
    for ax, img, title in zip(axes, (clean, noisy, u),
                              ("clean", f"observed (MSE {mse(noisy):.2e})",
                               f"TV, learned lam = {lam:.3g} (MSE {mse(u):.2e})")):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    ax = axes[3]
    ax.semilogx(grid, grid_mse, "o-", label="grid")
    ax.semilogx([float(t[1]) for t in h["theta"]], [2 * v / clean.size for v in h["loss"]],
                "x--", label="bl.minimize iterates")
    ax.set_xlabel("lam")
    ax.set_ylabel("MSE against the clean image")
    ax.legend()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "tv2d_camera.png"
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"figure written to {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    status = main()
    if status:      # exit only on failure: the docs gallery runs this file in-process
        raise SystemExit(status)
