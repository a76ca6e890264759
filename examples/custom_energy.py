"""Hypergradients of a user-defined energy: pseudo-Huber regression with per-feature weights.
==========================================================================================

Lower level (robust regression, one ridge weight per feature, theta = log weights):

    x*(theta) = argmin_x  mean_i delta^2 (sqrt(1 + (a_i^T x - b_i)^2 / delta^2) - 1)
                          + 1/2 sum_j exp(theta_j) x_j^2

Upper level: squared error on a held-out set, ``L(x) = ||A_val x - b_val||^2 / (2 m)``.

The energy is written in torch and handed to ``bl.problems.Smooth``; every applicable
strategy computes ``dL/dtheta``; ``bl.compare`` checks them against fourth-order finite
differences, and ``bilevel.testing.check_vjp`` does the same on random directions.

Run: ``python examples/custom_energy.py``.
"""

import argparse

import numpy as np
import torch

import bilevel as bl
from bilevel.testing import check_vjp

# No options: --help describes the script instead of running it.
argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()

torch.set_num_threads(1)  # tiny problem: one torch thread avoids contention with BLAS threads

# Data: 8 features, only 3 of them useful; 10% of the training targets are gross outliers.
rng = np.random.default_rng(0)
n_train, n_val, p = 120, 200, 8
w_true = np.r_[2.0, -1.0, 0.5, np.zeros(p - 3)]
A = rng.standard_normal((n_train + n_val, p))
b = A @ w_true + 0.3 * rng.standard_normal(n_train + n_val)
outliers = rng.choice(n_train, size=n_train // 10, replace=False)
b[outliers] += rng.choice([-15.0, 15.0], size=outliers.size)
A_train, b_train, A_val, b_val = A[:n_train], b[:n_train], A[n_train:], b[n_train:]

DELTA = 1.0
A_t, b_t = torch.from_numpy(A_train), torch.from_numpy(b_train)  # float64, like x


def energy(x, theta):
    """Pseudo-Huber data term plus a per-feature ridge penalty with weights exp(theta)."""
    r = (A_t @ x - b_t) / DELTA
    return DELTA**2 * (torch.sqrt(1 + r * r) - 1).mean() + 0.5 * (torch.exp(theta) * x * x).sum()


theta = np.full(p, np.log(0.1))  # log weights; finite differences step relative to |theta_j|

# grad_x E is L-Lipschitz with L <= sigma_max(A)^2 / n + max_j exp(theta_j); a step 1/L
# makes x - eta grad_x E a contraction, which enables the "step" strategies.
lipschitz = np.linalg.norm(A_train, 2) ** 2 / n_train + np.exp(theta).max()
problem = bl.problems.Smooth(energy, np.zeros(p), step_size=1.0 / lipschitz)
loss = bl.losses.SquaredError(A_val, b_val)

sol = problem.solve(theta)
print(f"lower level: converged={sol.converged} after {sol.n_iter} L-BFGS iterations, "
      f"||grad_x E||_inf = {sol.info['residual']:.1e}")
print("x* =", np.round(sol.x, 3))

# One hypergradient per strategy.
for strategy in ("implicit", "fixed_point", "unroll", "finite_difference"):
    value, grad, info = bl.hypergradient(problem, loss, theta, strategy, return_info=True)
    print(f"{info['strategy']:>17}: L = {value:.6f}, dL/dtheta[:3] = {np.round(grad[:3], 8)}")

# All strategies side by side, against the default reference: fourth-order central
# differences of x*(theta), 4 warm-started solves per entry of theta.
report = bl.compare(problem, loss, theta, repeat=1)
print()
print(report)

# The same check on random directions v, as a test would write it (raises AssertionError).
for name in ("implicit", "fixed_point"):
    worst = check_vjp(problem, theta, name, rtol=1e-6, n_directions=2)
    print(f"check_vjp({name!r}): largest relative error {worst:.1e}")
