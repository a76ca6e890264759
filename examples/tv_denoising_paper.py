"""Reproduce the 1-D total-variation denoising experiments of Chaudhuri and Maddu (2021).
======================================================================================

K. Dasgupta Chaudhuri, S. Maddu, "Differentiable optimisation layers", 2021, section 3.1.
Lower level, for a noisy signal s of length 100 (``bl.problems.TV1D(order, norm)``):

    y*(s, lam) = argmin_y  1/2 ||y - s||^2 + lam ||D^k y||_1        (norm "l1")
                           1/2 ||y - s||^2 + lam/2 ||D^k y||^2      (norm "l2"),  k = 1, 2, 3

Data (our choices where the paper gives none): 600 signals of 100 samples, the first 540
for training and the last 60 for testing, clean signals shared by every noise level,
i.i.d. Gaussian noise (the paper draws cosine noise from "a randomly generated covariance
matrix" it does not specify; we use the identity times sd^2):

- cosine: ``cos(2 pi f t + phi)``, t = 0, 0.01, ..., 0.99, f uniform in [1, 3] cycles per
  signal, phi uniform in [0, 2 pi); noise sd 0.1 (Table 1), 0.05 and 0.01 (Table 3);
- piecewise constant: 2 to 4 jumps (uniform) at distinct random positions in 5..95, the
  3 to 5 levels uniform in [10, 100]; noise sd 5 (Table 2), 10 and 1 (Table 4).

The script

1. (Tables 1-2) grid-searches lam in [0, 50] for l1 and l2, orders 1-3, minimizing the
   train MSE ``mean (y* - clean)^2``: one batched solve of the 600 signals per grid value
   (``TV1D(...).capabilities.batch.solve``). The grid is the paper's 20 values
   ``linspace(0, 50, 20)`` (its best lam are 50/19 multiples) merged with a finer grid, so
   that both optima are read off the same run. Then (our addition) it selects lam by
   gradient: L-BFGS on ``log lam`` from lam = 10 minimizing ``log(train MSE)`` (same
   minimizer, scale-free), the hypergradient coming from ``bl.torch.Layer`` on the
   540 x 100 training batch;
2. (Tables 3-4) trains a fully connected layer 100 -> 100 (no activation) followed by the
   TV layer (l1, order 3 for cosine, order 1 for piecewise constant, lam fixed at the grid
   optimum of the same TV layer on the same data, as the paper does), and the FC layer
   alone as the baseline: 100 epochs, batch 10, Adam (lr 1e-4), MSE against the clean
   signal. The paper does not say how the FC layer was initialized: we use torch's default
   ``nn.Linear`` initialization (``--fc-init identity`` starts from y = x instead).

and saves the grid-search curves and one test prediction per configuration (the paper's
Figures 1-2) to ``examples/out/tv_denoising_paper.png``.

The TV1D order-2/3 l1 solver runs here with ``tol=1e-10`` (duality gap relative to
``max(||s||^2/2, 1)``) instead of its default 1e-13: for lam above a few units the
relative gap stalls at round-off between 1e-13 and 1e-11 on these signals, so with the
default every row runs ``max_iter`` = 500 projected-Newton iterations (about ten times
slower) and warns; the solutions agree to ~1e-13 either way.

Run: ``python examples/tv_denoising_paper.py [--quick] [--seed 0] [--fc-init default]``
(matplotlib for the figure). ``--quick`` (< 1 min): the paper's 20-value grid, fewer
L-BFGS evaluations, one noise level per signal type and 5 epochs.
"""

import argparse
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import bilevel as bl
import bilevel.solvers

torch.set_num_threads(1)  # 10-signal batches: one torch thread avoids contention

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true",
                    help="coarse grid, few L-BFGS evaluations, one noise level per signal "
                         "type, 5 epochs (under a minute)")
parser.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
parser.add_argument("--fc-init", choices=("default", "identity"), default="default",
                    help="initialization of the FC layer: torch's default, or W = I, b = 0")
args = parser.parse_args()

N_SIGNALS, N_TRAIN, LENGTH = 600, 540, 100
EPOCHS = 5 if args.quick else 100
BATCH, LR = 10, 1e-4
LBFGS_EVALS = 10 if args.quick else 25
NOISE = {"cosine": (0.1,) if args.quick else (0.1, 0.05, 0.01),      # Tables 1 and 3
         "piecewise": (5.0,) if args.quick else (10.0, 5.0, 1.0)}    # Tables 2 and 4
TABLE12_NOISE = {"cosine": 0.1, "piecewise": 5.0}
LAYER_ORDER = {"cosine": 3, "piecewise": 1}                 # the TV layer of Tables 3-4
CONFIGS = [(norm, order) for norm in ("l1", "l2") for order in (1, 2, 3)]
SOLVER_TOL = 1e-10                                          # see the module docstring

# The paper's numbers, transcribed from its Tables 1-4. Tables 1-2: best lam, least train
# loss, least test loss, search time (s); Tables 3-4: train loss, test loss, time (s).
PAPER_GRID = {
    "cosine": {("l1", 1): (2.6316, 0.1338, 0.1354, 77), ("l1", 2): (7.8947, 0.0849, 0.0833, 84),
               ("l1", 3): (34.2105, 0.0819, 0.0796, 120), ("l2", 1): (7.8947, 0.0915, 0.0934, 64),
               ("l2", 2): (50.0, 0.0928, 0.0903, 65), ("l2", 3): (50.0, 0.141, 0.1355, 66)},
    "piecewise": {("l1", 1): (10.5263, 4.3777, 4.7051, 201),
                  ("l1", 2): (2.6316, 10.2687, 10.0671, 250),
                  ("l1", 3): (2.6316, 13.3525, 13.8286, 269),
                  ("l2", 1): (0.0, 25.068, 24.8718, 169),
                  ("l2", 2): (2.6316, 22.9727, 25.117, 182),
                  ("l2", 3): (2.6316, 21.8773, 23.8416, 186)}}
PAPER_LAYER = {
    ("cosine", 0.1): {"FC": (0.0138, 0.0187, 16), "FC+TV": (0.0095, 0.0127, 1851)},
    ("cosine", 0.05): {"FC": (0.0065, 0.0080, 12), "FC+TV": (0.0038, 0.0048, 1771)},
    ("cosine", 0.01): {"FC": (0.0023, 0.0024, 11), "FC+TV": (0.0009, 0.0009, 1516)},
    ("piecewise", 10.0): {"FC": (73.7327, 92.0652, 12), "FC+TV": (55.6828, 75.6486, 2317)},
    ("piecewise", 5.0): {"FC": (53.8459, 69.4389, 12), "FC+TV": (44.3047, 58.3109, 2268)},
    ("piecewise", 1.0): {"FC": (47.00489, 60.7361, 11), "FC+TV": (41.2010, 53.7937, 1248)}}

# --- data --------------------------------------------------------------------------------
rng = np.random.default_rng(args.seed)
t = np.arange(LENGTH) / LENGTH
freq = rng.uniform(1.0, 3.0, (N_SIGNALS, 1))
phase = rng.uniform(0.0, 2 * np.pi, (N_SIGNALS, 1))
clean = {"cosine": np.cos(2 * np.pi * freq * t + phase), "piecewise": np.empty((N_SIGNALS, LENGTH))}
for row in clean["piecewise"]:
    jumps = np.sort(rng.choice(np.arange(5, 96), size=rng.integers(2, 5), replace=False))
    levels = rng.uniform(10.0, 100.0, jumps.size + 1)
    row[:] = levels[np.searchsorted(jumps, np.arange(LENGTH), side="right")]
noisy = {(kind, sd): clean[kind] + sd * rng.standard_normal((N_SIGNALS, LENGTH))
         for kind in ("cosine", "piecewise") for sd in (NOISE[kind] + (TABLE12_NOISE[kind],))}
train, test = slice(0, N_TRAIN), slice(N_TRAIN, N_SIGNALS)

fine = np.unique(np.concatenate([np.geomspace(0.01, 1.0, 9)[:-1],       # small lam
                                 np.arange(1.0, 50.0 + 1e-9, 0.5)]))     # 1 to 50, step 0.5
paper_grid = np.linspace(0.0, 50.0, 20)
grid = paper_grid if args.quick else np.unique(np.concatenate([paper_grid, fine]))
on_paper_grid = np.isin(grid, paper_grid)


def problem_for(norm, order):
    return bl.problems.TV1D(order=order, norm=norm, tol=SOLVER_TOL)


def strategy_for(problem):
    """The exact batched strategy: analytic where offered, else partial smoothness."""
    return "analytic" if "analytic_vjp" in problem.capabilities else "partial_smoothness"


class Caught:
    """Record warnings in a block and count them by category (re-issue foreign ones)."""

    def __enter__(self):
        self._ctx = warnings.catch_warnings(record=True)
        self._list = self._ctx.__enter__()
        warnings.simplefilter("always")
        self.counts = Counter()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        for w in self._list:
            if issubclass(w.category, (bl.ConvergenceWarning, bl.DegeneracyWarning)):
                self.counts[w.category.__name__] += 1
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return False

    def __str__(self):
        return ", ".join(f"{n} x{c}" for n, c in sorted(self.counts.items()))


# Warm-up, outside the timed regions: loads the numba kernels from the disk cache (compiles
# them on a first run), and one layer call imports torch's autograd machinery.
start = time.perf_counter()
bilevel.solvers.warmup()
for norm, order in CONFIGS:
    prob = problem_for(norm, order)
    s = torch.ones(2, 8, dtype=torch.float64).cumsum(1).requires_grad_()
    bl.torch.Layer(prob, strategy_for(prob))(s, torch.tensor(0.5)).sum().backward()
print(f"warm-up (numba kernels, torch): {time.perf_counter() - start:.1f} s; "
      f"{'quick run' if args.quick else 'full run'}, seed {args.seed}")


# --- 1. grid search and gradient-based selection of lam (Tables 1-2) ----------------------
def grid_search(problem, S, C):
    """Train and test MSE of the TV denoiser along the grid: one batched solve per value."""
    mse = np.empty((grid.size, 2))
    start = time.perf_counter()
    for i, lam in enumerate(grid):
        err = (problem.capabilities.batch.solve(S, np.full(S.shape[0], lam)).x - C) ** 2
        mse[i] = err[train].mean(), err[test].mean()
    return mse, time.perf_counter() - start


def select_lam(problem, S, C, lam0=10.0):
    """L-BFGS on log lam, minimizing log(train MSE), hypergradients through the layer."""
    layer = bl.torch.Layer(problem, strategy_for(problem))
    S, C = torch.from_numpy(S[train]), torch.from_numpy(C[train])
    log_lam = torch.tensor(np.log(lam0), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_lam], lr=1.0, max_iter=LBFGS_EVALS, max_eval=LBFGS_EVALS,
                            tolerance_grad=1e-6, tolerance_change=1e-10,
                            line_search_fn="strong_wolfe")
    path = []                                   # (lam, train MSE, elapsed time) per evaluation
    start = time.perf_counter()

    def closure():
        opt.zero_grad()
        loss = torch.log(torch.mean((layer(S, log_lam.exp()) - C) ** 2))
        loss.backward()
        path.append((float(log_lam.detach().exp()), float(loss.detach().exp()),
                     time.perf_counter() - start))
        return loss

    opt.step(closure)
    elapsed = time.perf_counter() - start
    lam, mse, _ = min(path, key=lambda p: p[1])   # the best point it evaluated
    return lam, mse, elapsed, np.array(path)


grids, selected, search = {}, {}, {}
for kind in ("cosine", "piecewise"):
    sd = TABLE12_NOISE[kind]
    S, C = noisy[kind, sd], clean[kind]
    for norm, order in CONFIGS:
        problem = problem_for(norm, order)
        with Caught() as caught_grid:
            mse, grid_time = grid_search(problem, S, C)
        best = int(np.argmin(mse[:, 0]))
        paper_best = np.flatnonzero(on_paper_grid)[np.argmin(mse[on_paper_grid, 0])]
        grids[kind, norm, order] = {"mse": mse, "time": grid_time, "best": best,
                                    "paper_best": paper_best, "warnings": str(caught_grid)}
        with Caught() as caught_sel:
            lam, sel_mse, sel_time, path = select_lam(problem, S, C)
        y_test = problem.capabilities.batch.solve(S[test], np.full(N_SIGNALS - N_TRAIN, lam)).x
        selected[kind, norm, order] = {"lam": lam, "train": sel_mse, "time": sel_time,
                                       "test": float(np.mean((y_test - C[test]) ** 2)),
                                       "path": path, "warnings": str(caught_sel)}
        # Progress: the tables below need every configuration.
        print(f"  {kind:9s} {norm} k={order}: grid {grid_time:.1f} s, L-BFGS lam = {lam:.4g} "
              f"in {sel_time:.1f} s", flush=True)


def seconds(x):
    return f"{x:.2f} s" if x < 60 else f"{int(x // 60)} min {x % 60:.0f} s"


for kind, title in (("cosine", "Table 1: cosine signals, noise sd 0.1"),
                    ("piecewise", "Table 2: piecewise-constant signals, noise sd 5")):
    print(f"\n{title}. Grid of {grid.size} lam in [0, 50] "
          + ("(the paper's linspace(0, 50, 20))" if args.quick else
             "(the paper's 20 values, 0.01-1 geometric, 1-50 step 0.5)")
          + "; train MSE minimized. Ours vs paper; 'paper grid' = best of the 20 values "
          "the paper searched.")
    print(f"{'norm':4} {'k':>1} | {'best lam':>8} {'train':>9} {'test':>9} {'grid time':>9} "
          f"{'paper grid':>10} | {'L-BFGS lam':>10} {'train':>9} {'time':>7} {'evals':>5} | "
          f"{'paper: lam':>10} {'train':>8} {'test':>8} {'time':>10}")
    for norm, order in CONFIGS:
        g, sel = grids[kind, norm, order], selected[kind, norm, order]
        mse, best = g["mse"], g["best"]
        p_lam, p_train, p_test, p_time = PAPER_GRID[kind][norm, order]
        print(f"{norm:4} {order:>1} | {grid[best]:8.4g} {mse[best, 0]:9.4g} {mse[best, 1]:9.4g} "
              f"{seconds(g['time']):>9} {grid[g['paper_best']]:10.4g} | {sel['lam']:10.4g} "
              f"{sel['train']:9.4g} {seconds(sel['time']):>7} {len(sel['path']):5d} | "
              f"{p_lam:10.4g} {p_train:8.4g} {p_test:8.4g} {seconds(p_time):>10}")
    notes = [f"{norm} k={order}: grid {grids[kind, norm, order]['warnings'] or '-'}, L-BFGS "
             f"{selected[kind, norm, order]['warnings'] or '-'}" for norm, order in CONFIGS
             if grids[kind, norm, order]["warnings"] or selected[kind, norm, order]["warnings"]]
    if notes:
        print("   warnings: " + "; ".join(notes))
total_grid = sum(g["time"] for g in grids.values())
total_sel = sum(s["time"] for s in selected.values())
ratio = {key: selected[key]["train"] / grids[key]["mse"][grids[key]["best"], 0] for key in grids}
inside = [r for key, r in ratio.items() if selected[key]["lam"] <= grid[-1]]
outside = [f"{key[0]} {key[1]} k={key[2]} (lam {selected[key]['lam']:.4g})" for key in ratio
           if selected[key]["lam"] > grid[-1]]
print(f"\nL-BFGS through the layer vs the grid: {seconds(total_sel)} against "
      f"{seconds(total_grid)} in all ({total_sel / total_grid:.0%})"
      + (f"; train MSE / grid optimum in [{min(inside):.4f}, {max(inside):.4f}] over the "
         f"{len(inside)} configurations where it stays in [0, 50] (below 1: between grid "
         "values)" if inside else "")
      + (f"; beyond lam = 50, outside the searched range: {', '.join(outside)}" if outside else ""))


# --- 2. FC layer, then the TV layer (Tables 3-4) ------------------------------------------
def tv_lam(kind, sd):
    """Grid optimum of the l1 TV layer of order LAYER_ORDER[kind] on this data set."""
    key = (kind, "l1", LAYER_ORDER[kind])
    if sd == TABLE12_NOISE[kind]:
        g = grids[key]
        return grid[g["best"]], g["time"]
    mse, grid_time = grid_search(problem_for("l1", LAYER_ORDER[kind]), noisy[kind, sd],
                                 clean[kind])
    return grid[int(np.argmin(mse[:, 0]))], grid_time


def train_model(kind, sd, lam=None):
    """Train FC (+ TV layer at lam) with Adam; return train/test MSE, time and predictions."""
    X = torch.tensor(noisy[kind, sd], dtype=torch.float32)
    Y = torch.tensor(clean[kind], dtype=torch.float32)
    torch.manual_seed(args.seed)
    fc = torch.nn.Linear(LENGTH, LENGTH)
    if args.fc_init == "identity":
        with torch.no_grad():
            fc.weight.copy_(torch.eye(LENGTH))
            fc.bias.zero_()
    problem = problem_for("l1", LAYER_ORDER[kind])
    tv = None if lam is None else bl.torch.Layer(problem, strategy_for(problem))
    lam_t = None if lam is None else torch.tensor(lam, dtype=torch.float32)

    def model(x):
        return fc(x) if tv is None else tv(fc(x), lam_t)

    opt = torch.optim.Adam(fc.parameters(), lr=LR)
    order = torch.Generator().manual_seed(args.seed)
    with Caught() as caught:
        start = time.perf_counter()
        for _ in range(EPOCHS):
            perm = torch.randperm(N_TRAIN, generator=order)
            for i in range(0, N_TRAIN, BATCH):
                idx = perm[i:i + BATCH]
                opt.zero_grad()
                loss = torch.mean((model(X[idx]) - Y[idx]) ** 2)
                loss.backward()
                opt.step()
        elapsed = time.perf_counter() - start
        with torch.no_grad():
            pred = model(X).numpy()
    err = (pred - clean[kind]) ** 2
    return {"train": err[train].mean(), "test": err[test].mean(), "time": elapsed,
            "pred": pred, "warnings": str(caught)}


layer_runs = {}
for kind in ("cosine", "piecewise"):
    for sd in NOISE[kind]:
        lam, lam_time = tv_lam(kind, sd)
        problem = problem_for("l1", LAYER_ORDER[kind])
        tv_alone = problem.capabilities.batch.solve(noisy[kind, sd], np.full(N_SIGNALS, lam)).x
        layer_runs[kind, sd] = {"lam": lam, "lam_time": lam_time, "TV": tv_alone,
                                "FC": train_model(kind, sd),
                                "FC+TV": train_model(kind, sd, lam)}

for kind, title in (("cosine", "Table 3: cosine signals, FC layer + TV layer (l1, order 3)"),
                    ("piecewise", "Table 4: piecewise-constant signals, FC layer + TV layer "
                                  "(l1, order 1)")):
    print(f"\n{title}; {EPOCHS} epochs, batch {BATCH}, Adam lr {LR:g}, FC init "
          f"{args.fc_init!r}. Ours vs paper (cvxpylayers).")
    print(f"{'noise':>5} {'model':6} {'lam':>6} | {'train':>9} {'test':>9} {'time':>8} | "
          f"{'paper: train':>12} {'test':>8} {'time':>10}")
    for sd in NOISE[kind]:
        run = layer_runs[kind, sd]
        for model in ("FC", "FC+TV", "TV"):
            if model == "TV":
                err = (run["TV"] - clean[kind]) ** 2
                ours = f"{err[train].mean():9.4g} {err[test].mean():9.4g} {'':>8}"
                paper = f"{'(TV layer alone, not in the paper)':>32}"
            else:
                r = run[model]
                p_train, p_test, p_time = PAPER_LAYER[kind, sd][model]
                ours = f"{r['train']:9.4g} {r['test']:9.4g} {seconds(r['time']):>8}"
                paper = f"{p_train:12.4g} {p_test:8.4g} {seconds(p_time):>10}"
            lam_col = f"{run['lam']:6.3g}" if model != "FC" else f"{'':6}"
            print(f"{sd:5g} {model:6} {lam_col} | {ours} | {paper}")
    warn = [f"noise {sd:g} {m}: {layer_runs[kind, sd][m]['warnings']}" for sd in NOISE[kind]
            for m in ("FC", "FC+TV") if layer_runs[kind, sd][m]["warnings"]]
    if warn:
        print("   warnings: " + "; ".join(warn))
    extra = [f"{sd:g}: {seconds(layer_runs[kind, sd]['lam_time'])}" for sd in NOISE[kind]
             if sd != TABLE12_NOISE[kind]]
    if extra:
        print("   lam: grid optimum of the TV layer alone (same grid as Table "
              f"{1 if kind == 'cosine' else 2}); extra grid searches for noise " + ", ".join(extra))

# --- summary -----------------------------------------------------------------------------
fc_tv_times = [layer_runs[key]["FC+TV"]["time"] for key in layer_runs]
print("\nsummary")
for kind in ("cosine", "piecewise"):
    g = {key[1:]: grids[key] for key in grids if key[0] == kind}
    winner = min(g, key=lambda key: g[key]["mse"][g[key]["best"], 0])
    wins = sum(layer_runs[kind, sd]["FC+TV"]["test"] < layer_runs[kind, sd]["FC"]["test"]
               for sd in NOISE[kind])
    print(f"  {kind:9}: best TV denoiser {winner[0]} order {winner[1]} (train MSE "
          f"{g[winner]['mse'][g[winner]['best'], 0]:.4g}; paper: l1 order "
          f"{LAYER_ORDER[kind]}); FC+TV beats FC on test at {wins} of {len(NOISE[kind])} "
          "noise levels")
print(f"  grid searches {seconds(total_grid)} for {len(grids)} configurations x {grid.size} "
      f"values (paper: {seconds(sum(v[3] for t in PAPER_GRID.values() for v in t.values()))});"
      f" L-BFGS selection {seconds(total_sel)}")
print(f"  FC+TV training, {EPOCHS} epochs: {seconds(min(fc_tv_times))} to "
      f"{seconds(max(fc_tv_times))} per run (paper: 20 to 39 min per 100 epochs)")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no plot (pip install 'bilevel[plot]')")
else:
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    n_cols = max(3, max(len(v) for v in NOISE.values()))
    fig, axes = plt.subplots(3, n_cols, figsize=(5 * n_cols, 11), squeeze=False)
    for ax, kind in zip(axes[0], ("cosine", "piecewise")):
        for c, (norm, order) in enumerate(CONFIGS):
            g, sel = grids[kind, norm, order], selected[kind, norm, order]
            line, = ax.plot(grid[1:], g["mse"][1:, 0], "-", color=f"C{c}", lw=1.2,
                            label=f"{norm}, order {order}")
            ax.plot(grid[g["best"]], g["mse"][g["best"], 0], "o", color=line.get_color(), ms=5)
            if sel["lam"] <= grid[-1]:
                ax.plot(sel["lam"], sel["train"], "x", color="k", ms=6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("lam (lam = 0 not shown)")
        ax.set_ylabel("train MSE")
        ax.set_title(f"{kind}, noise sd {TABLE12_NOISE[kind]:g}: grid (o best, x L-BFGS)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[0, 2]
    for c, key in enumerate((("cosine", "l1", 3), ("piecewise", "l1", 1))):
        g, sel = grids[key], selected[key]
        ref = g["mse"][g["best"], 0]
        ticks = g["time"] * np.arange(1, grid.size + 1) / grid.size   # grid: equal time per value
        ax.step(ticks, np.minimum.accumulate(g["mse"][:, 0]) / ref, where="post", color=f"C{c}",
                label=f"{key[0]} {key[1]} order {key[2]}: grid, best so far")
        ax.plot(sel["path"][:, 2], np.minimum.accumulate(sel["path"][:, 1]) / ref, "o--",
                color=f"C{c}", ms=3, label="L-BFGS through the layer")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("train MSE / grid optimum")
    ax.set_title("selection cost")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    for row, kind in zip(axes[1:], ("cosine", "piecewise")):
        for ax in row[len(NOISE[kind]):]:
            ax.axis("off")
        for ax, sd in zip(row, NOISE[kind]):
            run, i = layer_runs[kind, sd], N_TRAIN           # the first test signal
            ax.plot(noisy[kind, sd][i], ".", color="0.6", ms=3, label="noisy input")
            ax.plot(clean[kind][i], "k-", lw=1.5, label="clean")
            ax.plot(run["FC"]["pred"][i], "-", color="C0", lw=1, label="FC layer")
            ax.plot(run["FC+TV"]["pred"][i], "-", color="C3", lw=1.2, label="FC + TV layer")
            ax.plot(run["TV"][i], "--", color="C2", lw=1, label="TV layer alone")
            ax.set_title(f"{kind}, noise sd {sd:g}: a test signal (lam = {run['lam']:.3g})")
            ax.legend(fontsize=7)
    fig.tight_layout()
    target = out / "tv_denoising_paper.png"
    fig.savefig(target, dpi=110)
    print(f"\nplot written to {target}")
