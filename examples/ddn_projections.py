"""Lp sphere and ball projections before the classifier: Deep Declarative Networks, Table IV.
==========================================================================================

Gould, Hartley, Campbell, "Deep Declarative Networks", IEEE TPAMI 2021, section 7: a
ResNet-18 on ImageNet whose final fully-connected layer is preceded by a batch
normalization without learnable parameters and a projection
``y = argmin_{u in C} 1/2 ||u - x||^2`` onto an L1, L2 or Linf sphere or ball; the paper
reports better mAP (calibration) and slightly better top-1 accuracy than without the
projection. ImageNet cannot be fetched here; this script runs the same protocol on
scikit-learn's digits (1797 images of 8 x 8 pixels, 10 classes), split in half (stratified,
a different split per seed):

- **Model**: a small CNN, conv 3x3 16 -> conv 3x3 32 -> max-pool 2 -> conv 3x3 64 (each
  with batch norm and ReLU) -> global average pooling to 64 features (the ResNet's
  penultimate features), then ``BatchNorm1d(64, affine=False)`` and the projection, then
  the final linear layer 64 -> 10. Projections: ``bl.torch.Layer(bl.problems.Projection(
  set, radius))`` for ``l1_sphere``, ``l2_sphere``, ``l1_ball``, ``l2_ball``,
  ``linf_ball``; the package has no Linf *sphere*, so :class:`LinfSphere` composes the
  Linf-ball layer (rows outside the ball, where the two projections coincide) with the
  closed form inside the ball (the largest ``|x_i|`` moved to ``+-r``).
- **Pre-scaling (the radius)**: as the paper, a statistic of the batch-normalized
  training-set features of the penultimate layer of the network trained without
  projection ("pre-trained"). The paper's formula did not survive in our copy of its text;
  we take the mean Lp norm of those features, ``r_p = mean_i ||z_i||_p`` (per seed), which
  is of the size of the paper's 250, 15 and 3 for the 512 features of a ResNet-18 and,
  as the paper asks, makes the projections act on most features without shrinking them
  far: every sphere projection moves every feature, each ball about half of them.
- **Training**: SGD, momentum 0.9, weight decay 1e-4, batch 64, learning rate 0.1
  divided by 10 every third of the epochs (the paper: 90 epochs, every 30), every model
  from scratch.
- **Metrics**: top-1 accuracy and mAP (mean over the classes of the average precision of
  the one-vs-rest softmax scores, scikit-learn's ``average_precision_score``), in
  percent, mean and standard deviation over the seeds, beside the paper's ImageNet
  numbers (top-5 accuracy is omitted: with 10 classes it is about 100%).
- **Time**: one training epoch of every projected model with our layer and with a
  DDN-style layer (the closed-form projections and the masked gradients of the DDN
  reference code, written in torch in :class:`DDNProjection`; ``benchmarks/`` has a
  DDN-style pooling layer but no projection), in this process, and their ratio.

Run: ``python examples/ddn_projections.py [--quick] [--seeds 0 1 2 3 4] [--out FIG]``. The
full run (5 seeds, 40 epochs, 8 models) takes about 6 minutes on 2 cores; ``--quick`` (one
seed, 3 epochs) about 20 seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import _ddn_training
import numpy as np
import torch
from _ddn_training import kinks_counted, one_torch_thread, scores

import bilevel as bl

HERE = Path(__file__).resolve().parent
SETS = ("l1_sphere", "l2_sphere", "linf_sphere", "l1_ball", "l2_ball", "linf_ball")
MODELS = ("none", "bn") + SETS
ORD = {"l1": 1, "l2": 2, "linf": np.inf}
FEATURES, CLASSES = 64, 10

# The paper's Table IV (ImageNet, ResNet-18): top-1 accuracy %, mAP %. Its rows name the
# sets with subscripts lost in our copy; we read them in the text's order L1, L2, Linf.
PAPER_IV = {"none": (69.80, 58.97), "pretrained": (69.76, 53.76),
            "l1_sphere": (69.92, 62.72), "l2_sphere": (70.66, 71.97),
            "linf_sphere": (70.03, 63.98), "l1_ball": (70.17, 61.26),
            "l2_ball": (70.59, 72.43), "linf_ball": (70.06, 63.33)}
LABELS = {"none": "no projection", "bn": "batch norm, no projection"}


# --- the projection layers -------------------------------------------------------------
class LinfSphere(torch.nn.Module):
    """Projection onto ``||u||_inf = r``: the Linf-ball layer outside, a closed form inside.

    Outside the ball (``||x||_inf >= r``) the nearest point of the sphere is the clipped
    ``x``, which ``bl.problems.Projection("linf_ball", r)`` computes with its exact
    derivative; inside, it is ``x`` with its largest ``|x_k|`` moved to ``sign(x_k) r``,
    whose derivative is the identity with a zero at ``k``.
    """

    def __init__(self, radius):
        super().__init__()
        self.radius = float(radius)
        self.ball = bl.torch.Layer(bl.problems.Projection("linf_ball", self.radius))

    def forward(self, x):
        y = self.ball(x)
        k = x.abs().argmax(dim=-1, keepdim=True)
        xk = x.gather(-1, k)
        r = torch.full_like(xk, self.radius)
        target = torch.where(xk < 0, -r, r)
        onehot = torch.zeros_like(x).scatter_(-1, k, 1.0)
        pushed = x + onehot * (target - xk)            # d/dx: identity, zero at k
        inside = xk.abs() < self.radius
        return torch.where(inside, pushed, y)


def projection_layer(name, radius):
    """Our layer: ``bl.torch.Layer(bl.problems.Projection(name, radius))`` (Linf sphere:
    :class:`LinfSphere`)."""
    if name == "linf_sphere":
        return LinfSphere(radius)
    return bl.torch.Layer(bl.problems.Projection(name, radius))


def _simplex_torch(v, r):
    """Euclidean projection of the rows of ``v`` onto ``{w >= 0, sum w = r}`` by sorting."""
    mu = torch.sort(v, dim=-1, descending=True).values
    cumsum = torch.cumsum(mu, dim=-1)
    j = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    rho = torch.sum(mu * j > cumsum - r, dim=-1, keepdim=True)
    tau = (torch.gather(cumsum, -1, rho - 1) - r) / rho.to(v.dtype)
    return torch.clamp(v - tau, min=0.0)


class _DDNProjectionFn(torch.autograd.Function):
    """A DDN-style projection: torch closed forms forward, the masked gradients backward."""

    @staticmethod
    def forward(ctx, x, name, r):
        norm, kind = name.split("_")
        if norm == "l2":
            y = r * x / x.norm(dim=-1, keepdim=True)
        elif norm == "l1":
            y = torch.sign(x) * _simplex_torch(x.abs(), r)
        else:
            y = torch.clamp(x, -r, r)
            if kind == "sphere":
                k = x.abs().argmax(dim=-1, keepdim=True)
                inside = x.gather(-1, k).abs() < r
                pushed = y.scatter(-1, k, r * torch.sign(x.gather(-1, k)))
                y = torch.where(inside, pushed, y)
        outside = x.norm(p=ORD[norm], dim=-1, keepdim=True) > r
        if kind == "ball":
            y = torch.where(outside, y, x)
        ctx.save_for_backward(x, y, outside)
        ctx.name, ctx.r = name, r
        return y

    @staticmethod
    def backward(ctx, v):
        x, y, outside = ctx.saved_tensors
        norm, kind = ctx.name.split("_")
        if norm == "l2":
            u = y / y.norm(dim=-1, keepdim=True)
            g = ctx.r / x.norm(dim=-1, keepdim=True) * (v - u * (u * v).sum(-1, keepdim=True))
        elif norm == "l1":
            s = torch.sign(y)
            g = s.abs() * v - s * (s * v).sum(-1, keepdim=True) / (s * s).sum(-1, keepdim=True)
        else:
            at_radius = y.abs() >= y.abs().amax(dim=-1, keepdim=True)
            g = v * (~at_radius)
        if kind == "ball":
            g = torch.where(outside, g, v)
        return g, None, None


class DDNProjection(torch.nn.Module):
    """The DDN-style reference projection layer (timings only)."""

    def __init__(self, name, radius):
        super().__init__()
        self.name, self.radius = name, float(radius)

    def forward(self, x):
        return _DDNProjectionFn.apply(x, self.name, self.radius)


# --- model and data ----------------------------------------------------------------------
class DigitsCNN(torch.nn.Module):
    """A small CNN; ``head`` (optional) sits between its 64 features and the linear layer."""

    def __init__(self, head=None):
        super().__init__()
        bn = torch.nn.BatchNorm2d
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), bn(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1), bn(32), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, FEATURES, 3, padding=1), bn(FEATURES), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = head if head is not None else torch.nn.Identity()
        self.fc = torch.nn.Linear(FEATURES, CLASSES)

    def forward(self, images):
        """Logits of images (batch, 1, 8, 8)."""
        return self.fc(self.head(self.features(images)))


def make_model(name, radius=None, ddn=False):
    """``none``, ``bn`` (batch norm only) or a projection of ``radius`` after batch norm."""
    if name == "none":
        return DigitsCNN()
    bn = torch.nn.BatchNorm1d(FEATURES, affine=False)      # no learnable parameters
    if name == "bn":
        return DigitsCNN(bn)
    proj = DDNProjection(name, radius) if ddn else projection_layer(name, radius)
    return DigitsCNN(torch.nn.Sequential(bn, proj))


def digits(seed):
    """``(X_train, y_train, X_test, y_test)``: images (n, 1, 8, 8) float32, half and half."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    X = (data.images / 16.0).astype(np.float32)[:, None]
    Xtr, Xte, ytr, yte = train_test_split(X, data.target, test_size=0.5, random_state=seed,
                                          stratify=data.target)
    mean, sd = Xtr.mean(), Xtr.std()
    return (Xtr - mean) / sd, ytr, (Xte - mean) / sd, yte


def train(model, X, y, epochs, seed, *, label="", quiet=False, counter=None, batch=64):
    """SGD, momentum 0.9, weight decay 1e-4; learning rate 0.1 / 10 every third of the epochs."""
    return _ddn_training.train(model, X, y, epochs, seed, lr=0.1, gamma=0.1, weight_decay=1e-4,
                               batch=batch, label=label, quiet=quiet, counter=counter)


def radii(model, X):
    """The pre-scaling: mean Lp norm of the batch-normalized training features, per set."""
    model.eval()
    with torch.no_grad():
        f = model.features(torch.from_numpy(X)).double()
    z = (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + 1e-5)   # BatchNorm1d's
    return {name: float(z.norm(p=ORD[name.split("_")[0]], dim=1).mean()) for name in SETS}


def run(seeds, epochs, quiet=False):
    """Every model for every seed: ``(results, radii, counter)``.

    ``results[model]`` is a list over seeds of ``(acc, mAP)``; ``radii`` one dict per seed;
    ``counter[model]["kinks"]`` the DegeneracyWarnings counted.
    """
    results = {m: [] for m in MODELS}
    scales, counter = [], {}
    for seed in seeds:
        Xtr, ytr, Xte, yte = digits(seed)
        for name in MODELS:
            torch.manual_seed(seed)
            r = scales[-1].get(name) if name in SETS else None
            model = make_model(name, r)
            kinks = counter.setdefault(name, {})
            train(model, Xtr, ytr, epochs, seed, quiet=quiet, counter=kinks,
                  label=f"[seed {seed}, {name}]")
            results[name].append(scores(model, Xte, yte, kinks))
            if name == "none":                # the "pre-trained" network sets the radii
                scales.append(radii(model, Xtr))
    return results, scales, counter


def time_epochs(seed, scales, repeat, counter):
    """Seconds per training epoch, ours against the DDN-style layer: ``{set: (ours, ddn)}``."""
    Xtr, ytr, _, _ = digits(seed)
    out = {}
    for name in SETS:
        times = []
        for ddn in (False, True):
            torch.manual_seed(seed)
            model = make_model(name, scales[name], ddn=ddn)
            train(model, Xtr[:129], ytr[:129], 1, seed, quiet=True, counter=counter)  # warm-up
            samples = []
            for _ in range(repeat):
                start = time.perf_counter()
                train(model, Xtr, ytr, 1, seed, quiet=True, counter=counter)
                samples.append(time.perf_counter() - start)
            times.append(float(np.median(samples)))
        out[name] = tuple(times)
    return out


def time_layers(scales, repeat=200):
    """Seconds per forward + backward of the layer alone on a (64, 64) float32 batch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, FEATURES, generator=gen).requires_grad_()
    v = torch.randn(64, FEATURES, generator=gen)
    out = {}
    for name in SETS:
        times = []
        for layer in (projection_layer(name, scales[name]), DDNProjection(name, scales[name])):
            samples = []
            for _ in range(repeat + 5):
                start = time.perf_counter()
                torch.autograd.grad(layer(x), x, v)
                samples.append(time.perf_counter() - start)
            times.append(float(np.median(samples[5:])))
        out[name] = tuple(times)
    return out


def markdown_table(results):
    """``| model | top-1 | mAP | paper top-1 | paper mAP |`` with mean ± sd over seeds."""
    lines = ["| model | top-1 % | mAP % | paper top-1 % | paper mAP % |", "|---|---|---|---|---|"]

    def cell(v):
        v = np.asarray(v)
        return f"{v.mean():.2f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.2f}"

    for name in MODELS:
        acc, ap = zip(*results[name])
        paper = PAPER_IV.get(name)
        ref = f"{paper[0]:.2f} | {paper[1]:.2f}" if paper else "- | -"
        lines.append(f"| {LABELS.get(name, name)} | {cell(acc)} | {cell(ap)} | {ref} |")
    return "\n".join(lines)


def plot(results, out):
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed (pip install matplotlib): no figure at {out}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, k, what in ((axes[0], 0, "top-1 accuracy (%)"), (axes[1], 1, "mAP (%)")):
        v = np.array([[c[k] for c in results[m]] for m in MODELS])
        sd = v.std(axis=1, ddof=1) if v.shape[1] > 1 else np.zeros(len(MODELS))
        ax.bar(range(len(MODELS)), v.mean(axis=1), yerr=sd, capsize=3,
               color=["0.6", "0.8"] + ["C0"] * 3 + ["C1"] * 3)
        ax.set_xticks(range(len(MODELS)), [LABELS.get(m, m).replace(", ", ",\n")
                                           for m in MODELS], rotation=45, fontsize=7,
                      ha="right")
        lo = v.mean(axis=1).min() - 3 * max(sd.max(), 0.2)
        ax.set_ylim(max(0.0, lo), 100.0)
        ax.set_ylabel(what)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Projections before the classifier, scikit-learn digits", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"figure: {out}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: one seed, 3 epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds, one split and initialization each (default 0 1 2 3 4; "
                             "--quick: 0)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 40)")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "ddn_projections.png",
                        help="the figure (matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or lines")
    return parser.parse_args(argv)


@one_torch_thread
def main(argv=None):
    args = parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3, 4])
    epochs = args.epochs or (3 if args.quick else 40)
    start = time.perf_counter()
    from bilevel.solvers.projections import warmup

    warmup()                                     # compile or load the numba kernels
    print(f"digits: 1797 images 8 x 8, half for training; {epochs} epochs, seeds "
          f"{' '.join(map(str, seeds))}")
    results, scales, counter = run(seeds, epochs, quiet=args.quiet)
    print("\nradii (mean Lp norm of the batch-normalized training features, per seed): "
          + "; ".join(f"{p} {np.mean([s[f'{p}_ball'] for s in scales]):.2f}"
                      for p in ("l1", "l2", "linf")))
    print(f"\nTable IV: ours mean ± sd over {len(seeds)} seed(s); the paper's ResNet-18 on "
          "ImageNet (its torchvision pre-trained model: top-1 69.76, mAP 53.76)")
    print(markdown_table(results))
    times = time_epochs(seeds[0], scales[0], 1 if args.quick else 5, {})
    print(f"\nTraining time per epoch ({len(digits(seeds[0])[0])} images, batch 64; median "
          f"of {1 if args.quick else 5}), ours against the DDN-style layer:")
    for name, (ours, ddn) in times.items():
        print(f"  {name:11s}: ours {ours * 1e3:.0f} ms, ddn-style {ddn * 1e3:.0f} ms, "
              f"ratio {ddn / ours:.2f}x")
    with kinks_counted({}):
        alone = time_layers(scales[0], 20 if args.quick else 200)
    print("The layer alone, forward + backward of a (64, 64) float32 batch (median):")
    for name, (ours, ddn) in alone.items():
        print(f"  {name:11s}: ours {ours * 1e6:.0f} us, ddn-style {ddn * 1e6:.0f} us, "
              f"ratio {ddn / ours:.2f}x")
    print("\nDegeneracyWarnings counted (batches with a threshold hit, one-sided derivatives "
          "used): " + ", ".join(f"{name} {counter[name].get('kinks', 0)}" for name in SETS))
    plot(results, args.out)
    print(f"total {time.perf_counter() - start:.0f} s")
    return results, scales, times, alone


if __name__ == "__main__":
    main()
