"""Lasso: solve, warm-started path and hypergradient; bilevel vs celer, scikit-learn, JAXopt.

.. math:: w^*(\\lambda) = \\arg\\min_w \\frac{1}{2n}\\|X w - y\\|^2 + \\lambda \\|w\\|_1,
          \\qquad L(\\lambda) = \\frac{1}{2m}\\|X_{val} w^*(\\lambda) - y_{val}\\|^2

(scikit-learn's ``Lasso(alpha=lam, fit_intercept=False)`` scaling) on two instances, each at
``lam = lam_max/10`` and ``lam_max/100`` with ``lam_max = ||X^T y||_inf / n``:

- diabetes-poly3: scikit-learn's diabetes data (442 x 10, ``load_diabetes(scaled=False)``)
  expanded by ``PolynomialFeatures(3, include_bias=False)`` to 285 features, split 50/50
  (seed 0; 221 train and 221 validation rows), columns standardized with the training mean
  and std, y centered with the training mean. The binary 'sex' column makes some
  polynomial columns exact linear combinations of others (``sex^2`` is affine in ``sex``),
  so on a large support ``w*`` need not be unique; the predictions ``X w*`` always are.
- regression: ``make_regression(200, 2000, n_informative=20, random_state=0, coef=True)``
  (noise 0, no bias) for training; validation rows drawn with the same coefficients:
  ``X_val ~ N(0, 1)`` of shape (200, 2000) from ``np.random.default_rng(0)``,
  ``y_val = X_val @ coef`` (the distribution make_regression draws from).

Measurements, all in one process on the same arrays, medians of repeated calls:

- solve, cold start: ours ``bl.problems.Lasso(X, y).solve(lam)`` (numba coordinate descent
  with working sets, duality gap <= 1e-12 ||y||^2/(2n), then an exact solve on the
  support) vs ``celer.Lasso`` and ``sklearn.linear_model.Lasso`` at the same duality-gap
  criterion: both stop at gap <= tol ||y||^2/n, so ``--peer-tol 5e-13`` (default) is
  exactly our criterion. The peers get X in Fortran order (their preferred layout, so that
  fit() does not copy it).
- path: 30 values of lam, geometric from ``lam_max/1.01`` to ``lam_max/100``, each solve
  warm-started at the previous solution: ours (a loop of ``solve(lam, init=x_prev)``) vs
  ``celer.celer_path`` vs ``sklearn.linear_model.lasso_path`` (both warm-start internally).
- hypergradient ``dL/dlam``: ours ``bl.hypergradient(prob, loss, lam,
  strategy=PartialSmoothness())`` (solve, then one k x k factorization on the support;
  ``pinv=True`` where the restricted Hessian is singular) vs JAXopt's implicit
  differentiation of ``jaxopt.ProximalGradient(prox=prox_lasso)`` under
  ``jax.jit(jax.value_and_grad(outer))`` in float64 (timed after the compilation), in two
  configurations: *jaxopt* (its defaults: FISTA with backtracking line search, implicit
  system by CG on the normal equations at tol 1e-5; tol 1e-10, maxiter 10000) and
  *jaxopt_tight* (step 1/L, tol 1e-12, maxiter 50000, normal CG at tol 1e-12). Each is
  compared with the closed form ``dL/dlam = -s^T H^+ v_S``, ``H = X_S^T X_S / n``,
  ``v = X_val^T (X_val w - y_val) / m``, computed here in NumPy from the support ``S``
  and signs ``s`` of the solution (also at scikit-learn's solution, as a cross-check).
- overhead: our hypergradient (solve, loss gradient and VJP) against the solve alone, and
  the strategy's ``vjp`` alone on the solved solution, the three timed in turn
  (``time_interleaved``) so that the machine's slow spells hit them alike.

The script exits with status 1 when a peer's solution disagrees with ours (predictions
``X w``, relative, > 1e-5) or our hypergradient differs from the closed form by more than
1e-6 (relative).

Run: ``python benchmarks/bench_lasso.py [--quick] [--repeat K] [--peer-tol 5e-13]``.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
from _harness import format_seconds, make_parser, print_table, time_interleaved, time_median

PEERS = ("celer", "jax", "jaxopt")   # what this benchmark imports beyond bilevel (bench extra)
SOLVE_RTOL = 1e-5        # max |X (w_ours - w_peer)| / max |X w_peer|, else exit 1
HYPERGRAD_RTOL = 1e-6    # |ours - closed form| / |closed form|, else exit 1
HYPERGRAD_GOAL = 1e-8    # the accuracy goal printed in the summary
SPEEDUP_GOAL = 100.0     # jaxopt / ours per hypergradient
OVERHEAD_GOAL = 1.2      # hypergradient / solve, timed in turn
N_PATH = 30
DIVISORS = (10, 100)     # lam = lam_max / divisor
JAXOPT_CONFIGS = {
    # name: (ProximalGradient tol, maxiter, fixed step 1/L?, normal-CG tol or None=default)
    "jaxopt": (1e-10, 10_000, False, None),
    "jaxopt_tight": (1e-12, 50_000, True, 1e-12),
}
JAXOPT_QUICK_MAXITER = 20   # --quick: solver and CG iterations; the results are not checked


# --- instances --------------------------------------------------------------------------
def diabetes_poly3(seed=0):
    """Diabetes, degree-3 polynomial features, split 50/50, standardized, y centered."""
    from sklearn.preprocessing import PolynomialFeatures

    from bilevel.datasets import load, split_standardize

    X, y = load("diabetes")
    poly = PolynomialFeatures(3, include_bias=False).fit_transform(X)
    Xtr, ytr, Xval, yval = split_standardize(poly, y, train_fraction=0.5, seed=seed)
    mean = ytr.mean()
    return {"name": "diabetes-poly3", "Xtr": Xtr, "ytr": ytr - mean, "Xval": Xval,
            "yval": yval - mean}


def regression(seed=0):
    """make_regression(200, 2000, n_informative=20); validation rows with the same coef."""
    from sklearn.datasets import make_regression

    Xtr, ytr, coef = make_regression(200, 2000, n_informative=20, random_state=0, coef=True)
    Xval = np.random.default_rng(seed).standard_normal((200, 2000))
    return {"name": "regression", "Xtr": Xtr, "ytr": ytr, "Xval": Xval, "yval": Xval @ coef}


INSTANCES = (diabetes_poly3, regression)


def lam_grid(lam_max, n=N_PATH):
    """``n`` values, geometric from ``lam_max/1.01`` down to ``lam_max/100``."""
    return np.geomspace(lam_max / 1.01, lam_max / 100, n)


def objective(data, w, lam):
    r = data["Xtr"] @ w - data["ytr"]
    return 0.5 * float(r @ r) / r.size + lam * float(np.abs(w).sum())


def compare_solutions(data, w_ours, w_peer, lam):
    """Relative differences: coefficients, predictions, objective."""
    X = data["Xtr"]
    scale_w = max(np.abs(w_peer).max(), 1e-300)
    pred_peer = X @ w_peer
    return {"w": float(np.abs(w_ours - w_peer).max() / scale_w),
            "pred": float(np.abs(X @ w_ours - pred_peer).max()
                          / max(np.abs(pred_peer).max(), 1e-300)),
            "obj": (objective(data, w_ours, lam) - objective(data, w_peer, lam))
            / objective(data, w_peer, lam)}


def closed_form(data, w):
    """``(L, dL/dlam)`` by ``-s^T H^+ v_S`` at the support and signs of ``w``, in NumPy."""
    Xtr, Xval, yval = data["Xtr"], data["Xval"], data["yval"]
    n, m = Xtr.shape[0], Xval.shape[0]
    support = np.flatnonzero(w)
    signs = np.sign(w[support])
    XS = Xtr[:, support]
    H = XS.T @ XS / n
    r = Xval @ w - yval
    v = Xval.T @ r / m
    u = np.linalg.lstsq(H, v[support], rcond=None)[0]    # minimum norm: H^+ v_S
    return 0.5 * float(r @ r) / m, -float(signs @ u)


def support_rank(data, w):
    """``(|S|, rank X_S)``: rank < |S| means w* is not unique on this support."""
    support = np.flatnonzero(w)
    if not support.size:
        return 0, 0
    return support.size, int(np.linalg.matrix_rank(data["Xtr"][:, support]))


# --- ours -------------------------------------------------------------------------------
def setup_ours(data):
    import bilevel as bl

    prob = bl.problems.Lasso(data["Xtr"], data["ytr"])
    loss = bl.losses.SquaredError(data["Xval"], data["yval"])
    return bl, prob, loss


def pick_strategy(bl, prob, loss, lam):
    """PartialSmoothness(), or PartialSmoothness(pinv=True) when the Hessian is singular."""
    try:
        strategy = bl.strategies.PartialSmoothness()
        bl.hypergradient(prob, loss, lam, strategy=strategy)
        return strategy, "PartialSmoothness()"
    except bl.SingularSystemError:
        return bl.strategies.PartialSmoothness(pinv=True), \
            "PartialSmoothness(pinv=True): singular restricted Hessian"


def path_ours(prob, lams):
    coefs, x = [], None
    for lam in lams:
        x = prob.solve(lam, init=x).x
        coefs.append(x)
    return np.array(coefs)


# --- peers ------------------------------------------------------------------------------
def fit_celer(XF, y, lam, tol):
    import celer

    est = celer.Lasso(alpha=lam, fit_intercept=False, tol=tol, max_iter=1000)
    est.fit(XF, y)
    return est.coef_


def fit_sklearn(XF, y, lam, tol):
    from sklearn.linear_model import Lasso

    est = Lasso(alpha=lam, fit_intercept=False, tol=tol, max_iter=1_000_000)
    est.fit(XF, y)
    return est.coef_


def path_celer(XF, y, lams, tol):
    from celer import celer_path

    _, coefs, gaps = celer_path(XF, y, "lasso", alphas=lams, tol=tol, max_iter=1000,
                                prune=1)
    return coefs.T, gaps


def path_sklearn(XF, y, lams, tol):
    from sklearn.linear_model import lasso_path

    _, coefs, gaps = lasso_path(XF, y, alphas=lams, tol=tol, max_iter=1_000_000)
    return coefs.T, gaps


def setup_jaxopt(data, tol, maxiter, fixed_step, cg_tol, cg_maxiter=5000):
    """``hypergradient(lam) -> (value, grad, iterations, error)`` by JAXopt."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jaxopt

    def least_squares(w, X, y):
        r = X @ w - y
        return 0.5 * (r @ r) / X.shape[0]

    # ProximalGradient minimizes fun(w) + g(w) with prox(x, lam, step) the prox of step * g;
    # prox_lasso(x, lam, step) is the prox of step * lam ||.||_1, so g = lam ||.||_1: ours.
    n = data["Xtr"].shape[0]
    stepsize = 1.0 / (np.linalg.norm(data["Xtr"], 2) ** 2 / n) if fixed_step else 0.0
    solve = (None if cg_tol is None else
             functools.partial(jaxopt.linear_solve.solve_normal_cg, tol=cg_tol,
                               maxiter=cg_maxiter))
    solver = jaxopt.ProximalGradient(fun=least_squares, prox=jaxopt.prox.prox_lasso,
                                     implicit_diff=True, tol=tol, maxiter=maxiter,
                                     stepsize=stepsize, implicit_diff_solve=solve)

    def outer(lam, Xtr, ytr, Xval, yval):
        w, state = solver.run(jnp.zeros(Xtr.shape[1]), lam, Xtr, ytr)
        r = Xval @ w - yval
        return 0.5 * (r @ r) / Xval.shape[0], (state.iter_num, state.error)

    args = tuple(jnp.asarray(data[k]) for k in ("Xtr", "ytr", "Xval", "yval"))
    value_and_grad = jax.jit(jax.value_and_grad(outer, has_aux=True))

    def hypergradient(lam):
        (value, (iters, error)), grad = value_and_grad(lam, *args)
        return float(value), float(grad), int(iters), float(error)   # float() blocks

    return hypergradient


# --- one instance -----------------------------------------------------------------------
def run_instance(data, args, quick):
    repeat = args.repeat or (1 if quick else 7)
    jax_repeat = args.repeat or (1 if quick else 5)
    tol = args.peer_tol
    bl, prob, loss = setup_ours(data)
    Xtr, ytr = data["Xtr"], data["ytr"]
    XF = np.asfortranarray(Xtr)
    lam_max = prob.lam_max()
    failures = []
    print(f"\n=== {data['name']}: train {Xtr.shape}, validation {data['Xval'].shape}, "
          f"lam_max = {lam_max:.6g}")

    def number_for(fn, budget=0.05):
        """Calls per sample so a sample lasts about ``budget`` seconds (for tiny calls)."""
        import time

        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        return 1 if quick else max(1, min(50, int(budget / max(once, 1e-9))))

    solve_rows, hyper_rows, overhead = [], [], []
    for div in DIVISORS:
        lam = lam_max / div
        label = f"lam_max/{div}"
        # ---- solve -------------------------------------------------------------------
        sol = prob.solve(lam)
        if not sol.converged:
            failures.append(f"{label}: our solve did not converge ({sol.info})")
        w = {"ours": sol.x, "celer": fit_celer(XF, ytr, lam, tol),
             "sklearn": fit_sklearn(XF, ytr, lam, tol)}
        k, rank = support_rank(data, sol.x)
        print(f"\n{label} = {lam:.6g}: ours {sol.n_iter} epochs, gap {sol.info['gap']:.1e} "
              f"(relative), polished {sol.info['polished']}, |S| = {k}, rank X_S = {rank}"
              + ("  (w* not unique: compare predictions)" if rank < k else ""))
        for peer in ("celer", "sklearn"):
            d = compare_solutions(data, sol.x, w[peer], lam)
            print(f"  {peer:8s} |S| = {np.count_nonzero(w[peer]):3d}   max|w - w_peer|/max|w_peer|"
                  f" = {d['w']:.1e}   max|X(w - w_peer)|/max|X w_peer| = {d['pred']:.1e}   "
                  f"(P(w) - P(w_peer))/P(w_peer) = {d['obj']:+.1e}")
            if not d["pred"] <= SOLVE_RTOL:
                failures.append(f"{label}: {peer}'s predictions differ from ours by "
                                f"{d['pred']:.1e}")
        fns = {"ours": lambda lam=lam: prob.solve(lam),
               "celer": lambda lam=lam: fit_celer(XF, ytr, lam, tol),
               "sklearn": lambda lam=lam: fit_sklearn(XF, ytr, lam, tol)}
        times = {name: time_median(fn, repeat=repeat, number=number_for(fn))
                 for name, fn in fns.items()}
        solve_rows.append((f"solve, {label}", times))

        # ---- hypergradient -----------------------------------------------------------
        strategy, strategy_note = pick_strategy(bl, prob, loss, lam)
        value, grad = bl.hypergradient(prob, loss, lam, strategy=strategy)
        grad = float(grad)
        ref_value, ref = closed_form(data, sol.x)
        _, ref_sk = closed_form(data, w["sklearn"])
        err = abs(grad - ref) / abs(ref)
        print(f"  hypergradient dL/dlam, closed form -s^T H^+ v_S at our solution "
              f"{ref:+.12e} (L = {ref_value:.10g});\n"
              f"    at scikit-learn's solution {ref_sk:+.12e} "
              f"(rel. diff. {abs(ref_sk - ref) / abs(ref):.1e})")
        print(f"    ours          {grad:+.12e}  rel. error {err:.1e}  [{strategy_note}]")
        if not err <= HYPERGRAD_RTOL:
            failures.append(f"{label}: our hypergradient is off the closed form by {err:.1e}")
        results = {"ours": err}
        hyper_fns = {"ours": lambda lam=lam, s=strategy: bl.hypergradient(prob, loss, lam,
                                                                          strategy=s)}
        for name, hg in data["jaxopt"].items():
            j_value, j_grad, iters, error = hg(lam)          # compiles on the first call
            j_err = abs(j_grad - ref) / abs(ref)
            results[name] = j_err
            note = "  (maxiter reached)" if iters >= data["jaxopt_maxiter"][name] else ""
            print(f"    {name:13s} {j_grad:+.12e}  rel. error {j_err:.1e}  [{iters} iterations,"
                  f" fixed-point residual {error:.1e}{note}]")
            hyper_fns[name] = lambda lam=lam, hg=hg: hg(lam)
        htimes = {"ours": time_median(hyper_fns["ours"], repeat=repeat,
                                      number=number_for(hyper_fns["ours"]))}
        for name in data["jaxopt"]:
            htimes[name] = time_median(hyper_fns[name], repeat=jax_repeat, warmup=0)
        hyper_rows.append((f"hypergradient, {label}", htimes))

        # ---- overhead: solve, hypergradient and VJP in turn, so that they share the
        # machine's slow spells ---------------------------------------------------------
        _, gx, _ = loss.value_and_grad(sol.x)
        paired = {"solve": fns["ours"], "hyper": hyper_fns["ours"],
                  "vjp": functools.partial(strategy.vjp, prob, sol, gx)}
        paired = time_interleaved(paired, repeat=1 if quick else 3 * repeat,
                                  number=number_for(paired["hyper"]))
        overhead.append({"label": label, **{k: t.median for k, t in paired.items()},
                         "errors": results})

    # ---- path --------------------------------------------------------------------------
    lams = lam_grid(lam_max)
    ours_path = path_ours(prob, lams)
    peer_paths = {"celer": path_celer(XF, ytr, lams, tol),
                  "sklearn": path_sklearn(XF, ytr, lams, tol)}
    print(f"\npath: {N_PATH} lams from lam_max/1.01 to lam_max/100, warm starts; "
          "worst over the path:")
    gap_scale = tol * float(ytr @ ytr) / ytr.size
    for peer, (coefs, gaps) in peer_paths.items():
        d = [compare_solutions(data, a, b, lam) for a, b, lam in zip(ours_path, coefs, lams)]
        worst_gap = float(np.max(np.asarray(gaps) / gap_scale))   # both in our scaling
        print(f"  {peer:8s} max|w - w_peer|/max|w_peer| = {max(x['w'] for x in d):.1e}   "
              f"max|X(w - w_peer)|/max|X w_peer| = {max(x['pred'] for x in d):.1e}   "
              f"peer's gap / its tolerance <= {worst_gap:.2f}")
        worst = max(x["pred"] for x in d)
        if not worst <= SOLVE_RTOL:
            failures.append(f"path: {peer}'s predictions differ from ours by {worst:.1e}")
    path_fns = {"ours": lambda: path_ours(prob, lams),
                "celer": lambda: path_celer(XF, ytr, lams, tol),
                "sklearn": lambda: path_sklearn(XF, ytr, lams, tol)}
    path_repeat = args.repeat or (1 if quick else 5)
    path_times = {name: time_median(fn, repeat=path_repeat) for name, fn in path_fns.items()}
    solve_rows.append((f"path, {N_PATH} lams, warm starts", path_times))

    print()
    print_table(f"{data['name']}: inner solve, peers at tol={tol:g} (ratio > 1: ours is "
                "faster)", solve_rows, ["ours", "celer", "sklearn"])
    print()
    print_table(f"{data['name']}: hypergradient dL/dlam (ratio > 1: ours is faster)",
                hyper_rows, ["ours", *data["jaxopt"]])
    print(f"\n{data['name']}: our hypergradient against the solve (timed in turn)")
    for o in overhead:
        print(f"  {o['label']:12s} solve {format_seconds(o['solve']):>8s}   hypergradient "
              f"{format_seconds(o['hyper']):>8s} ({o['hyper'] / o['solve']:.2f}x the solve)   "
              f"strategy.vjp {format_seconds(o['vjp']):>8s} ({o['vjp'] / o['solve']:6.1%})")
    return {"solve": solve_rows, "hyper": hyper_rows, "overhead": overhead,
            "failures": failures}


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--peer-tol", type=float, default=5e-13,
                        help="celer's and scikit-learn's tol: duality gap <= tol ||y||^2/n "
                             "(default 5e-13, the same criterion as ours)")
    args = parser.parse_args(argv)
    quick = args.quick

    import bilevel.solvers

    print("Lasso: bilevel vs celer, scikit-learn (solve, path) and JAXopt (hypergradient)")
    print(f"Python {sys.version.split()[0]}; {_versions()}")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (others' load skews "
          f"timings); threads: OMP {os.environ.get('OMP_NUM_THREADS', '-')}, OPENBLAS "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', '-')}")
    print("JAXopt: " + "; ".join(
        f"{name}: ProximalGradient(tol={t:g}, maxiter={mi}, "
        f"{'stepsize=1/L' if fixed else 'line search'}), implicit solve "
        f"{'normal CG tol 1e-5 (default)' if cg is None else f'normal CG tol {cg:g}'}"
        for name, (t, mi, fixed, cg) in JAXOPT_CONFIGS.items()))
    if quick:
        print(f"--quick: JAXopt capped at maxiter={JAXOPT_QUICK_MAXITER} (its results are not "
              "checked), one repeat per timing")
    bilevel.solvers.warmup()

    reports = []
    for make in INSTANCES:
        data = make()
        cap = JAXOPT_QUICK_MAXITER
        configs = {name: (t, cap, fixed, cg, cap) if quick else (t, mi, fixed, cg)
                   for name, (t, mi, fixed, cg) in JAXOPT_CONFIGS.items()}
        data["jaxopt"] = {name: setup_jaxopt(data, *cfg) for name, cfg in configs.items()}
        data["jaxopt_maxiter"] = {name: cfg[1] for name, cfg in configs.items()}
        reports.append((data["name"], run_instance(data, args, quick)))

    print("\n=== summary (medians; ratio peer/ours > 1: ours is faster)")
    failures = []
    for name, rep in reports:
        for label, times in rep["solve"]:
            t = {k: v.median for k, v in times.items()}
            print(f"  {name:15s} {label:26s} celer/ours {t['celer'] / t['ours']:6.2f}x   "
                  f"sklearn/ours {t['sklearn'] / t['ours']:6.2f}x")
        for (label, times), o in zip(rep["hyper"], rep["overhead"]):
            t = {k: v.median for k, v in times.items()}
            jax_part = "   ".join(f"{k}/ours {t[k] / t['ours']:6.1f}x (err {o['errors'][k]:.0e})"
                                   for k in t if k != "ours")
            print(f"  {name:15s} {label:26s} {jax_part}   ours: err {o['errors']['ours']:.0e}, "
                  f"hypergradient/solve {o['hyper'] / o['solve']:.2f}x")
        failures += [f"{name}: {f}" for f in rep["failures"]]

    def goal(ok):
        return "met" if ok else "NOT met"

    solve_ratios = [t["celer"].median / t["ours"].median for _, rep in reports
                    for label, t in rep["solve"] if label.startswith("solve")]
    path_ratios = [t["celer"].median / t["ours"].median for _, rep in reports
                   for label, t in rep["solve"] if label.startswith("path")]
    jax_ratios = {name: [t[name].median / t["ours"].median for _, rep in reports
                         for _, t in rep["hyper"]] for name in JAXOPT_CONFIGS}
    overheads = [o for _, rep in reports for o in rep["overhead"]]
    errs = [o["errors"]["ours"] for o in overheads]
    vjp_share = [o["vjp"] / o["solve"] for o in overheads]
    over_solve = [o["hyper"] / o["solve"] for o in overheads]
    print(f"\n  solve: celer/ours {min(solve_ratios):.2f}x .. {max(solve_ratios):.2f}x "
          f"(goal >= 1: {goal(min(solve_ratios) >= 1)})")
    print(f"  path:  celer/ours {min(path_ratios):.2f}x .. {max(path_ratios):.2f}x "
          f"(goal > 1: {goal(min(path_ratios) > 1)})")
    for name, ratios in jax_ratios.items():
        print(f"  hypergradient: {name}/ours {min(ratios):.0f}x .. {max(ratios):.0f}x "
              f"(goal >= {SPEEDUP_GOAL:g}x: {goal(min(ratios) >= SPEEDUP_GOAL)})"
              + ("  [--quick: JAXopt capped, not meaningful]" if quick else ""))
    print(f"  our rel. error vs closed form <= {max(errs):.1e} (goal <= {HYPERGRAD_GOAL:g}: "
          f"{goal(max(errs) <= HYPERGRAD_GOAL)})")
    print(f"  hypergradient / solve {min(over_solve):.2f}x .. {max(over_solve):.2f}x "
          f"(goal <= {OVERHEAD_GOAL:g}x: {goal(max(over_solve) <= OVERHEAD_GOAL)}); "
          f"strategy.vjp / solve {min(vjp_share):.0%} .. {max(vjp_share):.0%}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("bilevel", "numba", "numpy", "scipy", "scikit-learn", "celer", "jax",
                "jaxopt"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} ?")
    return ", ".join(out)


if __name__ == "__main__":
    sys.exit(main())
