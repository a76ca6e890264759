"""Composite-Lasso against the dedicated numba Lasso: the cost of writing an energy generically.

The same Lasso, ``||X w - y||^2 / (2n) + lam ||w||_1``, twice: ``bl.problems.Lasso``
(coordinate descent with working sets in numba, exact polish on the support) and
``bl.problems.Composite`` (the smooth part in torch plus ``bl.prox.L1``: accelerated
proximal gradient, then semismooth Newton on the identified support). Both solve to
round-off and differentiate by partial smoothness. Printed: median times of the solve and of
the solve + hypergradient ``dL/dlog(lam)`` of a validation loss, and the ratio
composite / dedicated (the goal: within 10x). The solutions and hypergradients are checked to
agree to 1e-8 before anything is timed.

Run: ``python benchmarks/bench_composite.py [--quick] [--repeat K]``.
"""

from __future__ import annotations

import sys
from functools import partial

import numpy as np
import torch
from _harness import make_parser, print_table, time_median

PEERS = ()      # both columns are bilevel's


def instance(n, p, seed=0):
    """A sparse regression and its validation half."""
    from bilevel.datasets import regression_data

    X, y = regression_data(2 * n, p, seed=seed, noise=0.5)
    return X[:n], y[:n], X[n:], y[n:]


def problems(X, y):
    """The dedicated Lasso and its Composite restatement (step 1/L of the data term)."""
    import bilevel as bl

    n = X.shape[0]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def smooth(w, lam):
        r = Xt @ w - yt
        return 0.5 * (r @ r) / n

    step = 1.0 / float(np.linalg.eigvalsh(X.T @ X / n)[-1])
    return (bl.problems.Lasso(X, y),
            bl.problems.Composite(smooth, bl.prox.L1(weight_part=0), np.zeros(X.shape[1]),
                                  step_size=step))


def main(argv=None):
    """Check agreement, time both, print the table."""
    import bilevel as bl

    parser = make_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 7)
    sizes = [(50, 20)] if args.quick else [(50, 20), (200, 50), (500, 100)]
    rows = []
    for n, p in sizes:
        X, y, Xv, yv = instance(n, p)
        lasso, comp = problems(X, y)
        lam = np.asarray(lasso.lam_max() / 10)
        loss = bl.losses.SquaredError(Xv, yv)
        a, b = lasso.solve(lam), comp.solve(lam)
        assert np.abs(a.x - b.x).max() <= 1e-8 * max(1.0, np.abs(a.x).max()), "solutions differ"
        ga = bl.hypergradient(lasso, loss, lam, "partial_smoothness", log_scale=True)[1]
        gb = bl.hypergradient(comp, loss, lam, "partial_smoothness", log_scale=True)[1]
        assert abs(ga - gb) <= 1e-8 * max(1.0, abs(ga)), "hypergradients differ"
        label = f"n={n}, p={p}, support {a.info['support'].size}"
        for what, fn_a, fn_b in (
                ("solve", partial(lasso.solve, lam), partial(comp.solve, lam)),
                ("solve + hypergradient",
                 partial(bl.hypergradient, lasso, loss, lam, "partial_smoothness"),
                 partial(bl.hypergradient, comp, loss, lam, "partial_smoothness"))):
            rows.append((f"{label}: {what}",
                         {"ours": time_median(fn_a, repeat=repeat),
                          "composite": time_median(fn_b, repeat=repeat)}))
    print_table("Lasso, lam = lam_max / 10: dedicated (ours) against Composite + bl.prox.L1",
                rows, ["ours", "composite"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
