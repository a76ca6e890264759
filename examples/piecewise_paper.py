"""Piecewise polynomial layers: generators and a denoising autoencoder.
====================================================================

Reproduce the 1-D experiments of "Differentiable programming for piecewise polynomial
functions" (anonymous authors, paper under double-blind review): data-free generator
training (Figures 1-3) and the denoising autoencoder with a piecewise regularizer (Figures
4 and 6).

Layer: ``h = bl.torch.Layer(bl.problems.PiecewisePolynomial(k, degree), backward)``, the
optimal k-piece degree-d l2 projection (dynamic programming) with either the exact
block-sparse backward (``"analytic"``) or the straight-through estimator
(``"straight_through"``, identity backward: the paper's baseline).

1. **Generators** (section 5, appendix B.1). ``G: z (10) -> Linear 64 -> ReLU -> Linear 64
   -> ReLU -> Linear n``, n = 100 (the paper does not give the architecture or n: our
   choices), trained without data by alternating Adam steps (lr 1e-3, batch 32) on
   ``L_MSE = ||G(z) - h(G(z))||^2`` and ``L_latent = ||z1 - z2||^2 / ||G(z1) - G(z2)||^2``,
   for piecewise constant k = 3 and 10 and piecewise linear k = 3 and 5, each with the
   exact backward and with straight-through. Note what the math says: ``h`` is a
   projector ``J`` near ``G`` and ``G - h(G)`` is orthogonal to its range, so the exact
   gradient of ``L_MSE`` is ``2 (I - J)(G - h) = 2 (G - h)``, while straight-through's is
   ``2 (G - h) - 2 (G - h) = 0``: with it only ``L_latent`` trains the generator.
   Reported: ``L_MSE`` per sample at the end, relative to ``||G - mean G||^2`` on 256
   fresh z (0: exactly piecewise polynomial).
2. **Denoising autoencoder** (section 5, appendix B.2). Signals of length 50: piecewise
   constant (4 pieces, noise sd 0.03) and piecewise linear (3 pieces, noise sd 0.02),
   values in [0.1, 0.9]; 1000 training and 100 test signals. ``f: Linear(50, 30) -> ReLU
   -> Linear(30, 10) -> ReLU -> Linear(10, 30) -> ReLU -> Linear(30, 50) -> Sigmoid`` (the
   paper gives the decoder; the encoder is ours). Vanilla: ``1/2||f(x) - y||^2``;
   regularized: ``+ 1/2||f(x) - h(f(x))||^2`` with the exact backward. Adam lr 1e-3, batch
   50. Reported: test MSE against the clean signal (Figure 6: "nearly equal") and the
   piecewise residual ``||f(x) - h(f(x))||^2 / n`` (the prior, Figure 4: lower with the
   regularizer).

Figures go to ``--out`` (default ``examples/out/piecewise_paper.png``, matplotlib).
Run: ``python examples/piecewise_paper.py [--quick] [--part generators|dae|all]``. The full
run takes about four minutes on 2 busy cores (three with the DAE part alone under a
minute); ``--quick`` (a smoke run) about a minute, most of it compiling or loading the numba
kernels.
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import bilevel as bl
import bilevel.solvers

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="few steps: a smoke run")
parser.add_argument("--part", choices=["generators", "dae", "all"], default="all")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent / "out" / "piecewise_paper.png")
args = parser.parse_args()

torch.set_num_threads(1)
PP = bl.problems.PiecewisePolynomial
N_GEN, LATENT, BATCH = 100, 10, 32
GEN_STEPS = 40 if args.quick else 500
GENERATORS = [("piecewise constant, k = 3", 3, 0), ("piecewise constant, k = 10", 10, 0),
              ("piecewise linear, k = 3", 3, 1), ("piecewise linear, k = 5", 5, 1)]
BACKWARDS = {"exact (analytic)": "analytic", "straight-through": "straight_through"}
degenerate = []


def relative_residual(Y, H):
    """``||y - h(y)||^2 / ||y - mean y||^2`` per row, averaged."""
    Yc = Y - Y.mean(axis=1, keepdims=True)
    return float(np.mean(np.sum((Y - H) ** 2, axis=1) / np.sum(Yc**2, axis=1)))


def train_generator(k, degree, backward, seed):
    torch.manual_seed(seed)
    G = torch.nn.Sequential(torch.nn.Linear(LATENT, 64), torch.nn.ReLU(),
                            torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, N_GEN))
    opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    h = bl.torch.Layer(PP(k, degree), backward)
    losses = []
    for _ in range(GEN_STEPS):
        y = G(torch.randn(BATCH, LATENT))
        l_mse = ((y - h(y)) ** 2).sum(dim=1).mean()
        opt.zero_grad()
        l_mse.backward()
        opt.step()
        losses.append(float(l_mse))
        z1, z2 = torch.randn(BATCH, LATENT), torch.randn(BATCH, LATENT)
        l_lat = (((z1 - z2) ** 2).sum(1) / ((G(z1) - G(z2)) ** 2).sum(1).clamp_min(1e-8)).mean()
        opt.zero_grad()
        l_lat.backward()
        opt.step()
    with torch.no_grad():
        Y = G(torch.randn(256, LATENT)).double().numpy()
    H = PP(k, degree).capabilities.batch.solve(np.ascontiguousarray(Y)).x
    return np.array(losses), relative_residual(Y, H), Y[:3], H[:3]


def run_generators():
    print(f"\n=== data-free generators: n = {N_GEN}, batch {BATCH}, {GEN_STEPS} alternating "
          "steps of L_MSE and L_latent (Adam, lr 1e-3)")
    print("  paper: no numbers; Figures 1-3 show lower L_MSE and smoother samples with the "
          "exact backward than with straight-through")
    results = {}
    for label, k, degree in GENERATORS:
        for name, backward in BACKWARDS.items():
            start = time.perf_counter()
            losses, rel, Y, H = train_generator(k, degree, backward, args.seed)
            results[(label, name)] = (losses, Y, H)
            tail = losses[-max(1, GEN_STEPS // 10):].mean()
            print(f"  {label:27s} {name:17s} L_MSE (last 10% of steps) {tail:9.4f}; on 256 "
                  f"fresh z: ||G - h(G)||^2 / ||G - mean||^2 = {rel:.2e}  "
                  f"({time.perf_counter() - start:.1f} s)")
    return results


# --- denoising autoencoder -------------------------------------------------------------------
N_DAE = 50
DAE_SETS = [("piecewise constant", 4, 0, 0.03), ("piecewise linear", 3, 1, 0.02)]
DAE_EPOCHS = 3 if args.quick else 60


def make_signals(rng, count, k, degree, sd):
    """Clean k-piece signals of length 50 in [0.1, 0.9] (random breaks >= 6 apart), noisy."""
    clean = np.empty((count, N_DAE))
    for i in range(count):
        while True:
            cuts = np.sort(rng.choice(np.arange(6, N_DAE - 5), k - 1, replace=False))
            if np.all(np.diff(cuts) >= 6):
                break
        bounds = np.r_[0, cuts, N_DAE]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if degree == 0:
                clean[i, a:b] = rng.uniform(0.1, 0.9)
            else:
                clean[i, a:b] = np.linspace(*rng.uniform(0.1, 0.9, 2), b - a)
    return clean + sd * rng.standard_normal(clean.shape), clean


def train_dae(X, Y, Xt, Yt, k, degree, regularize, seed):
    torch.manual_seed(seed)
    f = torch.nn.Sequential(torch.nn.Linear(N_DAE, 30), torch.nn.ReLU(), torch.nn.Linear(30, 10),
                            torch.nn.ReLU(), torch.nn.Linear(10, 30), torch.nn.ReLU(),
                            torch.nn.Linear(30, N_DAE), torch.nn.Sigmoid())
    opt = torch.optim.Adam(f.parameters(), lr=1e-3)
    h = bl.torch.Layer(PP(k, degree), "analytic")
    X, Y = torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
    Xt_t = torch.tensor(Xt, dtype=torch.float32)
    curve = []
    gen = torch.Generator().manual_seed(seed)
    for _ in range(DAE_EPOCHS):
        for idx in torch.randperm(len(X), generator=gen).split(50):
            out = f(X[idx])
            loss = 0.5 * ((out - Y[idx]) ** 2).sum(1).mean()
            if regularize:
                loss = loss + 0.5 * ((out - h(out)) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            curve.append(float(0.5 * ((f(Xt_t).double().numpy() - Yt) ** 2).sum(1).mean()))
    with torch.no_grad():
        out = f(Xt_t).double().numpy()
    H = PP(k, degree).capabilities.batch.solve(np.ascontiguousarray(out)).x
    return (np.array(curve), float(np.mean((out - Yt) ** 2)),
            float(np.mean((out - H) ** 2)), out)


def run_dae():
    rng = np.random.default_rng(args.seed)
    print(f"\n=== denoising autoencoder: length {N_DAE}, 1000 train / 100 test, {DAE_EPOCHS} "
          "epochs, batch 50 (Adam, lr 1e-3)")
    print("  paper: no numbers; Figure 6: test losses nearly equal; Figure 4: the regularized "
          "DAE closer to piecewise")
    results = {}
    for label, k, degree, sd in DAE_SETS:
        X, Y = make_signals(rng, 1000, k, degree, sd)
        Xt, Yt = make_signals(rng, 100, k, degree, sd)
        for name, reg in (("vanilla DAE", False), ("DAE + piecewise reg.", True)):
            start = time.perf_counter()
            curve, mse, piecewise, out = train_dae(X, Y, Xt, Yt, k, degree, reg, args.seed)
            results[(label, name)] = (curve, Xt[:3], Yt[:3], out[:3])
            print(f"  {label:18s} {name:21s} test MSE vs clean {mse:.2e}; piecewise residual "
                  f"||f - h(f)||^2 / n = {piecewise:.2e}  ({time.perf_counter() - start:.1f} s)")
    return results


def plot(gen, dae):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (2 if gen else 0) + (1 if dae else 0)
    fig, axes = plt.subplots(rows, 4, figsize=(16, 3.2 * rows), squeeze=False)
    r = 0
    if gen:
        for c, (label, _, _) in enumerate(GENERATORS):
            ax = axes[r, c]
            for name, color in zip(BACKWARDS, ("tab:blue", "tab:red")):
                ax.semilogy(gen[(label, name)][0], color=color, label=name)
            ax.set_title(f"L_MSE: {label}", fontsize=9)
            ax.legend(fontsize=7)
            ax = axes[r + 1, c]
            for name, color in zip(BACKWARDS, ("tab:blue", "tab:red")):
                Y = gen[(label, name)][1]
                ax.plot(Y[0] / np.abs(Y[0]).max(), color=color, lw=1, label=f"sample, {name}")
            ax.set_title(f"samples (scaled): {label}", fontsize=9)
            ax.legend(fontsize=7)
        r += 2
    if dae:
        for c, (label, _, _, _) in enumerate(DAE_SETS):
            ax = axes[r, 2 * c]
            for name, color in (("vanilla DAE", "tab:red"), ("DAE + piecewise reg.", "tab:blue")):
                ax.semilogy(dae[(label, name)][0], color=color, label=name)
            ax.set_title(f"test loss: {label} (Figure 6)", fontsize=9)
            ax.legend(fontsize=7)
            ax = axes[r, 2 * c + 1]
            _, Xt, Yt, _ = dae[(label, "vanilla DAE")]
            ax.plot(Xt[0], color="0.7", lw=1, label="noisy")
            ax.plot(Yt[0], color="k", lw=1, label="clean")
            for name, color in (("vanilla DAE", "tab:red"), ("DAE + piecewise reg.", "tab:blue")):
                ax.plot(dae[(label, name)][3][0], color=color, lw=1, label=name)
            ax.set_title(f"denoised: {label} (Figure 4)", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"\nfigure: {args.out}")


def main():
    bilevel.solvers.warmup()
    gen = dae = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", bl.DegeneracyWarning)
        if args.part in ("generators", "all"):
            gen = run_generators()
        if args.part in ("dae", "all"):
            dae = run_dae()
    ties = sum(issubclass(w.category, bl.DegeneracyWarning) for w in caught)
    if ties:
        print(f"  ({ties} backward passes met a batch row whose optimal partition was not "
              "unique to 1e-6: one one-sided derivative there)")
    try:
        plot(gen, dae)
    except ImportError:
        print("matplotlib is not installed: no figure")


if __name__ == "__main__":
    main()
