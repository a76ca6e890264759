"""Convergence of derivative sequences: iterative strategies against the exact derivative.
=======================================================================================

Strongly convex lower level (ridge regression, condition number kappa = L / mu):

- ``unroll``: reverse mode through n gradient steps from 0; error ~ n (1 - 1/kappa)^n;
- ``unroll`` of an accelerated method (Nesterov's constant momentum for strongly convex
  problems, written here in torch): error ~ (1 - 1/sqrt(kappa))^n (Mehmood and Ochs,
  "Automatic differentiation of some first-order methods in parametric optimization",
  AISTATS 2020);
- ``fixed_point`` with n Neumann terms at x*: error ~ (1 - 1/kappa)^n, no n factor;
- ``implicit`` with n conjugate-gradient iterations: error ~ ((sqrt(kappa)-1)/(sqrt(kappa)+1))^n.

Non-smooth lower levels (1-D TV denoising; least squares on the simplex; NNLS, which
offers the ``mirror`` capability too): ``bregman`` unrolls a smooth Bregman method (a
primal-dual method with the box mirror on the TV dual; entropic mirror descent on the
simplex and the orthant) whose derivative sequence converges linearly to the exact one
(``partial_smoothness`` / ``analytic``); finite differences are shown for reference, and
plain ``unroll`` through TV1D's projected dual gradient step (a piecewise smooth map,
exact only once it has identified the active set).

The script prints the measured rates (the per-iteration factor fitted on the linear part
of each curve) and saves the two panels to ``--out`` (default
``examples/out/convergence_study.png``).

Run: ``python examples/convergence_study.py [--quick] [--out DIR]`` (matplotlib for the
figure).
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import bilevel as bl
from bilevel.testing import regression_data

torch.set_num_threads(1)  # small problems: one torch thread avoids contention

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="fewer budgets (well under 30 s)")
parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                    help="directory of the figure")
args = parser.parse_args()
begin = time.perf_counter()


def rel_error(g, ref):
    g = np.concatenate([np.ravel(p) for p in (g if isinstance(g, tuple) else (g,))])
    ref = np.concatenate([np.ravel(p) for p in (ref if isinstance(ref, tuple) else (ref,))])
    return float(np.linalg.norm(g - ref) / np.linalg.norm(ref))


def fitted_rate(budgets, errors, lo=1e-11, hi=1e-2):
    """Per-iteration factor rho of error ~ C rho^n, fitted where lo < error < hi."""
    b, e = np.asarray(budgets, float), np.asarray(errors, float)
    keep = (e > lo) & (e < hi)
    if keep.sum() < 2:
        return float("nan")
    slope = np.polyfit(b[keep], np.log(e[keep]), 1)[0]
    return float(np.exp(slope))


def trace(strategy, problem, sol, v, ref, budgets):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bl.ConvergenceWarning)   # small budgets, by design
        return [rel_error(strategy.with_budget(n).vjp(problem, sol, v)[0], ref) for n in budgets]


# --- strongly convex: ridge ----------------------------------------------------------------
X, y = regression_data(200, 30, seed=1)
X[:, 1] = X[:, 0] + 0.1 * X[:, 1]                 # correlated columns: kappa of a few hundred
ridge = bl.problems.Ridge(X, y)
lam = 0.02
sol = ridge.solve(lam)
v = np.random.default_rng(0).standard_normal(X.shape[1])
exact = bl.vjp(ridge, lam, v, "analytic")
H = ridge.capabilities.optimality.hessian(sol)        # the dense d_x F at x*
eig = np.linalg.eigvalsh(H)
mu, L = eig[0], ridge._smax + lam
kappa = L / mu

budgets_sc = np.unique(np.geomspace(5, 400 if args.quick else 2000, 12 if args.quick else 24)
                       .astype(int))
curves_sc = {
    "unroll (gradient descent)": trace(bl.strategies.Unroll(), ridge, sol, v, exact, budgets_sc),
    "fixed_point (Neumann at x*)": trace(bl.strategies.FixedPoint(method="neumann"), ridge, sol,
                                         v, exact, budgets_sc),
    "implicit (CG)": trace(bl.strategies.Implicit(linear_solver="cg", tol=1e-300), ridge, sol,
                           v, exact, budgets_sc),
}


def accelerated_unroll(n):
    """Unroll n steps of Nesterov's method with momentum (sqrt(kappa)-1)/(sqrt(kappa)+1)."""
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    lam_t = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    beta = (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)
    x = x_prev = torch.zeros(X.shape[1], dtype=torch.float64)
    for _ in range(n):
        z = x + beta * (x - x_prev)
        grad = Xt.T @ (Xt @ z - yt) / X.shape[0] + lam_t * z
        x_prev, x = x, z - grad / L
    (g,) = torch.autograd.grad(x @ torch.from_numpy(v), lam_t)
    return g.numpy()


curves_sc["unroll (accelerated, Nesterov)"] = [rel_error(accelerated_unroll(n), exact)
                                               for n in budgets_sc]
theory_sc = {"unroll (gradient descent)": 1 - 1 / kappa,
             "fixed_point (Neumann at x*)": 1 - 1 / kappa,
             "implicit (CG)": (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1),
             "unroll (accelerated, Nesterov)": 1 - 1 / np.sqrt(kappa)}

print(f"ridge 200 x 30, lam = {lam}: mu = {mu:.3g}, L = {L:.3g}, kappa = {kappa:.0f}")
print(f"{'strategy':34s} {'rate':>10s} {'theory':>10s}  final error")
for name, errors in curves_sc.items():
    print(f"{name:34s} {fitted_rate(budgets_sc, errors):10.5f} {theory_sc[name]:10.5f}"
          f"  {errors[-1]:.1e} at n = {budgets_sc[-1]}")

# --- non-smooth: TV1D, simplex least squares, NNLS -----------------------------------------
rng = np.random.default_rng(2)
s = np.repeat([0.0, 2.0, 0.5, 1.5], [10, 12, 8, 10]) + 0.1 * rng.standard_normal(40)
tv = bl.problems.TV1D(1)
theta_tv = (s, np.asarray(0.3))
A = rng.standard_normal((30, 8))
b = A @ np.r_[0.6, 0.4, 0.3, -0.4 * np.ones(5)]      # 3 active, 5 with clear gaps
simplex = bl.problems.SimplexLeastSquares(A)
cases = [("TV1D (primal-dual, box mirror)", tv, theta_tv, "partial_smoothness"),
         ("simplex LS (entropic mirror descent)", simplex, b, "analytic")]
nnls = bl.problems.NNLS(A)
if "mirror" in nnls.capabilities:
    cases.append(("NNLS (entropic mirror descent)", nnls, b - 0.3, "analytic"))

budgets_ns = np.unique(np.geomspace(10, 800 if args.quick else 4000, 10 if args.quick else 20)
                       .astype(int))
curves_ns, rates_ns, fd_errors = {}, {}, {}
for label, problem, theta, reference in cases:
    sol = problem.solve(theta)
    v = np.random.default_rng(3).standard_normal(sol.x.shape)
    ref = bl.vjp(problem, theta, v, reference)
    curves_ns[label] = trace(bl.strategies.BregmanUnroll(), problem, sol, v, ref, budgets_ns)
    fd_errors[label] = rel_error(bl.vjp(problem, theta, v, "finite_difference"), ref)
    if problem is tv:
        curves_ns["TV1D (unroll: projected dual gradient)"] = trace(
            bl.strategies.Unroll(), problem, sol, v, ref, budgets_ns)

print(f"\n{'non-smooth problem, strategy':48s} {'rate':>10s}  final error   FD error")
for label, errors in curves_ns.items():
    fd = fd_errors.get(label, float("nan"))
    print(f"{label:48s} {fitted_rate(budgets_ns, errors):10.5f}  {errors[-1]:.1e}"
          f" at n = {budgets_ns[-1]}   {fd:.1e}")

# --- figure --------------------------------------------------------------------------------
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no figure")
else:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, errors in curves_sc.items():
        ax1.semilogy(budgets_sc, np.maximum(errors, 1e-17), marker=".",
                     label=f"{name}: rate {fitted_rate(budgets_sc, errors):.4f}")
    ax1.set(title=f"ridge, kappa = {kappa:.0f}", xlabel="iterations n",
            ylabel="relative error of the hypergradient", ylim=(1e-16, 10))
    for label, errors in curves_ns.items():
        ax2.semilogy(budgets_ns, np.maximum(errors, 1e-17), marker=".",
                     label=f"{label}: rate {fitted_rate(budgets_ns, errors):.4f}")
    colors = {label: f"C{k}" for k, label in enumerate(curves_ns)}
    for label, fd in fd_errors.items():
        ax2.axhline(max(fd, 1e-17), color=colors[label], ls=":", lw=1)
    ax2.set(title="non-smooth (dotted: finite differences)",
            xlabel="iterations n", ylim=(1e-16, 10))
    for ax in (ax1, ax2):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "convergence_study.png"
    fig.savefig(target, dpi=72)
    print(f"\nsaved {target}")
print(f"total time {time.perf_counter() - begin:.1f} s")
