"""Tune the L2 penalty of logistic regression on breast cancer by hypergradient descent.
=====================================================================================

Lower level (training half, 285 x 30, standardized, labels in {-1, +1}):

    x*(lam) = argmin_x  mean_i log(1 + exp(-y_i a_i^T x)) + lam/2 ||x||^2

Upper level: the logistic loss of x*(lam) on the validation half. The script

1. compares every strategy's hypergradient d L / d log(lam) at lam = 1e-2;
2. minimizes L over log(lam) from lam = 1 with L-BFGS (``bl.minimize``) and implicit
   differentiation;
3. checks the result against a grid of lam and, if matplotlib is installed, saves the
   validation loss along the grid with the optimizer's path to
   ``examples/out/tune_logistic_breast_cancer.png``.

Run: ``python examples/tune_logistic_breast_cancer.py`` (needs scikit-learn for the data).
"""

import argparse
from pathlib import Path

import numpy as np
import torch

import bilevel as bl
from bilevel.datasets import load, split_standardize

# No options: --help describes the script instead of running it.
argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()

torch.set_num_threads(1)  # small problem: one torch thread avoids contention with BLAS threads

X, y = load("breast_cancer")                      # 569 x 30, y in {-1, +1}
X_train, y_train, X_val, y_val = split_standardize(X, y, train_fraction=0.5, seed=0)
problem = bl.problems.LogisticRegression(X_train, y_train)
loss = bl.losses.LogisticLoss(X_val, y_val)

# 1. Every strategy on one instance, against fourth-order finite differences.
report = bl.compare(problem, loss, 1e-2, log_scale=True, repeat=3)
print(report)
print()

# 2. Hypergradient descent on log(lam) from lam = 1: L-BFGS, implicit differentiation.
result = bl.minimize(problem, loss, 1.0, strategy="implicit", optimizer="lbfgs", steps=20,
                     log_scale=True, progress=False)
lam_opt = float(result.theta)
print(f"minimize ({result.strategy}, lbfgs): lam = {lam_opt:.5g}, validation loss "
      f"{result.loss:.6f} after {result.n_steps} steps, |dL/dlog lam| = "
      f"{result.history['grad_norm'][-1]:.1e}")

# 3. The same curve on a grid: one lower-level solve per point.
grid = np.logspace(-4, 1, 61)
values = np.array([loss.value_and_grad(problem.solve(lam).x)[0] for lam in grid])
best = int(np.argmin(values))
print(f"grid of {grid.size} values: best lam = {grid[best]:.5g}, validation loss "
      f"{values[best]:.6f}")
accuracy = np.mean(np.sign(X_val @ problem.solve(lam_opt).x) == y_val)
print(f"validation accuracy at the tuned lam: {accuracy:.3f}")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no plot (pip install 'bilevel[plot]')")
else:
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(grid, values, color="0.3", label="validation loss on a grid")
    path = np.ravel(result.history["theta"])
    ax.semilogx(path, result.history["loss"], "o-", color="C1", ms=4,
                label="bl.minimize: evaluated points")
    ax.semilogx([lam_opt], [result.loss], "*", color="C3", ms=12, label="result")
    ax.set_xlabel("lam")
    ax.set_ylabel("validation logistic loss")
    ax.set_title("L2 logistic regression, breast cancer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    target = out / "tune_logistic_breast_cancer.png"
    fig.savefig(target, dpi=120)
    print(f"plot written to {target}")
