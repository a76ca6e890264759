"""Robust pooling in a point-cloud classifier: Deep Declarative Networks, Tables II and III.
=========================================================================================

Gould, Hartley, Campbell, "Deep Declarative Networks", IEEE TPAMI 2021, section 7: a
PointNet whose global max pooling is replaced by robust pooling
``y_c = argmin_y sum_i phi(y - f_ci; alpha = 1)`` over the points ``i`` of each feature
channel ``c``, trained and tested with outliers (Table II) or trained without and tested
with them (Table III). The paper uses ModelNet40 (2048 points per CAD model), which cannot
be fetched here; this script runs the same protocol on a stand-in made here:

- **Data**: point clouds sampled uniformly (by area) on 10 parametric surfaces: sphere,
  ellipsoid, cube, cuboid, cylinder, cone, torus, capsule, square pyramid, octahedron.
  Each cloud has a random scale per axis (0.8-1.25), a random pose (azimuth uniform, tilt
  up to 10 degrees: upright like ModelNet), is centred and normalized into the unit ball,
  with jitter of standard deviation 0.01. A fresh data set per seed.
- **Outliers**: as the paper (after Qi et al.), a fraction of each cloud's points,
  chosen at random, replaced by points uniform in the unit ball, at rates 0, 10, 20, 50 and
  90 percent (Table II: train and test at the same rate; Table III: trained at 0, tested
  at 0, 1, 10, 20, ..., 90 percent).
- **Model**: PointNet without the transform nets, as the DDN reference: a shared per-point
  MLP 3 -> 32 -> 64 -> 64 (1x1 convolutions, batch norm, ReLU; the last layer batch norm
  without ReLU, so that ``alpha = 1`` is one standard deviation), a global pooling layer
  over the points, and a classifier 64 -> 64 -> 10 (batch norm, ReLU, dropout 0.3).
  Pooling: ``max`` (the paper's [40]), or ``bl.torch.Layer(bl.problems.RobustPooling(
  penalty, alpha=1.0))`` on the features of shape (batch, channels, points): ``Q``
  quadratic (average pooling), ``PH`` pseudo-Huber, ``H`` Huber, ``W`` Welsch (started
  at the median and at the mean, the lower minimum kept per channel: ``start="best"``, as
  the paper) and ``TQ`` truncated quadratic (solved globally).
- **Training**: SGD, momentum 0.9, batch 24, learning rate 0.01 halved every third of the
  epochs (the paper: 60 epochs, halved every 20).
- **Metrics**: top-1 accuracy and mAP (mean over classes of the average precision of the
  one-vs-rest softmax scores, scikit-learn's ``average_precision_score``), in percent, mean
  and standard deviation over the seeds, beside the paper's numbers.
- **Time**: one training epoch of the pseudo-Huber and the Welsch models with our layer
  and with the DDN-style LBFGS pooling layer of ``benchmarks/bench_pooling.py``, in this
  process, and their ratio.

Run: ``python examples/ddn_point_clouds.py [--quick] [--seeds 0 1 2] [--out FIG]``. The
full run (3 seeds; 40 training and 25 test clouds per class of 128 points; 20 epochs; 90
trainings) takes about 12 minutes on 2 cores; ``--quick`` (one seed, 12 training clouds
per class of 64 points, 4 epochs, rates 0 and 50) about 15 seconds. Huber's and the
truncated quadratic's kinks are hit with nonzero probability by random data: the layer's
``DegeneracyWarning`` is counted, not raised (see :func:`_ddn_training.kinks_counted`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _ddn_training
import numpy as np
import torch
from _ddn_training import one_torch_thread, scores

import bilevel as bl

HERE = Path(__file__).resolve().parent
POOLINGS = ("max", "Q", "PH", "H", "W", "TQ")
PENALTIES = {"Q": "quadratic", "PH": "pseudo_huber", "H": "huber", "W": "welsch",
             "TQ": "truncated_quadratic"}
TABLE2_RATES = (0, 10, 20, 50, 90)
TABLE3_RATES = (0, 1, 10, 20, 30, 40, 50, 60, 70, 80, 90)

# The paper's Tables II and III (ModelNet40): top-1 accuracy and mAP in percent, columns
# max ([40]), Q, PH, H, W, TQ.
PAPER_II = {
    0: ((88.4, 84.7, 84.7, 86.3, 86.1, 85.4), (95.6, 93.8, 95.0, 95.4, 95.0, 93.8)),
    10: ((79.4, 84.3, 85.6, 85.5, 86.6, 85.5), (89.4, 94.3, 94.6, 95.1, 94.6, 94.7)),
    20: ((76.2, 84.8, 84.8, 85.2, 86.3, 85.5), (87.8, 94.8, 95.0, 95.0, 94.8, 95.0)),
    50: ((72.0, 84.0, 83.1, 83.9, 84.3, 83.9), (83.3, 93.8, 93.5, 94.3, 94.8, 94.8)),
    90: ((29.7, 61.7, 63.4, 63.1, 65.3, 61.8), (38.9, 76.8, 78.7, 78.5, 79.1, 76.6)),
}
PAPER_III = {
    0: PAPER_II[0],
    1: ((32.6, 84.9, 84.7, 86.4, 86.2, 85.3), (48.6, 93.8, 95.1, 95.3, 95.1, 93.0)),
    10: ((6.47, 83.9, 84.6, 85.3, 86.0, 85.9), (8.20, 93.4, 94.8, 94.4, 94.9, 93.9)),
    20: ((5.95, 79.6, 82.8, 81.1, 84.7, 84.9), (7.73, 91.9, 93.4, 92.7, 94.2, 94.6)),
    30: ((5.55, 70.9, 74.2, 72.2, 77.6, 83.2), (6.00, 87.8, 89.5, 85.1, 90.9, 92.8)),
    40: ((5.35, 55.3, 59.1, 55.4, 63.1, 75.6), (6.41, 77.6, 80.2, 72.7, 83.2, 90.6)),
    50: ((4.86, 32.9, 36.0, 34.6, 44.1, 57.9), (5.68, 62.3, 60.2, 60.1, 66.4, 85.3)),
    60: ((4.42, 14.5, 16.2, 18.1, 27.1, 30.6), (5.08, 39.1, 36.3, 38.5, 42.7, 68.5)),
    70: ((4.25, 5.03, 6.33, 7.95, 14.1, 11.9), (4.66, 22.5, 19.3, 18.4, 25.7, 47.9)),
    80: ((3.11, 4.10, 4.51, 5.64, 8.88, 5.11), (4.21, 10.8, 8.91, 8.98, 14.9, 26.7)),
    90: ((3.72, 4.06, 4.06, 4.30, 5.68, 4.22), (4.49, 8.20, 5.98, 5.80, 8.37, 9.78)),
}


# --- data ------------------------------------------------------------------------------
def _sphere(rng, n):
    p = rng.standard_normal((n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _triangles(rng, n, vertices, faces):
    """``n`` points uniform on a triangle mesh."""
    V, F = np.asarray(vertices, float), np.asarray(faces)
    area = np.linalg.norm(np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]]), axis=1)
    f = rng.choice(len(F), n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    A, B, C = V[F[f, 0]], V[F[f, 1]], V[F[f, 2]]
    return A + u[:, None] * (B - A) + v[:, None] * (C - A)


def _box(rng, n, half):
    half = np.asarray(half, float)
    area = np.repeat([half[1] * half[2], half[0] * half[2], half[0] * half[1]], 2)
    face = rng.choice(6, n, p=area / area.sum())
    p = rng.uniform(-1.0, 1.0, (n, 3))
    p[np.arange(n), face // 2] = np.where(face % 2, 1.0, -1.0)
    return p * half


def _cylinder(rng, n, r=0.5, h=1.0):
    side, cap = 4 * np.pi * r * h, np.pi * r * r
    part = rng.choice(3, n, p=np.array([side, cap, cap]) / (side + 2 * cap))
    t = rng.uniform(0, 2 * np.pi, n)
    rad = np.where(part == 0, r, r * np.sqrt(rng.random(n)))
    z = np.where(part == 0, rng.uniform(-h, h, n), np.where(part == 1, h, -h))
    return np.stack([rad * np.cos(t), rad * np.sin(t), z], axis=1)


def _cone(rng, n, r=0.7, h=1.6):
    side, base = np.pi * r * np.hypot(r, h), np.pi * r * r
    lateral = rng.random(n) < side / (side + base)
    t = rng.uniform(0, 2 * np.pi, n)
    s = np.sqrt(rng.random(n))                  # area grows linearly from the apex
    rad = np.where(lateral, r * s, r * np.sqrt(rng.random(n)))
    z = np.where(lateral, h * (1 - s), 0.0)
    return np.stack([rad * np.cos(t), rad * np.sin(t), z], axis=1)


def _torus(rng, n, R=1.0, r=0.35):
    u, v = rng.uniform(0, 2 * np.pi, (2, 4 * n))
    keep = rng.random(4 * n) < (R + r * np.cos(v)) / (R + r)     # area element, rejection
    u, v = u[keep][:n], v[keep][:n]
    return np.stack([(R + r * np.cos(v)) * np.cos(u), (R + r * np.cos(v)) * np.sin(u),
                     r * np.sin(v)], axis=1)


def _capsule(rng, n, r=0.4, h=0.6):
    side, caps = 4 * np.pi * r * h, 4 * np.pi * r * r
    lateral = rng.random(n) < side / (side + caps)
    p = _sphere(rng, n) * r
    p[:, 2] += np.sign(p[:, 2]) * h
    t = rng.uniform(0, 2 * np.pi, n)
    c = np.stack([r * np.cos(t), r * np.sin(t), rng.uniform(-h, h, n)], axis=1)
    return np.where(lateral[:, None], c, p)


_PYRAMID = ([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [0, 0, 1.4]],
            [[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4], [0, 1, 2], [0, 2, 3]])
_OCTAHEDRON = ([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
               [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5],
                [0, 3, 5]])
SHAPES = {
    "sphere": _sphere,
    "ellipsoid": lambda rng, n: _sphere(rng, n) * [1.0, 0.65, 0.4],
    "cube": lambda rng, n: _box(rng, n, [1.0, 1.0, 1.0]),
    "cuboid": lambda rng, n: _box(rng, n, [1.0, 0.55, 0.25]),
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "capsule": _capsule,
    "pyramid": lambda rng, n: _triangles(rng, n, *_PYRAMID),
    "octahedron": lambda rng, n: _triangles(rng, n, *_OCTAHEDRON),
}


def _pose(rng):
    """A rotation: azimuth uniform, then a tilt of up to 10 degrees about a random axis."""
    a = rng.uniform(0, 2 * np.pi)
    Rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    axis = _sphere(rng, 1)[0]
    t = np.deg2rad(rng.uniform(0, 10))
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return (np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K) @ Rz


def point_clouds(per_class, points, rng):
    """``(X (m, points, 3) float32, y (m,))``: ``per_class`` clouds of every shape."""
    X, y = [], []
    for label, sample in enumerate(SHAPES.values()):
        for _ in range(per_class):
            p = sample(rng, points) * rng.uniform(0.8, 1.25, 3)
            p = p @ _pose(rng).T
            p -= p.mean(axis=0)
            p /= np.linalg.norm(p, axis=1).max()            # into the unit ball
            X.append(p + 0.01 * rng.standard_normal(p.shape))
            y.append(label)
    return np.asarray(X, np.float32), np.asarray(y)


def with_outliers(X, rate, rng):
    """Replace ``int(rate n)`` random points of each cloud by points uniform in the unit ball."""
    X = X.copy()
    m, n, _ = X.shape
    k = int(round(rate * n))
    for i in range(m):
        idx = rng.choice(n, k, replace=False)
        p = _sphere(rng, k) * rng.random((k, 1)) ** (1 / 3)
        X[i, idx] = p
    return X


# --- model -----------------------------------------------------------------------------
class MaxPool(torch.nn.Module):
    def forward(self, f):
        return f.amax(dim=-1)


def pooling_layer(name):
    """The global pooling over the last axis (points) of features (batch, channels, points)."""
    if name == "max":
        return MaxPool()
    # Welsch: descents from the median and from the mean, the lower minimum kept (as the
    # paper); the truncated quadratic is solved globally whatever the start.
    start = "best" if name == "W" else "median"
    return bl.torch.Layer(bl.problems.RobustPooling(PENALTIES[name], alpha=1.0, start=start))


class PointNet(torch.nn.Module):
    """Shared per-point MLP, a global pooling layer, a classifier MLP."""

    def __init__(self, pool, classes=10, widths=(32, 64, 64), hidden=64):
        super().__init__()
        a, b, c = widths
        self.features = torch.nn.Sequential(
            torch.nn.Conv1d(3, a, 1), torch.nn.BatchNorm1d(a), torch.nn.ReLU(),
            torch.nn.Conv1d(a, b, 1), torch.nn.BatchNorm1d(b), torch.nn.ReLU(),
            torch.nn.Conv1d(b, c, 1), torch.nn.BatchNorm1d(c))   # no ReLU: alpha = 1 sd
        self.pool = pool
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(c, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.ReLU(),
            torch.nn.Dropout(0.3), torch.nn.Linear(hidden, classes))

    def forward(self, points):
        """Logits of clouds ``points`` of shape (batch, n, 3)."""
        return self.classifier(self.pool(self.features(points.transpose(1, 2))))


def train(model, X, y, epochs, seed, *, label="", quiet=False, counter=None, batch=24):
    """SGD, momentum 0.9, learning rate 0.01 halved every third of the epochs."""
    return _ddn_training.train(model, X, y, epochs, seed, lr=0.01, gamma=0.5, batch=batch,
                               label=label, quiet=quiet, counter=counter)


# --- the DDN-style layer, for the time per epoch --------------------------------------------
def ddn_pooling(penalty):
    """The DDN-style LBFGS robust pooling of ``benchmarks/bench_pooling.py`` as a module."""
    bench = str(HERE.parent / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from bench_pooling import DDNPool

    class DDNPooling(torch.nn.Module):
        def forward(self, f):
            return DDNPool.apply(f, penalty)

    return DDNPooling()


def time_epochs(X, y, batches, seed, counter):
    """Seconds per training epoch, ours against the DDN-style layer: ``{name: (ours, ddn)}``.

    Both models start from the same weights and see the same ``batches`` mini-batches;
    the time per batch is scaled to an epoch of ``len(X) / 24`` batches.
    """
    per_epoch = int(np.ceil((len(X) - 1) / 24))
    out = {}
    for name in ("PH", "W"):
        times = []
        for pool in (pooling_layer(name), ddn_pooling(PENALTIES[name])):
            torch.manual_seed(seed)
            model = PointNet(pool)
            Xs, ys = X[:24 * batches + 1], y[:24 * batches + 1]
            train(model, Xs[:25], ys[:25], 1, seed, quiet=True, counter=counter)  # warm-up
            start = time.perf_counter()
            train(model, Xs, ys, 1, seed, quiet=True, counter=counter)
            times.append((time.perf_counter() - start) / batches * per_epoch)
        out[name] = tuple(times)
    return out


# --- the experiment ----------------------------------------------------------------------
def run(config, seeds, quiet=False):
    """Train every pooling at every Table II rate for every seed; evaluate.

    Returns ``(table2, table3, counter)``: ``tableN[rate][pooling]`` is a list over seeds
    of ``(accuracy, mAP)``; ``counter[pooling]["kinks"]`` the DegeneracyWarnings counted.
    """
    table2 = {r: {p: [] for p in POOLINGS} for r in config["rates2"]}
    table3 = {r: {p: [] for p in POOLINGS} for r in config["rates3"]}
    counter = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        Xtr, ytr = point_clouds(config["per_class"], config["points"], rng)
        Xte, yte = point_clouds(config["test_per_class"], config["points"], rng)
        tests = {r: with_outliers(Xte, r / 100, rng) for r in sorted(set(config["rates2"])
                                                                     | set(config["rates3"]))}
        for rate in config["rates2"]:
            Xr = with_outliers(Xtr, rate / 100, rng)
            for name in POOLINGS:
                torch.manual_seed(seed)
                model = PointNet(pooling_layer(name))
                kinks = counter.setdefault(name, {})
                train(model, Xr, ytr, config["epochs"], seed, quiet=quiet, counter=kinks,
                      label=f"[seed {seed}, {rate}% outliers, {name}]")
                table2[rate][name].append(scores(model, tests[rate], yte, kinks))
                if rate == 0:
                    for r3 in config["rates3"]:
                        table3[r3][name].append(scores(model, tests[r3], yte, kinks))
    return table2, table3, counter


def markdown_table(results, paper, metric):
    """Rows ``| rate | ours mean ± sd (paper) ... |`` for metric 0 (top-1) or 1 (mAP)."""
    head = "| outliers % | " + " | ".join(POOLINGS) + " |"
    lines = [head, "|---" * (len(POOLINGS) + 1) + "|"]
    for rate, cells in results.items():
        row = [f"| {rate} "]
        for j, name in enumerate(POOLINGS):
            v = np.array([c[metric] for c in cells[name]])
            sd = v.std(ddof=1) if v.size > 1 else 0.0
            ref = paper.get(rate)
            ref_s = f" ({ref[metric][j]:.1f})" if ref else ""
            best = max(np.mean([c[metric] for c in cells[n]]) for n in POOLINGS)
            mean_s = f"{v.mean():.1f} ± {sd:.1f}"
            row.append(f"| **{mean_s}**{ref_s} " if v.mean() == best else f"| {mean_s}{ref_s} ")
        lines.append("".join(row) + "|")
    return "\n".join(lines)


def plot(table2, table3, out):
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed (pip install matplotlib): no figure at {out}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, table, title in ((axes[0], table2, "trained and tested with outliers (Table II)"),
                             (axes[1], table3, "trained without, tested with (Table III)")):
        rates = list(table)
        for name in POOLINGS:
            acc = np.array([[c[0] for c in table[r][name]] for r in rates])
            sd = acc.std(axis=1, ddof=1) if acc.shape[1] > 1 else np.zeros(len(rates))
            ax.errorbar(rates, acc.mean(axis=1), yerr=sd, marker="o", ms=3, capsize=2,
                        label=name if name == "max" else f"{name} ({PENALTIES[name]})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("outlier rate (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[1].legend(fontsize=8, loc="upper right")
    fig.suptitle("Robust pooling on synthetic point clouds (10 shapes)", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"figure: {out}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: one seed, 64 points, 4 epochs, rates 0 and 50")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds, one data set and initialization each (default 0 1 2; "
                             "--quick: 0)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 20)")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "ddn_point_clouds.png",
                        help="the figure (matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or lines")
    return parser.parse_args(argv)


@one_torch_thread
def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        config = dict(per_class=12, test_per_class=8, points=64, epochs=4, rates2=(0, 50),
                      rates3=(0, 10, 50), time_batches=2)
        seeds = args.seeds or [0]
    else:
        config = dict(per_class=40, test_per_class=25, points=128, epochs=20,
                      rates2=TABLE2_RATES, rates3=TABLE3_RATES, time_batches=17)
        seeds = args.seeds or [0, 1, 2]
    if args.epochs:
        config["epochs"] = args.epochs
    start = time.perf_counter()
    from bilevel.solvers.pooling import warmup

    warmup()                                     # compile or load the numba kernels
    print(f"{len(SHAPES)} shapes, {config['per_class']} training and "
          f"{config['test_per_class']} test clouds per shape, {config['points']} points, "
          f"{config['epochs']} epochs, seeds {' '.join(map(str, seeds))}")
    table2, table3, counter = run(config, seeds, quiet=args.quiet)
    for title, table, paper in (
            ("Table II: trained and tested with the same outlier rate", table2, PAPER_II),
            ("Table III: trained without outliers, tested with them", table3, PAPER_III)):
        for metric, what in ((0, "top-1 accuracy %"), (1, "mAP %")):
            print(f"\n{title}; {what}, ours mean ± sd over {len(seeds)} seed(s) "
                  "(paper, ModelNet40); bold: our best")
            print(markdown_table(table, paper, metric))
    rng = np.random.default_rng(seeds[0])
    Xtr, ytr = point_clouds(config["per_class"], config["points"], rng)
    perm = rng.permutation(len(Xtr))
    times = time_epochs(Xtr[perm], ytr[perm], config["time_batches"], seeds[0], {})
    print(f"\nTraining time per epoch ({len(Xtr)} clouds of {config['points']} points, "
          f"batch 24; from {config['time_batches']} batches), ours against the DDN-style "
          "LBFGS layer (benchmarks/bench_pooling.py):")
    for name, (ours, ddn) in times.items():
        print(f"  {name:2s} ({PENALTIES[name]}): ours {ours:.2f} s, ddn_lbfgs {ddn:.2f} s, "
              f"ratio {ddn / ours:.1f}x")
    print("\nDegeneracyWarnings counted (batches with a kink or a tie hit, one-sided "
          "derivatives used): " + ", ".join(f"{name} {counter[name].get('kinks', 0)}"
                                            for name in POOLINGS))
    plot(table2, table3, args.out)
    print(f"total {time.perf_counter() - start:.0f} s")
    return table2, table3, times


if __name__ == "__main__":
    main()
