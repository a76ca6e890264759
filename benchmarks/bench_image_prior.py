"""Learned image prior at scale: one hypergradient, implicit against unroll.

.. math:: E(u, \\theta) = \\tfrac12\\|u - f\\|^2 + \\sum_k \\nu_k \\sum_{ij} w_{ij}
          \\log(1 + (K_k u)_{ij}^2)

(``bl.problems.ImagePrior``). For one solved instance, the VJP ``(du*/dtheta)^T v`` (the
hypergradient's backward part; the inner solve is shared and not timed) by

- *ours*: ``Implicit(linear_solver="cg")``, conjugate gradients on Hessian-vector
  products to relative residual 1e-8;
- *unroll*: ``Unroll(n_steps=N)``, backpropagation through ``N`` gradient steps from ``f``.

Rows grow the parameter count (filters ``K x (m^2 - 1)`` plus ``K``, and the per-pixel weight
map ``w``, ``H W`` more) and the image (``H = W``). Peak memory is
:func:`bilevel._memory.measure_memory`'s (Python/NumPy allocations plus the autograd graph's
saved tensors; on a GPU, ``torch.cuda.max_memory_allocated``). A last table shows that
implicit's memory does not grow with the inner solver's iterations (a tighter ``tol`` of
the solve), while unroll's grows linearly with its steps.

Run: ``python benchmarks/bench_image_prior.py [--quick] [--device cuda]``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from _harness import format_seconds, make_parser, print_table

import bilevel as bl
from bilevel._memory import measure_memory

PEERS = ()


def instance(size, n_filters, filter_size, weight_map, device, tol=1e-8):
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    f = 0.5 + 0.3 * np.sin(0.1 * i + 0.07 * j) + 0.1 * rng.standard_normal((size, size))
    n_coeffs = filter_size ** 2 - 1
    theta = (np.full(n_filters, 0.05 / n_filters),
             rng.standard_normal((n_filters, n_coeffs)) / np.sqrt(n_coeffs))
    if weight_map:
        theta += (rng.uniform(0.5, 1.5, (size, size)),)
    prob = bl.problems.ImagePrior(f, filter_size=filter_size, weight_map=weight_map, tol=tol,
                                  max_iter=2000, device=device)
    return prob, theta


def measure(strategy, prob, sol, v, device):
    """Seconds and peak bytes of one VJP."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with measure_memory() as mem, warnings.catch_warnings():
        warnings.simplefilter("ignore", bl.ConvergenceWarning)    # unroll: n_steps by design
        strategy.vjp(prob, sol, v)
    seconds = time.perf_counter() - start
    peak = mem.peak if device != "cuda" else torch.cuda.max_memory_allocated()
    return seconds, peak


def mib(n_bytes):
    return f"{n_bytes / 2**20:.1f} MiB"


def main():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device of the solves")
    parser.add_argument("--unroll-steps", type=int, default=100, help="steps of unroll")
    args = parser.parse_args()
    implicit = bl.strategies.Implicit(linear_solver="cg", tol=1e-8)
    unroll = bl.strategies.Unroll(n_steps=10 if args.quick else args.unroll_steps)
    if args.quick:
        cases = [("P=36, 32^2", 32, 4, 3, False), ("P=1060, 32^2", 32, 4, 3, True),
                 ("P=36, 64^2", 64, 4, 3, False)]
    else:
        cases = [("P=1e2 (12 filters 3x3)", 128, 12, 3, False),
                 ("P=1e3 (40 filters 5x5)", 128, 40, 5, False),
                 ("P=1e4 (w on 100^2)", 100, 4, 3, True),
                 ("P=1e5 (w on 316^2)", 316, 4, 3, True),
                 ("64^2, 8 filters 3x3", 64, 8, 3, False),
                 ("128^2", 128, 8, 3, False),
                 ("256^2", 256, 8, 3, False),
                 ("512^2", 512, 8, 3, False)]
    rows, memory = [], []
    prob, theta = instance(16, 2, 3, False, args.device)        # warm-up: first-call costs
    sol = prob.solve(theta)
    for strategy in (implicit, unroll):
        measure(strategy, prob, sol, np.ones(sol.x.shape), args.device)
    for label, size, n_filters, filter_size, weight_map in cases:
        prob, theta = instance(size, n_filters, filter_size, weight_map, args.device)
        sol = prob.solve(theta)
        v = np.random.default_rng(1).standard_normal(sol.x.shape)
        n_params = sum(np.size(t) for t in theta)
        (t_imp, m_imp), (t_unr, m_unr) = (measure(s, prob, sol, v, args.device)
                                          for s in (implicit, unroll))
        rows.append((f"{label} [{n_params} params]", {"ours": t_imp, "unroll": t_unr}))
        memory.append((label, m_imp, m_unr))
    print_table(f"one VJP, implicit (ours, CG) vs unroll ({unroll.n_steps} steps), "
                f"device {args.device}", rows, ["ours", "unroll"])
    print("peak memory of the same VJPs")
    for label, m_imp, m_unr in memory:
        print(f"  {label:<28} implicit {mib(m_imp):>11}  unroll {mib(m_unr):>11}")
    size = 32 if args.quick else 64
    print(f"memory against inner iterations ({size}^2 image, 8 filters 3x3)")
    for tol, steps in ((1e-4, 25), (1e-8, 50), (1e-12, 100)):
        steps = steps // 5 if args.quick else steps
        prob, theta = instance(size, 8, 3, False, args.device, tol=tol)
        sol = prob.solve(theta)
        v = np.ones(sol.x.shape)
        (t_imp, m_imp) = measure(implicit, prob, sol, v, args.device)
        (t_unr, m_unr) = measure(bl.strategies.Unroll(n_steps=steps), prob, sol, v,
                                 args.device)
        print(f"  solve tol {tol:.0e} ({sol.n_iter:3d} L-BFGS iterations): implicit "
              f"{mib(m_imp)} in {format_seconds(t_imp)}; unroll {steps:3d} steps "
              f"{mib(m_unr)} in {format_seconds(t_unr)}")


if __name__ == "__main__":
    main()
