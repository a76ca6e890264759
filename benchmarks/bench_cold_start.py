"""Cold start: the first solve + VJP of each problem family in a fresh process, against JAXopt.

What a new user (and every CI run) pays once per family: numba compiling the family's
kernels into an empty on-disk cache. Each row runs in fresh interpreters with its own
``NUMBA_CACHE_DIR``:

- *empty cache*: the first ``bl.hypergradient`` of the family's example instance
  (``Problem.examples()``, upper loss ``||x||^2 / 2``) with its usual strategy, timed from
  the end of ``import bilevel``, building the instance included (a constructor may import
  numba): compilation of every kernel the call needs;
- *warm cache*: the same call in ``--repeat`` further processes once that cache is filled
  (numba loads the kernels); the goal is at most 0.3 s beyond ``import bilevel``.

The anchor, measured in the same run: JAXopt's first call of the L2-logistic hypergradient
of ``bench_logistic_jaxopt.py`` (LBFGS and its implicit differentiation traced and compiled
by XLA, which JAX does in every new process by default). Goal: every family's empty-cache
first call no slower than JAXopt's. ``bilevel warmup --jobs N`` compiles every family's
serial kernels ahead of time; its wall time, from an empty cache, is the last row.

Run: ``python benchmarks/bench_cold_start.py [--quick] [--repeat K] [--families ...]``
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import format_seconds, make_parser

PEERS = ("jax", "jaxopt")
BENCH_DIR = Path(__file__).resolve().parent
WARM_GOAL = 0.3         # seconds beyond `import bilevel`, cache warm

# (row, problem class, example label, strategy): the families of issue 16's table.
FAMILIES = (
    ("Ridge", "Ridge", "ridge-scalar", "implicit"),
    ("LogisticRegression l2", "LogisticRegression", "logistic", "implicit"),
    ("Lasso", "Lasso", "lasso-scalar", "partial_smoothness"),
    ("LogisticRegression l1", "LogisticRegression", "logistic-l1", "partial_smoothness"),
    ("TV1D order 1", "TV1D", "tv1d-l1", "analytic"),
    ("TV1D order 2", "TV1D", "tv1d-order2", "partial_smoothness"),
    ("TV2D", "TV2D", "tv2d-identity", "fixed_point"),
    ("Projection l1 ball", "Projection", "projection-l1_ball", "analytic"),
    ("QP", "QP", "qp-c", "analytic"),
    ("NNLS", "NNLS", "nnls-b", "analytic"),
    ("RobustPooling welsch", "RobustPooling", "robust_pooling-welsch", "analytic"),
)
QUICK = ("Ridge", "TV1D order 1")

_FAMILY_CODE = """
import time
start = time.perf_counter()
import json
import bilevel as bl
imported = time.perf_counter() - start
t0 = time.perf_counter()        # from here on: beyond the import (building the problem too)
examples = {{label: (p, t) for label, p, t in bl.problems.{cls}.examples()}}
problem, theta = examples[{label!r}]
bl.hypergradient(problem, lambda x, theta=None: 0.5 * (x * x).sum(), theta,
                 strategy={strategy!r})
print(json.dumps({{"import": imported, "first_call": time.perf_counter() - t0}}))
"""


def run_fresh(code, cache_dir):
    """Run ``code`` in a fresh interpreter with numba's cache in ``cache_dir``; its JSON."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"fresh process failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def family_rows(families, repeat, root):
    """Per family: empty-cache first call, warm-cache first calls, imports."""
    rows = []
    for row, cls, label, strategy in families:
        cache = root / label
        code = _FAMILY_CODE.format(cls=cls, label=label, strategy=strategy)
        cold = run_fresh(code, cache)
        warm = [run_fresh(code, cache) for _ in range(repeat)]
        rows.append({"row": f"{row} ({strategy})", "cold": cold["first_call"],
                     "warm": statistics.median(w["first_call"] for w in warm),
                     "import": statistics.median(w["import"] for w in warm)})
        print(f"  {rows[-1]['row']:<45} empty cache {format_seconds(rows[-1]['cold']):>8}"
              f"   warm {format_seconds(rows[-1]['warm']):>8}", flush=True)
    return rows


def jaxopt_first_call(repeat, root):
    """JAXopt's first L2-logistic hypergradient in fresh processes (XLA compilation)."""
    sys.path.insert(0, str(BENCH_DIR))
    import bench_logistic_jaxopt as logistic

    data_path = root / "logistic.npz"
    np.savez(data_path, **logistic.load_instance())
    timings = logistic.first_calls("jaxopt", str(data_path), 1e-2, repeat=repeat,
                                   prime=False)
    return timings["first_call"].median, timings["import_and_first_call"].median


def warmup_wall(jobs, root):
    """Wall seconds of ``bilevel warmup --jobs`` into an empty cache."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(root / "warmup")}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bilevel.cli", "warmup", "--quiet", "--jobs",
                    str(jobs)], env=env, check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - start


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", metavar="ROW",
                        help="rows to run, by the names of the table (default: all, and the "
                        "`bilevel warmup` row)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(),
                        help="processes of the `bilevel warmup` row (default: all cores)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    wanted = args.families or (QUICK if args.quick else [f[0] for f in FAMILIES])
    families = [f for f in FAMILIES if f[0] in wanted]
    if len(families) != len(wanted):
        parser.error(f"--families must name rows among: {', '.join(f[0] for f in FAMILIES)}")
    root = Path(tempfile.mkdtemp(prefix="bench_cold_start_"))
    try:
        print(f"cold start, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.2f}; numba caches under {root}")
        jax_first, jax_total = jaxopt_first_call(repeat, root)
        print(f"  JAXopt L2 logistic, first call {format_seconds(jax_first)} "
              f"(import + first call {format_seconds(jax_total)})", flush=True)
        rows = family_rows(families, repeat, root)
        warm_all = None if args.quick or args.families else warmup_wall(args.jobs, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nfirst solve + VJP in a fresh process (anchor: JAXopt's first call, "
          f"{format_seconds(jax_first)}; ratio > 1: ours is faster)")
    print(f"  {'family (strategy)':<45} {'empty cache':>11} {'jaxopt/ours':>11} "
          f"{'warm cache':>10} {'import':>8}")
    for r in rows:
        print(f"  {r['row']:<45} {format_seconds(r['cold']):>11} "
              f"{jax_first / r['cold']:>10.2f}x {format_seconds(r['warm']):>10} "
              f"{format_seconds(r['import']):>8}")
    slowest = max(rows, key=lambda r: r["cold"])
    warmest = max(rows, key=lambda r: r["warm"])
    print(f"\n  empty cache: slowest {slowest['row']} {format_seconds(slowest['cold'])}, "
          f"JAXopt {format_seconds(jax_first)} (goal: no slower: "
          f"{'met' if slowest['cold'] <= jax_first else 'NOT met'})")
    print(f"  warm cache: slowest {warmest['row']} {format_seconds(warmest['warm'])} beyond "
          f"import (goal <= {WARM_GOAL} s: {'met' if warmest['warm'] <= WARM_GOAL else 'NOT met'})")
    if warm_all is not None:
        print(f"  bilevel warmup --jobs {args.jobs}, every family from an empty cache: "
              f"{format_seconds(warm_all)} wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
