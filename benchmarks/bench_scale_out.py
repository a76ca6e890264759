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


def main():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="samples (all folds)")
    parser.add_argument("--p", type=int, default=1000, help="features")
    args = parser.parse_args()
    n, p = (300, 100) if args.quick else (args.n, args.p)
    repeat = args.repeat or (1 if args.quick else 5)

    from distributed import Client, LocalCluster

    total, lam = folds(n, p)
    strategy = "partial_smoothness"

    def serial():
        return bl.hypergradient(total, None, lam, strategy)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:

        def dask():
            return bl.hypergradient(total, None, lam, strategy, executor=client)

        ours, theirs = serial(), dask()
        identical = ours[0] == theirs[0] and np.array_equal(ours[1], theirs[1])
        t_serial = time_median(serial, repeat=repeat)
        t_dask = time_median(dask, repeat=repeat)
    label = f"5-fold Lasso n={n} p={p}"
    print_table("cross-validated hypergradient, time per call: ours = on the Dask "
                "LocalCluster (2 workers), serial = executor=None (ratio > 1: the cluster is "
                "faster)", [(label, {"ours": t_dask, "serial": t_serial})], ["ours", "serial"])
    print(f"\nvalue {ours[0]:.12g}, dL/dlam {float(ours[1]):.12g}; "
          f"dask identical to serial (bitwise): {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
