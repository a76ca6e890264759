"""Segmentation with a connected-component layer.
==============================================

The toy version of Table 1 of
"Differentiable programming for piecewise polynomial functions" (anonymous authors, paper
under double-blind review; section 5 and appendix B.3).

The Weizmann horse data set is not available here; we use synthetic shapes instead: 32 x 32
grey images of one random ellipse or rectangle (the foreground, mask 1) whose intensity
differs from a smoothly varying background by a random contrast, plus Gaussian noise and
a few random dark blobs inside the shape (holes to fill) — 400 training, 100 validation
and 100 test images (seeded).

Network (the paper's "three-layer fully convolutional network", sizes ours): Conv 3x3
1 -> 16, ReLU, Conv 3x3 16 -> 16, ReLU, Conv 3x3 16 -> 1, Sigmoid; trained with the mean
squared error against the mask (as in the paper), Adam (lr 1e-3, weight decay 1e-4: the
paper's 3e-5 over 10,000 epochs does not fit in minutes), batch 16, 25 epochs. Three models,
same seed and initialization:

- *M_baseline*: ``MSE(p, mask)``, ``p`` the sigmoid output;
- *M_conn*: ``MSE(h(p), mask)`` with ``h = bl.torch.Layer(ConnectedComponents(10))``:
  quantize ``p`` into 10 bins, label the connected components (scikit-image), replace
  each pixel by its component's mean; backward: the mean of the cotangent over each
  component (the paper's equation (2)). Predictions are ``h(p)``;
- *M_reg*: ``MSE(p, mask) + MSE(p, h(p))``; predictions are ``p``.

Jaccard (intersection over union with the mask) on the test set after thresholding at the
value in {0.05, 0.10, ..., 0.95} that maximizes it on the validation set (the paper: 0.25,
chosen on a validation set); mean +- standard deviation over 3 seeds (data and weights).

Run: ``python examples/piecewise_segmentation.py [--quick]`` (four to five minutes on 2 busy
cores; ``--quick``: one seed, 3 epochs, a smoke run of about 10 seconds). Writes ``--out`` (default
``examples/out/piecewise_segmentation.png``).
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import bilevel as bl

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="one seed, 3 epochs: a smoke run")
parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out"
                    / "piecewise_segmentation.png")
args = parser.parse_args()

torch.set_num_threads(1)
SIZE, LEVELS = 32, 10
N_TRAIN, N_VAL, N_TEST = (64, 32, 32) if args.quick else (400, 100, 100)
EPOCHS = 3 if args.quick else 25
SEEDS = (0,) if args.quick else (0, 1, 2)
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
PAPER = {"M_baseline": (0.4986, 0.01, 0.5056, 0.006), "M_conn": (0.4810, 0.004, 0.4973, 0.008),
         "M_reg": (0.4991, 0.009, 0.4998, 0.006)}


def shapes(rng, count):
    """Noisy images of one ellipse or rectangle on a smooth background, and the masks."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    images = np.empty((count, SIZE, SIZE))
    masks = np.empty((count, SIZE, SIZE))
    for i in range(count):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        ry, rx = rng.uniform(0.12, 0.3, 2)
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        gy, gx = rng.uniform(-0.3, 0.3, 2)
        background = 0.35 + gy * (yy - 0.5) + gx * (xx - 0.5)
        image = background + rng.uniform(0.25, 0.45) * mask
        for _ in range(rng.integers(0, 4)):                    # dark blobs in the shape
            by, bx = rng.uniform(cy - ry / 2, cy + ry / 2), rng.uniform(cx - rx / 2, cx + rx / 2)
            image -= 0.3 * mask * (((yy - by) ** 2 + (xx - bx) ** 2) < 0.003)
        images[i] = image + 0.12 * rng.standard_normal((SIZE, SIZE))
        masks[i] = mask
    return images.astype(np.float32)[:, None], masks.astype(np.float32)[:, None]


def network():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 1, 3, padding=1), torch.nn.Sigmoid())


def predict(model, net, h, X):
    with torch.no_grad():
        p = net(torch.from_numpy(X))
        return (h(p[:, 0])[:, None] if model == "M_conn" else p).numpy()


def jaccard(pred, masks, threshold):
    b = pred >= threshold
    m = masks > 0.5
    inter = (b & m).sum(axis=(1, 2, 3))
    union = (b | m).sum(axis=(1, 2, 3))
    return float(np.mean(inter / np.maximum(union, 1)))


def train(model, data, seed):
    (X, M), (Xv, Mv), (Xt, Mt) = data
    torch.manual_seed(seed)
    net = network()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    h = bl.torch.Layer(bl.problems.ConnectedComponents(LEVELS), "analytic")
    X_t, M_t = torch.from_numpy(X), torch.from_numpy(M)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(X), generator=gen).split(16):
            p = net(X_t[idx])
            if model == "M_baseline":
                loss = ((p - M_t[idx]) ** 2).mean()
            elif model == "M_conn":
                loss = ((h(p[:, 0])[:, None] - M_t[idx]) ** 2).mean()
            else:
                loss = ((p - M_t[idx]) ** 2).mean() + ((p[:, 0] - h(p[:, 0])) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    val = predict(model, net, h, Xv)
    threshold = max(THRESHOLDS, key=lambda t: jaccard(val, Mv, t))
    test = predict(model, net, h, Xt)
    return jaccard(test, Mt, threshold), threshold, test


def main():
    scores = {m: [] for m in PAPER}
    examples = {}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", bl.DegeneracyWarning)
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            data = (shapes(rng, N_TRAIN), shapes(rng, N_VAL), shapes(rng, N_TEST))
            for model in PAPER:
                score, threshold, test = train(model, data, seed)
                scores[model].append(score)
                print(f"  seed {seed}  {model:10s}  test Jaccard {score:.4f}  (validation "
                      f"threshold {threshold:.2f})")
                if seed == SEEDS[0]:
                    examples[model] = (test[:4], threshold)
                    examples["data"] = data[2]
    ties = sum(issubclass(w.category, bl.DegeneracyWarning) for w in caught)
    print(f"\n=== Table 1 (toy: synthetic {SIZE}x{SIZE} shapes, {len(SEEDS)} seed(s), {EPOCHS} "
          f"epochs; {time.perf_counter() - start:.0f} s)")
    print(f"  {'model':12s} {'ours (synthetic shapes)':>24s}   {'paper 128x128 horses':>22s}   "
          f"{'paper 256x256 horses':>22s}")
    for model, (m1, s1, m2, s2) in PAPER.items():
        s = np.array(scores[model])
        print(f"  {model:12s} {s.mean():>15.4f} +- {s.std():.4f}   {m1:>13.4f} +- {s1:<6g}   "
              f"{m2:>13.4f} +- {s2:<6g}")
    if ties:
        print(f"  ({ties} backward passes met a pixel within 1e-6 of a quantization edge: one "
              "one-sided derivative there)")
    try:
        plot(examples)
    except ImportError:
        print("matplotlib is not installed: no figure")


def plot(examples):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Xt, Mt = examples["data"]
    fig, axes = plt.subplots(4, 5, figsize=(10, 8))
    for r in range(4):
        axes[r, 0].imshow(Xt[r, 0], cmap="gray")
        axes[r, 1].imshow(Mt[r, 0], cmap="gray")
        for c, model in enumerate(PAPER, start=2):
            pred, threshold = examples[model]
            axes[r, c].imshow(pred[r, 0] >= threshold, cmap="gray")
    for c, title in enumerate(["image", "mask", *PAPER]):
        axes[0, c].set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
