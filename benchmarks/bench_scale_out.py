"""Scale-out: a 5-fold cross-validated Lasso hypergradient, serial vs a Dask LocalCluster.

.. math:: L(\\lambda) = \\frac{1}{5}\\sum_{k=1}^{5} \\frac{1}{2m_k}
          \\|X_{val,k} w_k^*(\\lambda) - y_{val,k}\\|^2, \\qquad
          w_k^*(\\lambda) = \\arg\\min_w \\frac{1}{2n_k}\\|X_{tr,k} w - y_{tr,k}\\|^2
          + \\lambda\\|w\\|_1

Data: ``make_regression(n, p, n_informative=p // 20, noise=1, random_state=0)``, columns
standardized, y centered; ``KFold(5, shuffle=True, random_state=0)``; ``lam = lam_max / 20``
of the full data. ``dL/dlam`` by ``partial_smoothness`` (a solve, then one factorization on
the support per fold).

Two runs of the same ``bl.hypergradient(bl.InstanceSum(folds), None, lam, ...)``:

- *serial*: ``executor=None``, the five folds one after another in this process, one
  thread each (``bilevel.parallel.limit_threads(1)``, as in the workers);
- *dask*: ``executor=client``, a ``distributed.LocalCluster`` of 2 worker processes of one
  thread each on 127.0.0.1 (the cluster's start-up and the workers' first imports are
  excluded: one untimed warm-up call).

A second row learns an image prior over a data set of images (``bl.problems.ImagePrior``,
the learned-regularizer experiment): one instance per noisy crop of scikit-image's camera
image (``f_k`` with Gaussian noise sigma 25/255), upper loss ``1/2||u_k* - clean_k||^2``,
theta = (nu, coeffs) of 4 filters 3x3, ``dL/dtheta`` by ``implicit`` (CG on
Hessian-vector products).

Both must give bitwise the same value and gradient (checked: the script exits 1 otherwise).
The ratio ``serial/dask`` above 1 means the cluster is faster; with 2 workers it cannot
exceed 2, and it is lower where other processes share the cores. ``--quick``: a small
instance, 1 repeat.
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import make_regression
from sklearn.model_selection import KFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import make_parser, print_table, time_median  # noqa: E402

import bilevel as bl  # noqa: E402

PEERS = ("distributed",)


def folds(n, p, seed=0):
    X, y = make_regression(n, p, n_informative=max(p // 20, 1), noise=1.0, random_state=seed)
    X = (X - X.mean(0)) / X.std(0)
    y = y - y.mean()
    lam = float(np.max(np.abs(X.T @ y)) / n) / 20
    out = []
    for train, val in KFold(5, shuffle=True, random_state=seed).split(X):
        out.append((bl.problems.Lasso(X[train], y[train]),
                    bl.losses.SquaredError(X[val], y[val])))
    return bl.InstanceSum(out), lam


def image_instances(n_images, size, seed=0):
    """One ImagePrior instance per noisy crop of the camera image, and a theta."""
    from skimage.data import camera
    from skimage.util import img_as_float

    rng = np.random.default_rng(seed)
    image = img_as_float(camera())
    out = []
    for k in range(n_images):
        r, c = 64 + 96 * (k // 4), 64 + 96 * (k % 4)
        clean = image[r:r + size, c:c + size][None]
        noisy = clean + (25 / 255) * rng.standard_normal(clean.shape)
        out.append((bl.problems.ImagePrior(noisy, tol=1e-9),
                    bl.losses.Reconstruction(clean)))
    n_coeffs = out[0][0].n_coeffs
    coeffs = np.zeros((4, n_coeffs))
    coeffs[np.arange(4), np.arange(4)] = 1.0       # four DCT atoms as the starting filters
    return bl.InstanceSum(out), (np.full(4, 0.05), coeffs)


def same(a, b):
    """Bitwise equality of two (value, grad) pairs, grad a tuple or an array."""
    return a[0] == b[0] and all(np.array_equal(x, y) for x, y in
                                zip(bl._types.as_tuple(a[1]), bl._types.as_tuple(b[1])))


def main():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="samples (all folds)")
    parser.add_argument("--p", type=int, default=1000, help="features")
    args = parser.parse_args()
    n, p = (300, 100) if args.quick else (args.n, args.p)
    repeat = args.repeat or (1 if args.quick else 5)

    from distributed import Client, LocalCluster

    n_images, size = (4, 24) if args.quick else (8, 64)
    cases = [(f"5-fold Lasso n={n} p={p}", *folds(n, p), "partial_smoothness"),
             (f"image prior, {n_images} images {size}x{size}",
              *image_instances(n_images, size), "implicit")]
    rows, checks = [], []
    # The scheduler's HTTP server on a free port: ":0", not None, which still takes 8787.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        for label, total, theta, strategy in cases:

            def serial(total=total, theta=theta, strategy=strategy):
                return bl.hypergradient(total, None, theta, strategy)

            def dask(total=total, theta=theta, strategy=strategy):
                return bl.hypergradient(total, None, theta, strategy, executor=client)

            ours, theirs = serial(), dask()
            checks.append((label, ours[0], same(ours, theirs)))
            rows.append((label, {"ours": time_median(dask, repeat=repeat),
                                 "serial": time_median(serial, repeat=repeat)}))
    print_table("hypergradient over many instances, time per call: ours = on the Dask "
                "LocalCluster (2 workers), serial = executor=None (ratio > 1: the cluster is "
                "faster)", rows, ["ours", "serial"])
    print()
    for label, value, identical in checks:
        print(f"{label}: value {value:.12g}; dask identical to serial (bitwise): {identical}")
    return 0 if all(identical for _, _, identical in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
