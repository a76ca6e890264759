"""Hypergradient of a held-out logistic loss w.r.t. the L2 penalty: bilevel vs JAXopt.

.. math:: \\frac{d}{d\\lambda} \\frac1m \\sum_{j \\in val} \\log(1 + e^{-y_j a_j^\\top x^*}),
          \\qquad x^*(\\lambda) = \\arg\\min_x \\frac1n \\sum_{i \\in train}
          \\log(1 + e^{-y_i a_i^\\top x}) + \\frac{\\lambda}{2}\\|x\\|^2

on scikit-learn's breast-cancer data (569 x 30, split 50/50 with seed 0, standardized).

- ours: ``bl.hypergradient(prob, loss, lam, strategy="implicit")``: damped Newton in numba,
  then one dense Hessian solve.
- jaxopt: ``jaxopt.LBFGS`` (tol 1e-10) with its implicit differentiation, under
  ``jax.jit(jax.value_and_grad(outer))``, float64. The implicit linear system is solved by
  CG (``jaxopt.linear_solve.solve_cg``, tol 1e-12): JAXopt's default (CG on the normal
  equations, tol 1e-5) agrees only to ~1e-4; the full run prints it as a note.
- scipy: ``scipy.optimize.minimize(method="L-BFGS-B")`` then one dense Hessian solve with
  NumPy, the plain baseline.

Rows: steady state (each after its warm-up: ``bilevel.solvers.warmup()``, JAX's
compilation); first call in a fresh process (numba kernels cached on disk; JAX compiles in
memory by default, and a second JAXopt row uses JAX's persistent compilation cache); import
plus first call in a fresh process. The script exits with status 1 when the hypergradients
disagree by more than 1e-6 (relative).

Run: ``python benchmarks/bench_logistic_jaxopt.py [--quick] [--lam 0.01]``.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from _harness import format_seconds, make_parser, print_table, time_fresh_process, time_median

PEERS = ("jax", "jaxopt")     # what this benchmark imports beyond bilevel (the bench extra)
BENCH_DIR = Path(__file__).resolve().parent
AGREEMENT_RTOL = 1e-6
FIRST_CALL_GOAL = 5.0        # jaxopt first call / ours first call

# A fresh process imports this module (light: numpy and the harness), loads the instance
# from an .npz file and times the import of the library and its first hypergradient.
_FRESH_CODE = """
import time
start = time.perf_counter()
import json, sys
sys.path.insert(0, {bench_dir!r})
import numpy as np
import bench_logistic_jaxopt as bench
data = dict(np.load({data_path!r}))
hypergradient = bench.SETUPS[{name!r}](data, **{kwargs!r})
t = time.perf_counter()
hypergradient({lam!r})
first = time.perf_counter() - t
print(json.dumps({{"first_call": first, "import_and_first_call": time.perf_counter() - start}}))
"""


def load_instance():
    """``dict(Xtr, ytr, Xval, yval)``: breast cancer, split 50/50 (seed 0), standardized."""
    from bilevel.datasets import load, split_standardize

    Xtr, ytr, Xval, yval = split_standardize(*load("breast_cancer"))
    return {"Xtr": Xtr, "ytr": ytr, "Xval": Xval, "yval": yval}


# Each setup builds one method on the instance and returns ``hypergradient(lam,
# certificate=False) -> (value, grad)``; with ``certificate=True`` it also returns a line
# describing the inner solve (and raises if that solve did not converge).

# --- ours -------------------------------------------------------------------------------
def setup_ours(data):
    """``bl.hypergradient`` with the implicit strategy."""
    import bilevel as bl

    problem = bl.problems.LogisticRegression(data["Xtr"], data["ytr"])
    loss = bl.losses.LogisticLoss(data["Xval"], data["yval"])

    def hypergradient(lam, certificate=False):
        if not certificate:
            value, grad = bl.hypergradient(problem, loss, lam, strategy="implicit")
            return value, float(grad)
        value, grad, info = bl.hypergradient(problem, loss, lam, strategy="implicit",
                                             return_info=True)
        sol = info["solution"]
        if not sol.converged:
            raise RuntimeError(f"bilevel's inner solve did not converge: {sol.info}")
        return value, float(grad), (f"Newton, {sol.n_iter} iterations, "
                                    f"||grad E||_inf = {sol.info['residual']:.1e}")

    return hypergradient


# --- JAXopt -----------------------------------------------------------------------------
def setup_jaxopt(data, linear_solve="cg", cache_dir=None, maxiter=1000):
    """JAXopt's implicit differentiation through ``LBFGS``, under ``jit(value_and_grad)``.

    ``linear_solve="cg"`` solves the implicit system by CG at tol 1e-12; ``"default"``
    keeps JAXopt's default (CG on the normal equations, tol 1e-5). ``cache_dir`` turns on
    JAX's persistent compilation cache there.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    if cache_dir is not None:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import jax.numpy as jnp
    import jaxopt

    def energy(w, lam, X, y):
        return jnp.mean(jax.nn.softplus(-y * (X @ w))) + 0.5 * lam * (w @ w)

    if linear_solve == "cg":
        solve = functools.partial(jaxopt.linear_solve.solve_cg, tol=1e-12, maxiter=1000)
    elif linear_solve == "default":
        solve = None
    else:
        raise ValueError(f"linear_solve must be 'cg' or 'default', got {linear_solve!r}")
    solver = jaxopt.LBFGS(energy, tol=1e-10, maxiter=maxiter, implicit_diff_solve=solve)

    def outer(lam, Xtr, ytr, Xval, yval):
        w, state = solver.run(jnp.zeros(Xtr.shape[1]), lam, Xtr, ytr)
        loss = jnp.mean(jax.nn.softplus(-yval * (Xval @ w)))
        return loss, (state.iter_num, state.error)      # aux: the inner solve's certificate

    args = tuple(jnp.asarray(data[k]) for k in ("Xtr", "ytr", "Xval", "yval"))
    value_and_grad = jax.jit(jax.value_and_grad(outer, has_aux=True))

    def hypergradient(lam, certificate=False):
        (value, (iters, error)), grad = value_and_grad(lam, *args)
        value, grad = float(value), float(grad)        # float() waits for the result
        if not certificate:
            return value, grad
        iters, error = int(iters), float(error)
        if not (error <= solver.tol and iters < maxiter):
            raise RuntimeError(f"JAXopt LBFGS did not converge: ||grad E||_2 = {error:.1e} "
                               f"after {iters} iterations")
        return value, grad, f"LBFGS, {iters} iterations, ||grad E||_2 = {error:.1e}"

    return hypergradient


# --- SciPy ------------------------------------------------------------------------------
def setup_scipy(data):
    """L-BFGS-B inner solve, then one dense Hessian solve in NumPy."""
    import scipy.linalg
    import scipy.optimize
    from scipy.special import expit

    Xtr, ytr, Xval, yval = (data[k] for k in ("Xtr", "ytr", "Xval", "yval"))
    n = Xtr.shape[0]

    def energy_and_grad(w, lam):
        margins = ytr * (Xtr @ w)
        value = np.mean(np.logaddexp(0.0, -margins)) + 0.5 * lam * (w @ w)
        grad = Xtr.T @ (-ytr * expit(-margins)) / n + lam * w
        return value, grad

    def hypergradient(lam, certificate=False):
        # ftol=0: stop on the gradient (or when the energy no longer decreases in float64).
        res = scipy.optimize.minimize(energy_and_grad, np.zeros(Xtr.shape[1]), args=(lam,),
                                      jac=True, method="L-BFGS-B",
                                      options={"gtol": 1e-10, "ftol": 0.0, "maxiter": 1000})
        w = res.x
        s = expit(ytr * (Xtr @ w))
        H = (Xtr * (s * (1.0 - s))[:, None]).T @ Xtr / n + lam * np.eye(w.size)
        margins = yval * (Xval @ w)
        value = float(np.mean(np.logaddexp(0.0, -margins)))
        grad_w = Xval.T @ (-yval * expit(-margins)) / margins.size
        u = scipy.linalg.solve(H, grad_w, assume_a="pos")
        grad = -float(w @ u)          # dL/dlam = -(dF/dlam)^T H^-1 grad_w L with dF/dlam = w
        if not certificate:
            return value, grad
        residual = np.max(np.abs(energy_and_grad(w, lam)[1]))
        if not residual <= 1e-8:
            raise RuntimeError(f"L-BFGS-B did not converge: {res.message}, "
                               f"||grad E||_inf = {residual:.1e}")
        return value, grad, f"L-BFGS-B, {res.nit} iterations, ||grad E||_inf = {residual:.1e}"

    return hypergradient


SETUPS = {"ours": setup_ours, "jaxopt": setup_jaxopt, "scipy": setup_scipy}


def first_calls(name, data_path, lam, *, repeat, prime, **kwargs):
    """``{"first_call": Timing, "import_and_first_call": Timing}`` from fresh processes."""
    code = _FRESH_CODE.format(bench_dir=str(BENCH_DIR), data_path=data_path, name=name,
                              kwargs=kwargs, lam=lam)
    return time_fresh_process(code, repeat=repeat, prime=prime)


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--lam", type=float, default=1e-2, help="the L2 penalty (default 0.01)")
    args = parser.parse_args(argv)
    quick, lam = args.quick, args.lam
    repeat = args.repeat or (3 if quick else 15)
    number = 3 if quick else 20
    fresh_repeat = args.repeat or (1 if quick else 5)

    data = load_instance()
    methods = {"ours": setup_ours(data), "jaxopt": setup_jaxopt(data),
               "scipy": setup_scipy(data)}
    print(f"L2 logistic regression on breast cancer: train {data['Xtr'].shape}, "
          f"validation {data['Xval'].shape}, lam = {lam:g}")
    print(f"Python {sys.version.split()[0]}; {_versions()}")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (others' load skews "
          "timings)")

    # Warm-up (numba kernels, JAX compilation) and agreement.
    import bilevel.solvers

    bilevel.solvers.warmup()
    results = {name: f(lam, certificate=True) for name, f in methods.items()}
    g_ours = results["ours"][1]
    rel_diff = {name: abs(r[1] - g_ours) / abs(g_ours) for name, r in results.items()}
    print("\nhypergradient dL/dlam (held-out loss) and the inner solve")
    for name, (value, grad, certificate) in results.items():
        note = "" if name == "ours" else f"   rel. diff. to ours {rel_diff[name]:.1e}"
        print(f"  {name:7s} {grad:+.12f}  ({value:.12f})  {certificate}{note}")
    if not quick:
        default = setup_jaxopt(data, linear_solve="default")
        g_default = default(lam)[1]
        t_default = time_median(lambda: default(lam), repeat=repeat, number=number)
        print(f"  JAXopt with its default implicit_diff_solve (normal CG, tol 1e-5): "
              f"{g_default:+.12f}, rel. diff. to ours "
              f"{abs(g_default - g_ours) / abs(g_ours):.1e}, "
              f"{format_seconds(t_default.median)} per call")

    steady = {name: time_median(lambda f=f: f(lam), repeat=repeat, number=number)
              for name, f in methods.items()}

    tmp = tempfile.mkdtemp(prefix="bench_logistic_")
    try:
        data_path = str(Path(tmp) / "instance.npz")
        np.savez(data_path, **data)
        # Ours loads its numba kernels from the on-disk cache, as after any first run: the
        # calls above filled it, and a priming run makes sure (skipped in --quick). JAX
        # compiles in memory and SciPy compiles nothing: nothing to prime.
        fresh = {name: first_calls(name, data_path, lam, repeat=fresh_repeat,
                                   prime=name == "ours" and not quick) for name in methods}
        if not quick:
            fresh["jaxopt_cached"] = first_calls(
                "jaxopt", data_path, lam, repeat=fresh_repeat, prime=True,
                cache_dir=str(Path(tmp) / "jax_cache"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def row(kind, jaxopt_key="jaxopt"):
        return {"ours": fresh["ours"][kind], "jaxopt": fresh[jaxopt_key][kind],
                "scipy": fresh["scipy"][kind]}

    rows = [(f"steady state (median of {repeat} x {number} calls)", steady),
            (f"first call, fresh process (median of {fresh_repeat})", row("first_call")),
            ("import + first call, fresh process", row("import_and_first_call"))]
    if "jaxopt_cached" in fresh:
        rows += [("first call, JAX persistent cache", row("first_call", "jaxopt_cached")),
                 ("import + first call, JAX pers. cache",
                  row("import_and_first_call", "jaxopt_cached"))]
    print()
    print_table("time per hypergradient (ratio > 1: ours is faster)", rows,
                ["ours", "jaxopt", "scipy"])
    if "jaxopt_cached" in fresh:
        print("  ours always loads its numba kernels from the on-disk cache; the 'JAX pers. "
              "cache' rows give\n  JAX the same advantage (by default JAX compiles in memory)")

    ratio_steady = steady["ours"].median / steady["jaxopt"].median
    ratio_first = fresh["jaxopt"]["first_call"].median / fresh["ours"]["first_call"].median
    worst = max(v for k, v in rel_diff.items() if k != "ours")
    print(f"\nsteady state: ours/jaxopt = {ratio_steady:.2f} (below 1: ours is faster)")
    print(f"first call:   jaxopt/ours = {ratio_first:.1f}x (goal >= {FIRST_CALL_GOAL:g}x: "
          f"{'met' if ratio_first >= FIRST_CALL_GOAL else 'NOT met'})")
    print(f"agreement:    max rel. diff. of the hypergradients = {worst:.1e} "
          f"(required <= {AGREEMENT_RTOL:g})")
    if worst > AGREEMENT_RTOL:
        print("FAILED: the hypergradients disagree", file=sys.stderr)
        return 1
    return 0


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("bilevel", "numba", "numpy", "scipy", "jax", "jaxlib", "jaxopt"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} ?")
    return ", ".join(out)


if __name__ == "__main__":
    sys.exit(main())
