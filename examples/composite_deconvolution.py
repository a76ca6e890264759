"""Non-negative deconvolution as a Composite energy: six strategies, one hypergradient.
====================================================================================

The lower level recovers a non-negative spike train ``x`` from a blurred, noisy signal ``b``:

    x*(mu) = argmin_{x >= 0}  1/2 ||K x - b||^2 + (mu / 2) ||D x||^2

(``K`` a Gaussian blur, ``D`` first differences), written as a user's smooth term in torch
plus the ready term ``bl.prox.NonNegative()``. The upper loss is the distance to the clean
signal; theta is ``mu``. The script

1. compares the hypergradient ``dL/dlog(mu)`` of every strategy that applies (implicit on the
   KKT system of ``x >= 0``, partial smoothness on the free set, fixed-point and unrolled
   prox-gradient steps, Bregman (entropic) mirror descent, finite differences), and saves
   the error-against-budget plot of the iterative ones;
2. tunes ``log(mu)`` by L-BFGS and prints the reconstruction error before and after.

Run ``python examples/composite_deconvolution.py`` (about 30 s) or ``--quick`` (a shorter
signal and fewer budgets, a few seconds).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

import bilevel as bl


def instance(n, seed=0):
    """A spike train, its blurred noisy observation, the blur and difference matrices."""
    rng = np.random.default_rng(seed)
    x_true = np.zeros(n)
    spikes = rng.choice(n, size=max(2, n // 8), replace=False)
    x_true[spikes] = rng.uniform(0.5, 2.0, spikes.size)
    grid = np.arange(n)
    K = np.exp(-0.5 * ((grid[:, None] - grid[None, :]) / 1.5) ** 2)
    K /= K.sum(axis=1, keepdims=True)
    b = K @ x_true + 0.1 * rng.standard_normal(n)
    D = np.diff(np.eye(n), axis=0)
    return x_true, b, K, D


def build(n, seed=0):
    """The Composite problem, the upper loss and the clean signal."""
    x_true, b, K, D = instance(n, seed)
    Kt, bt, Dt = torch.from_numpy(K), torch.from_numpy(b), torch.from_numpy(D)

    def smooth(x, mu):
        r, d = Kt @ x - bt, Dt @ x
        return 0.5 * (r @ r) + 0.5 * mu * (d @ d)

    # grad f is (||K||^2 + 4 mu_max)-Lipschitz; mu stays below 10 here
    step = 1.0 / (np.linalg.norm(K, 2) ** 2 + 40.0)
    problem = bl.problems.Composite(smooth, bl.prox.NonNegative(), np.zeros(n),
                                    step_size=step)
    return problem, bl.losses.Reconstruction(x_true), x_true


def main(argv=None):
    """Compare the strategies, save the convergence plot, tune mu."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short signal, few budgets")
    parser.add_argument("--n", type=int, default=None, help="signal length (default 60)")
    parser.add_argument("--mu", type=float, default=0.5, help="the starting mu")
    parser.add_argument("--out", default="docs/img/composite_deconvolution.png",
                        help="the convergence plot (needs matplotlib)")
    args = parser.parse_args(argv)
    n = args.n or (24 if args.quick else 60)
    problem, loss, x_true = build(n)
    mu = np.asarray(args.mu)
    # Entropic mirror descent crawls on this ill-conditioned blur (its rate is that of
    # first-order steps on K^T K): unrolled on a fixed budget, its error shows the budget.
    strategies = ["implicit", "partial_smoothness", "fixed_point", "unroll",
                  bl.strategies.BregmanUnroll(n_steps=300 if args.quick else 3000, tol=None),
                  "finite_difference"]
    budgets = [1, 3, 10, 30, 100] if args.quick else [1, 3, 10, 30, 100, 300, 1000, 3000]
    print(f"non-negative deconvolution, n = {n}: {sorted(problem.capabilities)}", flush=True)
    report = bl.compare(problem, loss, mu, strategies=strategies, reference="implicit",
                        log_scale=True, repeat=1, budgets=budgets)
    print(report, flush=True)
    if args.out:
        try:
            report.plot(args.out)
            print(f"convergence plot written to {args.out}")
        except ImportError as exc:
            print(exc)
    result = bl.minimize(problem, loss, mu, strategy="implicit", optimizer="lbfgs",
                         steps=10 if args.quick else 25, log_scale=True,
                         progress=sys.stderr.isatty())
    x0, x1 = problem.solve(mu).x, problem.solve(result.theta).x
    print(f"mu {float(mu):.3g} -> {float(result.theta):.3g}: reconstruction error "
          f"{np.linalg.norm(x0 - x_true):.4f} -> {np.linalg.norm(x1 - x_true):.4f}")
    return 0


if __name__ == "__main__":
    status = main()
    if status:      # exit only on failure: the docs gallery runs this file in-process
        sys.exit(status)
