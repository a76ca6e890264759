"""1-D TV denoising layer: bilevel vs cvxpylayers (forward + backward) and condat-tv (forward).

.. math:: y^*(s, \\lambda) = \\arg\\min_y \\tfrac12\\|y - s\\|^2 + \\lambda\\|D^k y\\|_1
          \\quad(\\text{l1}), \\qquad
          \\tfrac12\\|y - s\\|^2 + \\tfrac{\\lambda}{2}\\|D^k y\\|^2 \\quad(\\text{l2})

with ``D^k`` the k-th order forward difference, shape ``(n - k, n)`` (cvxpy's
``cp.diff(y, k)``: ``y[1:] - y[:-1]`` applied k times). The setting of the paper this
reproduces: a batch of 10 signals of length n = 100, ``lam = 2.6``, a
``cvxpylayers.torch.CvxpyLayer`` built from

    y = cp.Variable(n); x = cp.Parameter(n); lam = cp.Parameter(nonneg=True)
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - x) + lam * cp.norm1(cp.diff(y, k))))

(``(lam / 2) * cp.sum_squares(cp.diff(y, k))`` for l2), called on the batch and
backpropagated with a random cotangent. *cvxpylayers* runs with its defaults (the paper's):
diffcp with SCS (``eps`` 1e-4), one thread per core (``n_jobs=-1``);
*cvxpylayers_clarabel* passes ``solver_args={"solve_method": "Clarabel"}`` (diffcp with the
Clarabel interior-point solver: faster and more accurate on these problems).

Signals (seed 0): *piecewise constant*, 3 to 5 jumps at random positions between levels
drawn uniformly in [10, 100], plus Gaussian noise of sd 5 (the paper's); *cosine*, two
periods of ``cos`` with a random phase plus noise of sd 0.1.

Measurements, in one process on the same batches:

- accuracy: every solution and Jacobian is compared with a reference built here,
  independently of ``bilevel``: the solution of condat-tv (order 1, l1) or of cvxpy with
  Clarabel at tolerance 1e-12 (order 2, l1), *polished* on its jump set ``J``:
  ``y = P (s - lam D_J^T sigma_J)``, ``P`` the orthogonal projector onto
  ``null(D_Z)`` (``Z`` the zero rows of ``D^k y``, ``sigma_J`` the signs of the others),
  and certified by the KKT conditions (``s - y = lam D^T z`` with ``|z| <= 1`` and
  ``z_J = sigma_J``); l2: the dense solve of ``(I + lam D^T D) y = s``. The exact
  Jacobians: ``dy/ds = P``, ``dy/dlam = -P D_J^T sigma_J`` (l1; for order 1 this is the
  average over each constant segment and ``(sigma_out - sigma_in) / |segment|``), and
  ``(I + lam D^T D)^{-1}``, ``-(I + lam D^T D)^{-1} D^T D y`` (l2). Full Jacobians are
  built row by row from n backward passes with unit cotangents (cvxpylayers_clarabel:
  every 5th row; ``--quick``: 5 rows for cvxpylayers).
- time per batch: forward alone, forward + backward (``torch.autograd.grad`` with a random
  cotangent) for ours and cvxpylayers; forward without autograd; condat-tv's forward
  (``tv_denoise_matrix`` on the batch and one ``tv_denoise`` call per row). Our backward is
  reported as ``(forward + backward) - forward``, relative to the forward. Our strategies
  on a configuration are timed in turn (``_harness.time_interleaved``: one sample of many
  calls each per round), so that the machine's slow spells hit them alike; the peers
  apart, since cvxpylayers' worker threads outlive its calls and slow what runs next.
- scaling: one piecewise-constant signal (a jump every 25 samples on average) at n = 10^4,
  cvxpylayers (full run only, one call: ~20 s for one forward + backward with SCS) vs ours,
  and ours alone at n = 10^3, 10^4, 10^5 (time per sample should stay flat).
- the paper's training run: 540 samples, batch 10, 100 epochs = 5400 forward + backward
  calls, estimated from the per-batch time.

The script exits with status 1 when our solution or Jacobian disagrees with the reference
(solution: ``max|y - y_ref| / max|s| > 1e-9``; Jacobian: max abs error > 1e-8), when
condat-tv disagrees with ours by more than 1e-9 (relative), or when cvxpylayers' solution is
off by more than 1e-1 (relative: a set-up error; SCS at its default tolerance is off by up to
4e-2 on the l2 piecewise-constant batch). Speed goals are printed, not enforced.

``--quick`` (the smoke test): one repeat per timing, cvxpylayers with SCS on the l1 problems
only (its Jacobian on 5 rows), no cvxpylayers_clarabel, no cvxpylayers at n = 10^4.

Our layer's batched kernels run numba ``prange`` loops on ``numba.get_num_threads()``
threads (the number of cores unless ``NUMBA_NUM_THREADS`` says otherwise); on a small,
busy machine pass ``NUMBA_NUM_THREADS=1`` (see benchmarks/README.md).

Run: ``python benchmarks/bench_tv1d.py [--quick] [--repeat K] [--lam 2.6]``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import numpy as np
from _harness import format_seconds, make_parser, print_table, time_interleaved, time_median

PEERS = ("cvxpy", "cvxpylayers", "diffcp", "condat_tv")   # bench extra
N, BATCH, LAM = 100, 10, 2.6
CONFIGS = ((1, "l1"), (2, "l1"), (1, "l2"), (2, "l2"))     # (order, norm)
SCALING_NS = (1_000, 10_000, 100_000)
CVXPY_LARGE_N = 10_000
# cvxpylayers configurations: its defaults (the paper's: diffcp with SCS at eps 1e-4) and
# diffcp with Clarabel (interior point: faster and more accurate here). --quick: the first.
CVXPY_PEERS = {"cvxpylayers": None, "cvxpylayers_clarabel": {"solve_method": "Clarabel"}}
JAC_STEP = {"cvxpylayers": 1, "cvxpylayers_clarabel": 5}   # Jacobian rows: every k-th
PAPER = {"samples": 540, "batch": 10, "epochs": 100}
SOL_RTOL = 1e-9          # ours vs reference, max|y - y_ref| / max|s|, else exit 1
JAC_ATOL = 1e-8          # ours vs exact Jacobian, else exit 1
JAC_GOAL = 1e-10         # printed goal
CONDAT_RTOL = 1e-9       # condat-tv vs ours, else exit 1
CVXPY_RTOL = 1e-1        # cvxpylayers vs reference: a set-up error above this, else exit 1
                         # (SCS at its default eps is off by up to 4e-2 on l2 here)
KKT_TOL = 1e-9           # the reference must be certified to this, else exit 1
SPEEDUP_GOAL = 1000.0    # cvxpylayers / ours per batch, forward + backward
CONDAT_GOAL = 3.0        # ours forward / condat-tv forward
OVERHEAD_GOAL = 4.0      # layer forward + backward / its own kernels (issue 16)
ZERO_TOL = 1e-9          # |D^k y|_i <= ZERO_TOL * max|s| counts as 0 (reference jump set)
POLISH_TOL = 1e-6        # jump set of an inexact (Clarabel) solution before polishing


# --- signals ----------------------------------------------------------------------------
def piecewise_constant(rng, n, jumps=None):
    """Levels uniform in [10, 100] between jumps, plus noise of sd 5.

    ``jumps=None``: 3 to 5 jumps, at least 5 samples from either end (the paper's n = 100
    signals); otherwise that many jumps anywhere.
    """
    if jumps is None:
        jumps, positions = int(rng.integers(3, 6)), np.arange(5, n - 5)
    else:
        positions = np.arange(1, n)
    cuts = np.sort(rng.choice(positions, jumps, replace=False))
    levels = rng.uniform(10.0, 100.0, jumps + 1)
    return np.repeat(levels, np.diff(np.r_[0, cuts, n])) + 5.0 * rng.standard_normal(n)


def cosine(rng, n):
    """Two periods of cos with a random phase, plus noise of sd 0.1."""
    t = np.linspace(0.0, 1.0, n)
    return np.cos(2 * np.pi * (2 * t + rng.uniform())) + 0.1 * rng.standard_normal(n)


SIGNALS = {
    "piecewise constant": (piecewise_constant,
                           "levels U[10, 100], 3-5 jumps, noise sd 5 (the paper's)"),
    "cosine": (cosine, "cos, 2 periods, random phase, noise sd 0.1"),
}


# --- reference (independent of bilevel) --------------------------------------------------
def diff_matrix(n, k):
    """Dense ``D^k``, shape (n - k, n), rows ``y[i+1] - y[i]`` (cvxpy's ``cp.diff``)."""
    return np.diff(np.eye(n), k, axis=0)


def polish(s, lam, k, y0, tol):
    """``(y, dy/ds, dy/dlam)`` on the jump set of ``y0``: ``y = P (s - lam D_J^T sigma)``."""
    import scipy.linalg

    D = diff_matrix(s.size, k)
    Dy = D @ y0
    zero = np.abs(Dy) <= tol
    g = D[~zero].T @ np.sign(Dy[~zero])
    N = scipy.linalg.null_space(D[zero]) if zero.any() else np.eye(s.size)
    P = N @ N.T
    return P @ (s - lam * g), P, -(P @ g)


def kkt_residual(s, lam, k, y, tol):
    """``s - y = lam D^T z``: max of the residual, ``max|z| - 1`` and ``|z_J - sigma_J|``."""
    D = diff_matrix(s.size, k)
    r = (s - y) / lam
    z = np.linalg.lstsq(D.T, r, rcond=None)[0]
    Dy = D @ y
    jump = np.abs(Dy) > tol
    sign_err = np.abs(z[jump] - np.sign(Dy[jump])).max() if jump.any() else 0.0
    return max(np.abs(D.T @ z - r).max(), np.abs(z).max() - 1.0, sign_err)


def clarabel_tv(s, lam, k):
    import cvxpy as cp

    y = cp.Variable(s.size)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - s)
                                  + lam * cp.norm1(cp.diff(y, k))))
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12,
               max_iter=500)
    return np.asarray(y.value)


def reference(S, lam, k, norm):
    """Per row: ``y_ref``, ``dy/ds``, ``dy/dlam``, KKT residual (relative), #jumps."""
    import condat_tv

    out = {"y": [], "Js": [], "Jl": [], "kkt": [], "jumps": []}
    for s in S:
        n = s.size
        D = diff_matrix(n, k)
        if norm == "l2":
            M = np.eye(n) + lam * D.T @ D
            Minv = np.linalg.inv(M)
            y = np.linalg.solve(M, s)
            Js, Jl, kkt = Minv, -Minv @ (D.T @ (D @ y)), np.abs(M @ y - s).max()
            jumps = n - k
        else:
            scale = max(1.0, np.abs(s).max())
            if k == 1:
                y0, tol0 = condat_tv.tv_denoise(np.ascontiguousarray(s), lam), ZERO_TOL
            else:
                y0, tol0 = clarabel_tv(s, lam, k), POLISH_TOL
            y, Js, Jl = polish(s, lam, k, y0, tol0 * scale)
            kkt = kkt_residual(s, lam, k, y, ZERO_TOL * scale)
            jumps = int(np.sum(np.abs(D @ y) > ZERO_TOL * scale))
        out["y"].append(y)
        out["Js"].append(Js)
        out["Jl"].append(Jl)
        out["kkt"].append(kkt / max(1.0, np.abs(s).max()))
        out["jumps"].append(jumps)
    return {key: np.array(v) for key, v in out.items()}


def layer_jacobian(call, S_t, lam_t, rows):
    """``(dY/dS[b, j, :], dY[b, j]/dlam_b)`` for ``j in rows`` by unit-cotangent VJPs."""
    import torch

    Y = call(S_t, lam_t)
    Js = np.full((S_t.shape[0], S_t.shape[1], S_t.shape[1]), np.nan)
    Jl = np.full(S_t.shape, np.nan)
    for j in rows:
        gs, gl = torch.autograd.grad(Y[:, j].sum(), (S_t, lam_t), retain_graph=True)
        Js[:, j, :] = gs.numpy()
        Jl[:, j] = gl.numpy()
    return Js, Jl


def jacobian_error(J, ref, rows):
    """Max abs. errors ``(d/ds, d/dlam)`` and the median over signals of each signal's max."""
    Js, Jl = J
    es = np.abs(Js[:, rows, :] - ref["Js"][:, rows, :]).max(axis=(1, 2))
    el = np.abs(Jl[:, rows] - ref["Jl"][:, rows]).max(axis=1)
    return float(es.max()), float(el.max()), float(np.median(es)), float(np.median(el))


# --- layers -------------------------------------------------------------------------------
def make_cvxpylayer(n, k, norm, solver_args=None):
    """``call(S, lam) -> Y`` by cvxpylayers; the build (canonicalization) time."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    start = time.perf_counter()
    y, x = cp.Variable(n), cp.Parameter(n)
    lam = cp.Parameter(nonneg=True)
    penalty = cp.norm1(cp.diff(y, k)) if norm == "l1" else 0.5 * cp.sum_squares(cp.diff(y, k))
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - x) + lam * penalty))
    assert problem.is_dpp()
    layer = CvxpyLayer(problem, parameters=[x, lam], variables=[y])
    build = time.perf_counter() - start
    solver_args = dict(solver_args or {})

    def call(S, lam_t):
        return layer(S, lam_t, solver_args=solver_args)[0]

    return call, build


def make_ours(k, norm, strategy):
    import bilevel as bl
    import bilevel.torch  # noqa: F401  (bl.torch)

    layer = bl.torch.Layer(bl.problems.TV1D(order=k, norm=norm), strategy=strategy)

    def call(S, lam_t):
        return layer(S, lam_t)

    return call


def our_strategies(k, norm):
    """The main strategy first: ``analytic`` where TV1D has an analytic VJP."""
    import bilevel as bl

    caps = bl.problems.TV1D(order=k, norm=norm).capabilities
    if "analytic_vjp" in caps and "manifold" in caps:
        return ("analytic", "partial_smoothness")
    return ("analytic",) if "analytic_vjp" in caps else ("partial_smoothness",)


def timers(call, S, lam, seed=1):
    """Forward (autograd on), forward + backward, forward under no_grad."""
    import torch

    S_t = torch.tensor(S, requires_grad=True)
    lam_t = torch.tensor(lam, requires_grad=True)
    G = torch.tensor(np.random.default_rng(seed).standard_normal(S.shape))

    def fwd():
        return call(S_t, lam_t)

    def fwd_bwd():
        return torch.autograd.grad(call(S_t, lam_t), (S_t, lam_t), G)

    def fwd_nograd():
        with torch.no_grad():
            return call(S_t, lam_t)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "fwd, no grad": fwd_nograd}


def number_for(fn, quick, budget=0.05, cap=200):
    """Calls per timed sample so that a sample lasts about ``budget`` seconds."""
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, min(cap, int((0.01 if quick else budget) / max(once, 1e-9))))


def rel_diff(a, b, S):
    return float(np.abs(a - b).max() / max(1.0, np.abs(S).max()))


# --- one signal kind -----------------------------------------------------------------------
def run_signals(kind, S, lam, args, quick, failures):
    import torch

    repeat = args.repeat or (1 if quick else 7)
    cvx_repeat = args.repeat or (1 if quick else 5)
    lam_vec = np.full(S.shape[0], lam)
    _, note = SIGNALS[kind]
    print(f"\n=== {kind}: {S.shape[0]} signals, n = {S.shape[1]} ({note}), lam = {lam:g}")
    rows, results = [], {}
    for k, norm in CONFIGS:
        label = f"order {k} {norm}"
        ref = reference(S, lam, k, norm)
        how = ("dense solve of (I + lam D^T D) y = s" if norm == "l2" else
               "condat-tv" if k == 1 else "cvxpy + Clarabel at 1e-12")
        kkt = float(ref["kkt"].max())
        print(f"\n{label}: reference {how}" + (", polished on its jump set" if norm == "l1"
                                                 else "")
              + f"; KKT residual <= {kkt:.0e} (relative)"
              + (f"; jumps per signal {int(ref['jumps'].min())}..{int(ref['jumps'].max())}"
                 f" of {S.shape[1] - k}" if norm == "l1" else ""))
        if not kkt <= KKT_TOL:
            failures.append(f"{kind}, {label}: the reference is not certified (KKT {kkt:.1e})")
        impls = {f"ours [{st}]": make_ours(k, norm, st) for st in our_strategies(k, norm)}
        main = next(iter(impls))
        peers = [p for p in CVXPY_PEERS
                 if not quick or (p == "cvxpylayers" and norm == "l1")]
        builds = {}
        for p in peers:
            impls[p], builds[p] = make_cvxpylayer(S.shape[1], k, norm, CVXPY_PEERS[p])
        all_rows = list(range(S.shape[1]))
        for name, call in impls.items():
            S_t = torch.tensor(S, requires_grad=True)
            lam_t = torch.tensor(lam_vec, requires_grad=True)
            with torch.no_grad():
                Y = call(S_t, lam_t).numpy()
            err_y = rel_diff(Y, ref["y"], S)
            step = 1 if name.startswith("ours") else 20 if quick else JAC_STEP[name]
            jac_rows = all_rows[::step]
            start = time.perf_counter()
            err_s, err_l, med_s, med_l = jacobian_error(
                layer_jacobian(call, S_t, lam_t, jac_rows), ref, jac_rows)
            jac_time = time.perf_counter() - start
            extra = f"  [layer build {format_seconds(builds[name])}]" if name in builds else ""
            print(f"  {name:26s} max|y - y_ref|/max|s| = {err_y:.1e}   Jacobian max abs. "
                  f"error d/ds {err_s:.1e}, d/dlam {err_l:.1e} (median over signals "
                  f"{med_s:.0e}, {med_l:.0e}; {len(jac_rows)} rows x {S.shape[0]} signals, "
                  f"{format_seconds(jac_time)}){extra}")
            results[(label, name)] = {"y": err_y, "Js": err_s, "Jl": err_l, "Y": Y}
            if name.startswith("ours"):
                if not err_y <= SOL_RTOL:
                    failures.append(f"{kind}, {label}: {name} solution off by {err_y:.1e}")
                if not max(err_s, err_l) <= JAC_ATOL:
                    failures.append(f"{kind}, {label}: {name} Jacobian off by "
                                    f"{max(err_s, err_l):.1e}")
            elif not err_y <= CVXPY_RTOL:
                failures.append(f"{kind}, {label}: {name}'s solution off by {err_y:.1e}")
        if (k, norm) == (1, "l1"):
            import condat_tv

            Yc = condat_tv.tv_denoise_matrix(np.ascontiguousarray(S), lam)
            d = rel_diff(Yc, results[(label, main)]["Y"], S)
            print(f"  condat-tv vs {main}: max|y - y_condat|/max|s| = {d:.1e}")
            results[(label, "condat")] = d
            if not d <= CONDAT_RTOL:
                failures.append(f"{kind}, {label}: condat-tv differs from ours by {d:.1e}")

        # ---- timings ----------------------------------------------------------------
        # Our strategies timed in turn (one sample of many calls each per round), so that
        # the machine's slow spells hit them alike; the peers apart: cvxpylayers' worker
        # threads outlive its calls and would slow whatever runs next.
        t = {}
        whats = ("fwd+bwd", "fwd", "fwd, no grad")
        timers_of = {name: timers(call, S, lam_vec) for name, call in impls.items()}
        for what in whats:
            ours = {name: fns[what] for name, fns in timers_of.items()
                    if name.startswith("ours") and (what == "fwd+bwd" or name == main)}
            timed = time_interleaved(ours, repeat=repeat, number={
                name: number_for(fn, quick) for name, fn in ours.items()})
            t.update({(name, what): timing for name, timing in timed.items()})
            for name in peers:
                if not (quick and what == "fwd, no grad"):
                    t[(name, what)] = time_median(timers_of[name][what], repeat=cvx_repeat,
                                                  warmup=0 if quick else 1)
        for what in whats:
            rows.append((f"{label}, {what}",
                         {"ours": t[(main, what)], **{p: t.get((p, what)) for p in peers}}))
        for st in [name for name in impls if name.startswith("ours") and name != main]:
            rows.append((f"{label}, fwd+bwd, {st}",
                         {"ours": t[(st, "fwd+bwd")],
                          **{p: t.get((p, "fwd+bwd")) for p in peers}}))
        results[(label, "times")] = t
        results[(label, "main")] = main
        results[(label, "peers")] = peers
        results[(label, "kernels")] = kernel_time(k, norm, our_strategies(k, norm)[0], S,
                                                  lam_vec, repeat, quick)

        if (k, norm) == (1, "l1"):
            results["condat rows"] = condat_rows(S, lam, lam_vec, impls[main], main, repeat,
                                                 quick)
    print()
    used = [p for p in CVXPY_PEERS if any(p in results[(f"order {k} {norm}", "peers")]
                                          for k, norm in CONFIGS)]
    print_table(f"{kind}: time per batch of {S.shape[0]} (ratio > 1: ours is faster)", rows,
                ["ours", *used])
    print()
    print_table(f"{kind}: order 1 l1 forward vs condat-tv, per batch of {S.shape[0]} "
                "(ratio > 1: ours is faster)", results["condat rows"],
                ["ours", "condat-tv", "condat-tv loop"])
    print(f"\n{kind}: our backward = (fwd+bwd) - fwd, relative to our forward")
    for k, norm in CONFIGS:
        label = f"order {k} {norm}"
        t, main = results[(label, "times")], results[(label, "main")]
        f, fb = t[(main, "fwd")].median, t[(main, "fwd+bwd")].median
        print(f"  {label}  {main:26s} forward {format_seconds(f):>8s}   backward "
              f"{format_seconds(max(fb - f, 0.0)):>8s}   backward/forward {(fb - f) / f:5.2f}")
    return results


def kernel_time(k, norm, strategy, S, lam_vec, repeat, quick):
    """The layer's own numba work: the batched solve plus the strategy's batched VJP kernel."""
    import bilevel as bl

    prob = bl.problems.TV1D(order=k, norm=norm)
    vjp = bl.torch.Layer(prob, strategy).strategy.batch_kernel(prob)
    S, V = np.ascontiguousarray(S), np.random.default_rng(1).standard_normal(S.shape)

    def kernels():
        return vjp(prob.capabilities.batch.solve(S, lam_vec), V)

    return time_median(kernels, repeat=repeat, number=number_for(kernels, quick))


def condat_rows(S, lam, lam_vec, call, main, repeat, quick):
    """Order-1 l1 forward: our layer and NumPy entry vs condat-tv (batch API and a loop)."""
    import condat_tv

    import bilevel as bl

    SC = np.ascontiguousarray(S)
    prob = bl.problems.TV1D(order=1, norm="l1")
    fns = timers(call, S, lam_vec)

    def condat_matrix():
        return condat_tv.tv_denoise_matrix(SC, lam)

    def condat_loop():
        return [condat_tv.tv_denoise(row, lam) for row in SC]

    def ours_numpy():
        return prob.capabilities.batch.solve(SC, lam_vec).x

    def timed(fn):
        return time_median(fn, repeat=repeat, number=number_for(fn, quick))

    condat = {"condat-tv": timed(condat_matrix), "condat-tv loop": timed(condat_loop)}
    return [(f"layer forward, autograd on {main}", {"ours": timed(fns["fwd"]), **condat}),
            ("layer forward, no grad", {"ours": timed(fns["fwd, no grad"]), **condat}),
            ("TV1D batch.solve (NumPy, no torch)", {"ours": timed(ours_numpy), **condat})]


# --- scaling ------------------------------------------------------------------------------
def run_scaling(lam, args, quick, failures):
    import condat_tv
    import torch

    repeat = args.repeat or (1 if quick else 5)
    print(f"\n=== scaling: one piecewise-constant signal (a jump every 25 samples on "
          f"average, noise sd 5), batch 1, lam = {lam:g}")
    rng = np.random.default_rng(1)
    signals = {n: piecewise_constant(rng, n, jumps=n // 25)[None, :] for n in SCALING_NS}
    lam1 = np.array([lam])
    out = {}
    # cvxpylayers at n = 10^4 (full run only)
    S = signals[CVXPY_LARGE_N]
    if quick:
        print(f"  cvxpylayers at n = {CVXPY_LARGE_N}: skipped (--quick)")
    else:
        Y_ref = condat_tv.tv_denoise_matrix(np.ascontiguousarray(S), lam)
        for peer, solver_args in CVXPY_PEERS.items():
            cvx, build = make_cvxpylayer(CVXPY_LARGE_N, 1, "l1", solver_args)
            S_t = torch.tensor(S, requires_grad=True)
            lam_t = torch.tensor(lam1, requires_grad=True)
            G = torch.tensor(np.random.default_rng(1).standard_normal(S.shape))
            start = time.perf_counter()          # one call: ~20 s with SCS
            Y = cvx(S_t, lam_t)
            t_fwd = time.perf_counter() - start
            torch.autograd.grad(Y, (S_t, lam_t), G)
            t_cvx = time.perf_counter() - start
            err = rel_diff(Y.detach().numpy(), Y_ref, S)
            print(f"  {peer}, order 1 l1, n = {CVXPY_LARGE_N}: layer build "
                  f"{format_seconds(build)}, one forward + backward {format_seconds(t_cvx)} "
                  f"(forward {format_seconds(t_fwd)}), max|y - y_condat|/max|s| = {err:.1e}")
            out[peer] = t_cvx
            if not err <= CVXPY_RTOL:
                failures.append(f"scaling: {peer}'s solution at n = {CVXPY_LARGE_N} off by "
                                f"{err:.1e}")
    rows = []
    for k in (1, 2):
        call = make_ours(k, "l1", our_strategies(k, "l1")[0])
        for n in SCALING_NS:
            S = signals[n]
            fns = timers(call, S, lam1)
            cells = {}
            for what in ("fwd", "fwd+bwd"):
                cells[what] = time_median(fns[what], repeat=repeat,
                                          number=number_for(fns[what], quick))
            if k == 1:
                SC = np.ascontiguousarray(S)
                cells["condat-tv"] = time_median(
                    lambda SC=SC: condat_tv.tv_denoise_matrix(SC, lam), repeat=repeat,
                    number=number_for(lambda SC=SC: condat_tv.tv_denoise_matrix(SC, lam),
                                      quick))
                with torch.no_grad():
                    Y = call(torch.tensor(S), torch.tensor(lam1)).numpy()
                d = rel_diff(Y, condat_tv.tv_denoise_matrix(SC, lam), S)
                cells["diff"] = d
                if not d <= CONDAT_RTOL:
                    failures.append(f"scaling: n = {n}: condat-tv differs from ours by {d:.1e}")
            if k == 1 and n == CVXPY_LARGE_N:
                cells.update({p: out[p] for p in CVXPY_PEERS if p in out})
            rows.append((k, n, cells))
    used = [p for p in CVXPY_PEERS if p in out]
    print_table(f"\n  ours{' and cvxpylayers' if used else ''}, forward + backward per signal "
                "(ratio > 1: ours is faster)",
                [(f"order 1 l1, n = {n}, fwd+bwd",
                  {"ours": c["fwd+bwd"], **{p: c.get(p) for p in used}})
                 for k, n, c in rows if k == 1], ["ours", *used])
    print("\n  ours alone: time per signal and per sample (linear scaling: per sample flat)")
    for k, n, c in rows:
        f, fb = c["fwd"].median, c["fwd+bwd"].median
        extra = ""
        if "condat-tv" in c:
            extra = (f"   condat-tv fwd {format_seconds(c['condat-tv'].median):>8s} "
                     f"({c['condat-tv'].median / n * 1e9:5.1f} ns/sample), "
                     f"max|y - y_condat|/max|s| = {c['diff']:.1e}")
        print(f"  order {k} l1  n = {n:>6d}   fwd {format_seconds(f):>8s} "
              f"({f / n * 1e9:6.1f} ns/sample)   fwd+bwd {format_seconds(fb):>8s} "
              f"({fb / n * 1e9:6.1f} ns/sample){extra}")
    for k in (1, 2):
        t = {n: c["fwd+bwd"].median for kk, n, c in rows if kk == k}
        lo, hi = SCALING_NS[0], SCALING_NS[-1]
        print(f"  order {k} l1: fwd+bwd time ratio n = {hi} / n = {lo}: "
              f"{t[hi] / t[lo]:.0f} (linear: {hi // lo})")
    out["rows"] = rows
    return out


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--lam", type=float, default=LAM, help=f"weight (default {LAM})")
    args = parser.parse_args(argv)
    quick, lam = args.quick, args.lam

    import numba
    import torch

    import bilevel.solvers

    print("1-D TV denoising layer: bilevel vs cvxpylayers (forward + backward) and condat-tv "
          "(forward)")
    print(f"Python {sys.version.split()[0]}; {_versions()}")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (others' load skews "
          f"timings); threads: OMP {os.environ.get('OMP_NUM_THREADS', '-')}, OPENBLAS "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', '-')}, torch {torch.get_num_threads()}, "
          f"numba {numba.get_num_threads()}")
    print("cvxpylayers: CvxpyLayer defaults (diffcp, SCS at its default eps 1e-4, n_jobs = "
          f"{os.cpu_count()} threads); cvxpylayers_clarabel: the same with "
          "solver_args={'solve_method': 'Clarabel'}; float64 everywhere")
    if quick:
        print("--quick: one repeat per timing; cvxpylayers (SCS) on l1 only, its Jacobian on 5 "
              f"rows; no cvxpylayers_clarabel, no cvxpylayers at n = {CVXPY_LARGE_N}")
    bilevel.solvers.warmup()
    failures = []
    rng = np.random.default_rng(0)
    signal_results = {}
    with warnings.catch_warnings(record=True) as caught:   # counted in the summary
        warnings.simplefilter("always")
        for kind, (gen, _) in SIGNALS.items():
            S = np.stack([gen(rng, N) for _ in range(BATCH)])
            signal_results[kind] = run_signals(kind, S, lam, args, quick, failures)
        scaling = run_scaling(lam, args, quick, failures)

    # ---- the paper's training run ------------------------------------------------------
    calls = PAPER["samples"] // PAPER["batch"] * PAPER["epochs"]
    print(f"\n=== the paper's training: {PAPER['samples']} samples, batch {PAPER['batch']}, "
          f"{PAPER['epochs']} epochs = {calls} forward + backward calls (piecewise constant, "
          "layer time only)")
    res = signal_results["piecewise constant"]
    for k, norm in CONFIGS[:2]:
        label = f"order {k} {norm}"
        t = res[(label, "times")]
        print(f"  {label}: " + ", ".join(
            f"{name} {_duration(calls * t[(name, 'fwd+bwd')].median)}"
            for name in (*res[(label, "peers")], res[(label, "main")])))

    # ---- summary -----------------------------------------------------------------------
    def goal(ok):
        return "met" if ok else "NOT met"

    print("\n=== summary (medians; ratio peer/ours > 1: ours is faster)")
    speedups, jac_errs, condat_ratios, bwd_ratios = [], [], [], []
    for kind, res in signal_results.items():
        for k, norm in CONFIGS:
            label = f"order {k} {norm}"
            t, main_name = res[(label, "times")], res[(label, "main")]
            ours_fb, ours_f = t[(main_name, "fwd+bwd")].median, t[(main_name, "fwd")].median
            errs = [max(v["Js"], v["Jl"]) for key, v in res.items()
                    if key[0] == label and key[1].startswith("ours")]
            jac_errs += errs
            bwd_ratios.append((ours_fb - ours_f) / ours_f)
            line = (f"  {kind:18s} {label}  ours: Jacobian error {max(errs):.0e}, y error "
                    f"{res[(label, main_name)]['y']:.0e}, backward/forward "
                    f"{(ours_fb - ours_f) / ours_f:.2f}")
            for p in res[(label, "peers")]:
                r = t[(p, "fwd+bwd")].median / ours_fb
                if p == "cvxpylayers":
                    speedups.append(r)
                acc = res[(label, p)]
                line += (f";  {p}/ours fwd+bwd {r:5.0f}x, Jacobian error "
                         f"{max(acc['Js'], acc['Jl']):.0e}, y error {acc['y']:.0e}")
            print(line)
        rows = dict(res["condat rows"])
        c = rows["layer forward, no grad"]["condat-tv"].median
        ratios = {label.split(" (")[0].split(", autograd")[0]: cells["ours"].median / c
                  for label, cells in res["condat rows"]}
        condat_ratios.append(ratios["layer forward, no grad"])
        print(f"  {kind:18s} order 1 l1  forward, ours / condat-tv (batch API): "
              + ", ".join(f"{name} {r:.2f}" for name, r in ratios.items())
              + f";  max|y - y_condat|/max|s| = {res[('order 1 l1', 'condat')]:.0e}")
    print(f"\n  forward + backward: cvxpylayers/ours {min(speedups):.0f}x .. {max(speedups):.0f}x"
          f" (goal >= {SPEEDUP_GOAL:g}x: {goal(min(speedups) >= SPEEDUP_GOAL)})")
    print(f"  Jacobian: our max abs. error {max(jac_errs):.1e} (goal <= {JAC_GOAL:g}: "
          f"{goal(max(jac_errs) <= JAC_GOAL)})")
    print(f"  forward: our layer (no grad) / condat-tv {min(condat_ratios):.2f} .. "
          f"{max(condat_ratios):.2f} (goal <= {CONDAT_GOAL:g}: "
          f"{goal(max(condat_ratios) <= CONDAT_GOAL)})")
    overhead = [res[(f"order {k} {norm}", "times")][(res[(f"order {k} {norm}", "main")],
                                                     "fwd+bwd")].median
                / res[(f"order {k} {norm}", "kernels")].median
                for res in signal_results.values() for k, norm in CONFIGS]
    print(f"  layer forward + backward / its kernels (batched solve + VJP, NumPy): "
          f"{min(overhead):.1f} .. {max(overhead):.1f} (goal <= {OVERHEAD_GOAL:g}: "
          f"{goal(max(overhead) <= OVERHEAD_GOAL)})")
    print(f"  backward / forward (ours, n = {N}): {min(bwd_ratios):.2f} .. {max(bwd_ratios):.2f}"
          f" (goal <= 1: {goal(max(bwd_ratios) <= 1)})")
    big = [(n, c["fwd+bwd"].median / c["fwd"].median - 1) for k, n, c in scaling["rows"]
           if k == 1]
    print("  backward / forward (ours, order 1, one signal): "
          + ", ".join(f"n = {n}: {r:.2f}" for n, r in big))
    ours_big = next(c["fwd+bwd"].median for k, n, c in scaling["rows"]
                    if k == 1 and n == CVXPY_LARGE_N)
    for p in CVXPY_PEERS:
        if p in scaling:
            print(f"  n = {CVXPY_LARGE_N}, one signal, forward + backward: {p} "
                  f"{format_seconds(scaling[p])}, ours {format_seconds(ours_big)}: "
                  f"{scaling[p] / ours_big:.0f}x")
    if caught:
        counts = {}
        for w in caught:
            where = os.path.join(*w.filename.split(os.sep)[-2:])
            key = (f"{w.category.__name__} ({where}): "
                   f"{str(w.message).splitlines()[0][:90]}")
            counts[key] = counts.get(key, 0) + 1
        print("\n  warnings raised during the run (count, first line):")
        for key, count in counts.items():
            print(f"    {count:4d} x {key}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def _duration(seconds):
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return format_seconds(seconds)


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("bilevel", "torch", "numba", "numpy", "scipy", "cvxpy", "cvxpylayers",
                "diffcp", "scs", "clarabel", "condat-tv"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} ?")
    return ", ".join(out)


if __name__ == "__main__":
    sys.exit(main())

