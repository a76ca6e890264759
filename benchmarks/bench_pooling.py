"""Robust global pooling of ResNet-like feature maps: our layer vs a DDN-style LBFGS layer.

.. math:: y^*_{bc}(x) = \\arg\\min_y \\sum_{i=1}^{49} \\phi(y - x_{bci}; \\alpha)

for a batch of feature maps ``x`` of shape (64, 512, 7, 7) (the last block of a ResNet-18
on 64 images), each 7 x 7 map pooled to one value: 32768 pooling problems of 49 values.
Penalties pseudo-Huber ``alpha^2 (sqrt(1 + (z/alpha)^2) - 1)`` and Welsch
``1 - exp(-z^2 / (2 alpha^2))``, ``alpha = 1``, in float32 and float64.

Columns:

- *ours*: ``bl.torch.Layer(bl.problems.RobustPooling(penalty, 1.0))`` on ``x`` viewed as
  (64, 512, 49): the batched numba solver (safeguarded Newton; Welsch started at the
  median) and the O(n) analytic VJP.
- *ddn_lbfgs*: a baseline written here the way the public Deep Declarative Networks
  reference layer (``ddn.pytorch.robustpool.RobustGlobalPool2dFn``) works: one
  ``torch.optim.LBFGS`` run over all 32768 pooled values on the summed penalty, ``lr=1``,
  ``max_iter=100``, ``tolerance_grad=1e-5``, ``tolerance_change=1e-9``,
  ``history_size=100``, no line search, started at the mean; for Welsch a second run
  started at the median, keeping per map the lower energy (the reference keeps the better
  run for the whole batch; per map is at least as good). Backward: the closed form
  ``dy/dx_i = phi''(y - x_i) / sum_j phi''(y - x_j)`` times the incoming gradient (for
  Welsch clipped to [-1, 1], as the reference does), in torch.

Accuracy: each forward is compared with a tight reference computed here independently of
both: 200 bisection steps on ``F(y) = sum_i phi'(y - x_i)`` in float64 NumPy, inside
``[min x, max x]`` (pseudo-Huber: ``F`` increasing, the unique minimizer) or inside a
bracket of width ``1e-2 alpha`` around the method's own answer (Welsch: the local minimum
that method reached, so that the error measures how well it solved its problem; the maps
where the two methods reach different local minima are counted, with the energy
difference). Our gradient is compared with the closed form evaluated at the reference.

Time per batch: forward alone and forward + backward (``torch.autograd.grad`` with a random
cotangent), medians of ``--repeat`` runs (three times as many for ours, which is cheap)
after a warm-up, and the ratio baseline / ours.
Goals (printed): ratio >= 20 forward + backward; our float64 forward error <= 1e-12
(relative to ``max(1, max|x|)``). The script exits with status 1 when our float64 forward
error exceeds 1e-12 or our gradient disagrees with the closed form by more than 1e-10, or
when the baseline's forward error exceeds 1e-2 (a set-up error).

``--quick`` (the smoke test): one image of 64 maps, one repeat.

Run: ``python benchmarks/bench_pooling.py [--quick] [--repeat K]``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from _harness import format_seconds, make_parser, print_table, time_median

import bilevel as bl
from bilevel.solvers.pooling import warmup as warmup_pooling

PEERS = ()
ALPHA = 1.0
MAPS, SIDE = 512, 7
FORWARD_GOAL = 1e-12     # our float64 forward, max|y - y_ref| / max(1, max|x|); else exit 1
GRAD_ATOL = 1e-10        # ours vs closed form at the reference; else exit 1
BASELINE_SANITY = 1e-2   # baseline forward error above this: a set-up error, exit 1
SPEEDUP_GOAL = 20.0


# --- data ---------------------------------------------------------------------------------
def feature_maps(images, maps=MAPS, seed=0):
    """ResNet-like last-block activations, (images, maps, 7, 7), float64, non-negative.

    Per channel a level ~ N(0.3, 0.5) and a spread ~ U(0.5, 1.5); values are the ReLU of the
    level plus spread times smooth-ish noise, with 5% sparse bright activations (+2 to +8):
    many exact zeros and a few outliers per map, as after the last ReLU of a ResNet.
    """
    rng = np.random.default_rng(seed)
    level = rng.normal(0.3, 0.5, (images, maps, 1, 1))
    spread = rng.uniform(0.5, 1.5, (images, maps, 1, 1))
    noise = rng.standard_normal((images, maps, SIDE + 1, SIDE + 1))
    noise = 0.5 * (noise[..., 1:, 1:] + noise[..., :-1, :-1])      # neighbours correlate
    shape = (images, maps, SIDE, SIDE)
    bright = (rng.random(shape) < 0.05) * rng.uniform(2.0, 8.0, shape)
    return np.maximum(level + spread * noise + bright, 0.0)


# --- penalties in torch (the baseline) and NumPy (the reference) ----------------------------
def phi(z, penalty, a=ALPHA):
    if penalty == "pseudo_huber":
        return a * a * (torch.sqrt(1.0 + (z / a) ** 2) - 1.0)
    return 1.0 - torch.exp(-(z * z) / (2.0 * a * a))


def weights(z, penalty, a=ALPHA):
    """``phi''(z)``, in torch or NumPy."""
    lib = torch if torch.is_tensor(z) else np
    if penalty == "pseudo_huber":
        return (1.0 + (z / a) ** 2) ** -1.5
    r2 = (z / a) ** 2
    return (1.0 - r2) * lib.exp(-0.5 * r2) / (a * a)


def dphi_np(z, penalty, a=ALPHA):
    if penalty == "pseudo_huber":
        return z / np.sqrt(1.0 + (z / a) ** 2)
    return z / (a * a) * np.exp(-(z * z) / (2 * a * a))


# --- the DDN-style baseline ---------------------------------------------------------------
def lbfgs_pool(x, y0, penalty):
    """One LBFGS run over all pooled values, as in the DDN reference layer."""
    y = y0.clone().requires_grad_()
    with torch.enable_grad():
        opt = torch.optim.LBFGS([y], lr=1, max_iter=100, max_eval=None, tolerance_grad=1e-5,
                                tolerance_change=1e-9, history_size=100, line_search_fn=None)

        def closure():
            opt.zero_grad()
            f = phi(y[..., None] - x, penalty).sum()
            f.backward()
            return f

        opt.step(closure)
    return y.detach()


class DDNPool(torch.autograd.Function):
    """Forward by LBFGS (mean start; Welsch: and median start, per map the better)."""

    @staticmethod
    def forward(ctx, x, penalty):
        x = x.detach()
        y = lbfgs_pool(x, x.mean(-1), penalty)
        if penalty == "welsch":
            y_med = lbfgs_pool(x, x.median(-1)[0], penalty)
            f_mean = phi(y[..., None] - x, penalty).sum(-1)
            f_med = phi(y_med[..., None] - x, penalty).sum(-1)
            y = torch.where(f_med < f_mean, y_med, y)
        ctx.save_for_backward(x, y)
        ctx.penalty = penalty
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, y = ctx.saved_tensors
        w = weights(y[..., None] - x, ctx.penalty)
        w_sum = w.sum(-1, keepdim=True)
        dy = torch.where(w_sum.abs() <= 1e-9, torch.zeros_like(w), w / w_sum)
        if ctx.penalty == "welsch":
            dy = torch.clamp(dy, -1.0, 1.0)
        return dy * grad_out[..., None], None


# --- the independent reference ------------------------------------------------------------
def bisect(x, lo, hi, penalty, steps=200):
    """Bisection on F in [lo, hi] (F(lo) <= 0 <= F(hi) assumed), rows of x, float64."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        neg = dphi_np(mid[..., None] - x, penalty).sum(-1) < 0
        lo, hi = np.where(neg, mid, lo), np.where(neg, hi, mid)
    return 0.5 * (lo + hi)


def reference(x, y, penalty):
    """Tight solutions: pseudo-Huber the unique one; Welsch the local minimum near ``y``.

    Returns ``(y_ref, bracketed)``; ``bracketed`` is False where F has no sign change in the
    Welsch bracket ``y +- 5e-3 alpha`` (the method did not reach a local minimum there).
    """
    if penalty == "pseudo_huber":
        return bisect(x, x.min(-1), x.max(-1), penalty), np.ones(y.shape, bool)
    lo, hi = y - 5e-3 * ALPHA, y + 5e-3 * ALPHA
    F = lambda t: dphi_np(t[..., None] - x, penalty).sum(-1)      # noqa: E731
    ok = (F(lo) < 0) & (F(hi) > 0)
    return np.where(ok, bisect(x, lo, hi, penalty), y), ok


def calls(layer, flat, w, penalty):
    """The four timed calls: ours and the baseline, forward and forward + backward."""

    def ours_fwd():
        with torch.no_grad():
            return layer(flat)

    def ours_fb():
        xr = flat.detach().requires_grad_()
        y = layer(xr)
        return y, torch.autograd.grad(y, xr, w)[0]

    def ddn_fwd():
        return DDNPool.apply(flat, penalty)

    def ddn_fb():
        xr = flat.detach().requires_grad_()
        y = DDNPool.apply(xr, penalty)
        return y, torch.autograd.grad(y, xr, w)[0]

    return ours_fwd, ours_fb, ddn_fwd, ddn_fb


def main():
    parser = make_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    images, maps = (1, 64) if args.quick else (64, MAPS)
    repeat = args.repeat or (1 if args.quick else 3)
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", torch.get_num_threads())))
    x64 = feature_maps(images, maps)
    scale = max(1.0, float(np.abs(x64).max()))
    print(f"Robust global pooling: x of shape {x64.shape} ({x64[..., 0, 0].size} maps of "
          f"{SIDE * SIDE}), alpha = {ALPHA}, {np.mean(x64 == 0):.0%} zeros, max {x64.max():.2f}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads; "
          f"bilevel numba threads: {__import__('numba').get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    warmup_pooling()                      # compile (or load) our kernels, untimed
    failures = []
    rows_fb, rows_f = [], []
    accuracy = []
    for penalty in ("pseudo_huber", "welsch"):
        for dtype in (torch.float64, torch.float32):
            label = f"{penalty} {str(dtype).split('.')[-1]}"
            x_t = torch.tensor(x64, dtype=dtype)
            flat = x_t.reshape(images, maps, SIDE * SIDE)
            layer = bl.torch.Layer(bl.problems.RobustPooling(penalty, ALPHA))
            w = torch.randn(images, maps, dtype=dtype, generator=torch.Generator().manual_seed(1))

            ours_fwd, ours_fb, ddn_fwd, ddn_fb = calls(layer, flat, w, penalty)

            y_ours, g_ours = ours_fb()
            y_ddn, _ = ddn_fb()
            xf = flat.detach().double().numpy()
            y_ours64 = y_ours.detach().double().numpy()
            y_ddn64 = y_ddn.detach().double().numpy()
            ref_ours, ok_ours = reference(xf, y_ours64, penalty)
            ref_ddn, ok_ddn = reference(xf, y_ddn64, penalty)
            err_ours = np.abs(y_ours64 - ref_ours).max() / scale
            err_ddn = np.abs(y_ddn64 - ref_ddn).max() / scale
            wr = weights(ref_ours[..., None] - xf, penalty)
            g_ref = wr / wr.sum(-1, keepdims=True) * w.double().numpy()[..., None]
            g_err = np.abs(g_ours.double().numpy() - g_ref).max()
            e_ours = energy_np(xf, y_ours64, penalty)
            e_ddn = energy_np(xf, y_ddn64, penalty)
            differ = np.abs(y_ours64 - y_ddn64) > 1e-2 * ALPHA
            accuracy.append((label, err_ours, err_ddn, g_err, int((~ok_ours).sum()),
                             int((~ok_ddn).sum()), int(differ.sum()),
                             int((differ & (e_ours < e_ddn)).sum()),
                             int((differ & (e_ours > e_ddn)).sum())))
            if dtype == torch.float64 and err_ours > FORWARD_GOAL:
                failures.append(f"{label}: our forward error {err_ours:.1e} > {FORWARD_GOAL}")
            tol_g = GRAD_ATOL if dtype == torch.float64 else 1e-5
            if g_err > tol_g:
                failures.append(f"{label}: our gradient differs from the closed form by "
                                f"{g_err:.1e} > {tol_g}")
            if err_ddn > BASELINE_SANITY:
                failures.append(f"{label}: baseline forward error {err_ddn:.1e} (set-up error?)")
            # Ours is cheap: more samples make its median robust to the machine's load.
            t_ours_fb = time_median(ours_fb, repeat=3 * repeat)
            t_ddn_fb = time_median(ddn_fb, repeat=repeat, warmup=0 if args.quick else 1)
            t_ours_f = time_median(ours_fwd, repeat=3 * repeat)
            t_ddn_f = time_median(ddn_fwd, repeat=repeat, warmup=0)
            rows_fb.append((label, {"ours": t_ours_fb, "ddn_lbfgs": t_ddn_fb}))
            rows_f.append((label, {"ours": t_ours_f, "ddn_lbfgs": t_ddn_f}))
            print(f"  {label}: forward + backward ours {format_seconds(t_ours_fb.median)}, "
                  f"ddn_lbfgs {format_seconds(t_ddn_fb.median)}", flush=True)
    print()
    print_table(f"forward + backward per batch of {images} x {maps} maps "
                "(ratio > 1: ours is faster)", rows_fb, ["ours", "ddn_lbfgs"])
    print()
    print_table("forward alone (no autograd for ours)", rows_f, ["ours", "ddn_lbfgs"])
    print()
    print("forward error max|y - y_ref| / max(1, max|x|); gradient error: max abs vs the closed "
          "form at y_ref")
    print("  welsch: y_ref is the local minimum each method reached; 'unbracketed': maps where "
          "it reached none within 5e-3 alpha")
    print(f"  {'':22s} {'ours':>9s} {'ddn_lbfgs':>9s} {'our grad':>9s} {'unbracketed':>13s} "
          f"{'different minima (ours lower / higher)':>40s}")
    for label, eo, ed, ge, uo, ud, nd, lower, higher in accuracy:
        print(f"  {label:22s} {eo:9.1e} {ed:9.1e} {ge:9.1e} {uo:6d} /{ud:6d} "
              f"{nd:27d} ({lower} / {higher})")
    worst = min(cells["ddn_lbfgs"].median / cells["ours"].median for _, cells in rows_fb)
    exact = max(a[1] for a in accuracy if a[0].endswith("float64"))
    print(f"\ngoal: forward + backward >= {SPEEDUP_GOAL:.0f}x faster: worst ratio "
          f"{worst:.1f}x ({'met' if worst >= SPEEDUP_GOAL else 'NOT met'}); our float64 "
          f"forward error {exact:.1e} <= {FORWARD_GOAL:.0e} "
          f"({'met' if exact <= FORWARD_GOAL else 'NOT met'})")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)


def energy_np(x, y, penalty, a=ALPHA):
    z = y[..., None] - x
    if penalty == "pseudo_huber":
        return (a * a * (np.sqrt(1 + (z / a) ** 2) - 1)).sum(-1)
    return (1 - np.exp(-(z * z) / (2 * a * a))).sum(-1)


if __name__ == "__main__":
    main()
