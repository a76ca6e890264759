"""Select the Lasso penalty on diabetes with cubic features: hypergradients against a grid.
========================================================================================

Lower level (training half, 221 x 285: the 10 diabetes features and their products up to
degree 3, standardized with training statistics, y centered)::

    x*(lam) = argmin_x  ||X x - y||^2 / (2n) + sum_j lam_j |x_j|

Upper level: the squared error of x*(lam) on the validation half,
``L(x) = ||X_val x - y_val||^2 / (2m)``. The script

1. minimizes L over log(lam) from lam = lam_max / 10 with ``bl.minimize`` (L-BFGS) and the
   ``partial_smoothness`` strategy, recording the validation loss and time per outer step;
2. runs a geometric grid of lam in [lam_max / 1000, lam_max], warm-started along the path,
   recording cumulative time and the best validation loss so far;
3. tunes a weighted Lasso, one log weight per feature (theta of shape (285,)), with Adam
   from the scalar lam of step 1;
4. prints ``bl.compare`` at the selected lam, with both ``PartialSmoothness`` variants;

and, if matplotlib is installed, saves validation loss against lam and against time to
``examples/out/select_lasso_diabetes.png``.

Two properties of this data shape the script. The binary 'sex' feature takes two values,
so sex^2 = 3 sex - 2 and every product with sex^2 is a combination of others: some
columns are exactly collinear, and at small lam the restricted Hessian X_S^T X_S / n of
the support S can be singular. And the validation loss, piecewise smooth in lam, tends to
be minimized where a feature enters the support: at a kink, where x*(lam) is not
differentiable. Adam on the scalar log lam oscillates around that kink; L-BFGS's line
search homes in on it. The weighted Lasso fits 285 hyperparameters to the validation half,
so its validation loss is optimistic: judge it on fresh data before trusting it.

Run: ``python examples/select_lasso_diabetes.py [--quick] [--progress]`` (needs
scikit-learn; matplotlib for the figure).
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.preprocessing import PolynomialFeatures
from tqdm.auto import tqdm

import bilevel as bl
from bilevel.datasets import load, split_standardize

torch.set_num_threads(1)  # small problem: one torch thread avoids contention with BLAS threads

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true",
                    help="fewer outer steps and grid values (a smoke run, well under 20 s)")
parser.add_argument("--progress", action="store_true", help="show tqdm progress bars")
parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
args = parser.parse_args()
scalar_steps, grid_size, weighted_steps, repeat = (
    (10, 10, 60, 1) if args.quick else (30, 30, 500, 3))

# --- data --------------------------------------------------------------------------------
X, y = load("diabetes")                                           # 442 x 10, raw
features = PolynomialFeatures(3, include_bias=False).fit_transform(X)        # 442 x 285
X_train, y_train, X_val, y_val = split_standardize(features, y, train_fraction=0.5,
                                                   seed=args.seed)
y_mean = y_train.mean()                         # the Lasso fits no intercept: center y
y_train, y_val = y_train - y_mean, y_val - y_mean
n, p = X_train.shape
problem = bl.problems.Lasso(X_train, y_train)
loss = bl.losses.SquaredError(X_val, y_val)
lam_max = problem.lam_max()                     # the smallest lam with x* = 0
print(f"diabetes, cubic features: train {n} x {p}, validation {X_val.shape[0]}; "
      f"rank of X_train {np.linalg.matrix_rank(X_train)}; lam_max = {lam_max:.4g}")


def val_loss(x):
    return loss.value_and_grad(x)[0]


# The validation loss sees x* only through the predictions X_val x*, and the validation
# columns obey the same exact dependencies as the training columns (sex^2 = 3 sex - 2 holds
# on every row, and standardizing with one set of statistics keeps it). So v = grad_x L lies
# in the range of the singular restricted Hessian, and its pseudo-inverse gives the exact
# gradient of L: every x* the minimizer set contains has the same predictions.
strategy = bl.strategies.PartialSmoothness(pinv=True)

# Warm-up, outside the timed regions: the first solve loads the numba kernels from the disk
# cache (compiles them on a first run), and the first torch optimizer imports torch._dynamo
# (about 2 s). One throwaway outer step pays both.
bl.minimize(problem, loss, lam_max / 10, strategy, steps=1, progress=False)


def degeneracies(caught):
    """Count the DegeneracyWarnings among caught warnings; re-issue the others."""
    count = 0
    for w in caught:
        if issubclass(w.category, bl.DegeneracyWarning):
            count += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return count


# --- 1. gradient-based selection of one lam ----------------------------------------------
visited = []


def stalled(step, theta, value, grad):
    """Stop L-BFGS once its iterate stops moving (at a kink its line search stalls)."""
    visited.append(float(theta))
    return len(visited) > 1 and abs(np.log(visited[-1] / visited[-2])) < 1e-9


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", bl.DegeneracyWarning)
    start = time.perf_counter()
    scalar = bl.minimize(problem, loss, lam_max / 10, strategy, optimizer="lbfgs",
                         steps=scalar_steps, log_scale=True, progress=args.progress,
                         callback=stalled)
    scalar_time = time.perf_counter() - start
scalar_degenerate = degeneracies(caught)
lam_opt = float(scalar.theta)
scalar_support = np.count_nonzero(problem.solve(lam_opt).x)
print(f"\n1. bl.minimize ({scalar.strategy}, lbfgs) on log lam from lam_max/10: "
      f"lam = lam_max * {lam_opt / lam_max:.4g}, validation loss {scalar.loss:.6g}, "
      f"{scalar_support} features, {scalar.n_steps} steps in {scalar_time:.3f} s")
if scalar_degenerate:
    print(f"   {scalar_degenerate} hypergradient(s) met a DegeneracyWarning: line-search points "
          "next to a support change, a kink of L(lam) where x* is not differentiable")

# --- 2. grid search, warm-started along the regularization path --------------------------
grid = np.geomspace(lam_max, lam_max / 1000, grid_size)          # from x* = 0 downwards
grid_values, grid_times = np.empty(grid_size), np.empty(grid_size)
x = None
start = time.perf_counter()
for i, lam in enumerate(tqdm(grid, disable=not args.progress, desc="grid")):
    x = problem.solve(lam, init=x).x
    grid_values[i] = val_loss(x)
    grid_times[i] = time.perf_counter() - start
best = int(np.argmin(grid_values))
grid_best_so_far = np.minimum.accumulate(grid_values)
print(f"\n2. grid of {grid_size} lam in [lam_max/1000, lam_max], warm-started: best lam = "
      f"lam_max * {grid[best] / lam_max:.4g}, validation loss {grid_values[best]:.6g}, "
      f"{grid_times[-1]:.3f} s in all")

# --- 3. weighted Lasso: one log weight per feature -----------------------------------------
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", bl.DegeneracyWarning)
    start = time.perf_counter()
    weighted = bl.minimize(problem, loss, np.full(p, lam_opt), strategy, optimizer="adam",
                           lr=0.1, steps=weighted_steps, log_scale=True,
                           progress=args.progress)
    weighted_time = time.perf_counter() - start
weighted_degenerate = degeneracies(caught)
# Adam's iterates do not decrease L monotonically: keep the best one it visited.
k_best = int(np.argmin(weighted.history["loss"]))
lam_weighted = weighted.history["theta"][k_best]
weighted_loss = weighted.history["loss"][k_best]
weighted_support = np.flatnonzero(problem.solve(lam_weighted).x)
print(f"\n3. weighted Lasso (285 log weights, adam) from the scalar lam: validation loss "
      f"{weighted_loss:.6g} at step {k_best} of {weighted.n_steps} ({weighted_time:.3f} s), "
      f"{weighted_support.size} features; their lam_j / lam_max in "
      f"[{lam_weighted[weighted_support].min() / lam_max:.3g}, "
      f"{lam_weighted[weighted_support].max() / lam_max:.3g}]")
if weighted_degenerate:
    print(f"   {weighted_degenerate} hypergradient(s) met a DegeneracyWarning (a support change)")

# --- 4. every strategy at the selected lam ------------------------------------------------
# The selected lam sits next to the kink where the next feature enters: the support is
# stable only within a relative distance of about the non-degeneracy margin. A finite
# difference stencil that crossed it would average the slopes of two pieces; the reference
# (4th-order finite differences) therefore shrinks its step to a tenth of the margin, which
# stays accurate because the solver is exact to round-off on a stable support (polished).
# A finite difference at the usual step (7e-4 relative) is listed too, to show the kink.
_, _, info = bl.hypergradient(problem, loss, lam_opt, strategy, return_info=True)
margin = info["margin"]
print(f"\n4. every strategy at the selected lam (support {info['dim']}, non-degeneracy margin "
      f"{margin:.1e}); reference: finite differences, relative step {margin / 10:.1e}")
unroll = bl.strategies.Unroll(n_steps=200)
candidates = [bl.strategies.PartialSmoothness(), strategy, "analytic", "implicit",
              "fixed_point", unroll, bl.strategies.FiniteDifference(rel_step=7e-4)]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", bl.DegeneracyWarning)
    # 200 unrolled steps stop far from x*, by design (the row shows how far): unroll warns.
    warnings.filterwarnings("ignore", message="unroll: the replay is not converged",
                            category=bl.ConvergenceWarning)
    report = bl.compare(problem, loss, lam_opt, strategies=candidates, log_scale=True,
                        repeat=repeat)
degeneracies(caught)
print(report)
rows = {row["label"]: row for row in report.rows}
for label, row in rows.items():
    if "failed" in row:
        print(f"   {label} failed: {row['failed'][:160]}...")
exact = [f"{label} ({row['error']:.0e})" for label, row in rows.items()
         if row.get("error", np.inf) < 1e-6]
print("   agree with the reference to 1e-6: " + ", ".join(exact))
if "error" in rows["fixed_point"]:       # an independent exact method: GMRES on the prox step
    g_ps, g_fp = (np.asarray(rows[k]["grad"][0]) for k in ("partial_smoothness(pinv=True)",
                                                              "fixed_point"))
    gap = np.linalg.norm(g_ps - g_fp) / np.linalg.norm(g_fp)
    print(f"   partial_smoothness(pinv=True) and fixed_point differ by {gap:.0e} (relative)"
          + ("; the error column is the reference's own: a small step costs digits"
             if gap < 0.01 * rows["fixed_point"]["error"] else ""))
fd = rows["finite_difference(rel_step=0.0007)"]
if fd.get("error", 0.0) > 1e-6:
    print(f"   finite_difference at a relative step of 7e-4 is off by {fd['error']:.0e}: its "
          "stencil crosses the support change")
unrolled = rows["unroll(n_steps=200)"]
if unrolled.get("error", 0.0) > 1e-6:
    print(f"   unroll is off by {unrolled['error']:.0e}: {unroll.n_steps} proximal-gradient "
          f"steps from 0 are far from x* (residual {unrolled['residual']:.1e})")

# --- summary -----------------------------------------------------------------------------
print("\nsummary                       lam / lam_max        validation loss   features  time")
print(f"gradient, scalar (lbfgs)      {lam_opt / lam_max:<20.4g} {scalar.loss:<17.6g} "
      f"{scalar_support:<9d} {scalar_time:.3f} s ({scalar.n_steps} steps)")
print(f"grid search ({grid_size} values)       {grid[best] / lam_max:<20.4g} "
      f"{grid_values[best]:<17.6g} {np.count_nonzero(problem.solve(grid[best]).x):<9d} "
      f"{grid_times[-1]:.3f} s ({grid_size} solves)")
print(f"gradient, weighted (adam)     {'per feature':<20} {weighted_loss:<17.6g} "
      f"{weighted_support.size:<9d} {weighted_time:.3f} s ({weighted.n_steps} steps)")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no plot (pip install 'bilevel[plot]')")
else:
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.semilogx(grid / lam_max, grid_values, "o-", color="0.4", ms=3, label="grid")
    path = np.ravel(scalar.history["theta"]) / lam_max
    left.semilogx(path, scalar.history["loss"], "o", color="C1", ms=4,
                  label="bl.minimize (lbfgs): iterates")
    left.semilogx([lam_opt / lam_max], [scalar.loss], "*", color="C3", ms=12, label="result")
    left.set_xlabel("lam / lam_max")
    left.set_ylabel("validation loss")
    left.set_title("Lasso, diabetes with cubic features")
    left.set_ylim(0.99 * scalar.loss, min(grid_values.max(), 1.25 * grid_values[best]))
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    # Times: the grid and the scalar search start at 0; the weighted search starts where
    # the scalar one ended (it continues from its result). history["time"][k] is taken at
    # the end of step k, whose starting iterate has loss history["loss"][k].
    right.step(grid_times, grid_best_so_far, where="post", color="0.4",
               label=f"grid search, best so far ({grid_size} values)")
    right.plot(scalar.history["time"], scalar.history["loss"], "o-", color="C1", ms=3,
               label="gradient, one lam (lbfgs)")
    right.plot(scalar_time + np.asarray(weighted.history["time"]), weighted.history["loss"],
               "-", color="C2", label=f"gradient, {p} weights (adam)")
    right.set_xscale("log")
    right.set_xlabel("wall time (s)")
    right.set_ylabel("validation loss")
    right.set_ylim(0.98 * weighted_loss, 1.1 * grid_values[best])
    right.set_title("selection cost")
    right.grid(True, which="both", alpha=0.3)
    right.legend()
    fig.tight_layout()
    target = out / "select_lasso_diabetes.png"
    fig.savefig(target, dpi=120)
    print(f"\nplot written to {target}")
