"""Importing compiles nothing; a second solve recompiles nothing."""

import os
import subprocess
import sys
import textwrap

import pytest


def run(code, timeout=300, **env):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=timeout, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_compiles_no_kernel_and_solves_compile_once():
    out = run("""
        import numpy as np
        import bilevel as bl
        from bilevel import solvers
        assert all(len(k.signatures) == 0 for k in solvers.KERNELS), "compiled at import"
        rng = np.random.default_rng(0)
        X = rng.standard_normal((30, 4)); y = np.sign(rng.standard_normal(30))
        for problem, lam in [(bl.problems.LogisticRegression(X, y), 0.1),
                             (bl.problems.Ridge(X, y), 0.1)]:
            problem.solve(lam)
            problem.solve(lam * 2, init=np.ones(4))
        print({k.py_func.__name__: len(k.signatures) for k in solvers.KERNELS})
    """)
    counts = eval(out.strip())
    assert counts["newton_logistic_l2"] == 1
    assert counts["ridge_cholesky"] == 1
    assert counts["tv1d_condat"] == 0                       # untouched kernels stay lazy


def test_warmup_compiles_every_serial_kernel_once():
    """Twice over, one specialization each; the ``prange`` kernels are left alone.

    The ``prange`` kernels are compiled (and counted) by the slow test below: compiling
    them all takes minutes, and only large batches run them.
    """
    out = run("""
        from bilevel import solvers
        solvers.warmup(); solvers.warmup()
        print([(k.targetoptions.get("parallel", False), len(k.signatures))
               for k in solvers.KERNELS])
    """)
    counts = eval(out.strip())
    assert {n for parallel, n in counts if not parallel} == {1}
    assert {n for parallel, n in counts if parallel} == {0}


def test_import_does_not_import_heavy_optional_modules():
    out = run("""
        import sys, bilevel
        print(sorted(m for m in ("sklearn", "matplotlib", "hypothesis", "scipy.optimize",
                                     "scipy.linalg", "scipy.sparse", "skimage")
                     if m in sys.modules))
    """)
    assert eval(out.strip()) == []


def test_families_partition_the_solver_modules():
    from bilevel import solvers

    modules = [m for names, _ in solvers.FAMILIES.values() for m in names]
    assert sorted(modules) == sorted(m.__name__.rsplit(".", 1)[1] for m in solvers.MODULES)
    assert len(set(modules)) == len(modules)        # parallel workers never overlap


def test_warmup_in_parallel_processes_and_bad_arguments():
    import pytest

    from bilevel import solvers

    seconds = solvers.warmup(["ridge", "logistic"], jobs=2)
    assert list(seconds) == ["ridge", "logistic"] and all(s > 0 for s in seconds.values())
    with pytest.raises(ValueError, match="families must be among"):
        solvers.warmup(["tv3d"])
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        solvers.warmup(["ridge"], jobs=0)


def test_a_first_solve_imports_only_its_own_solver_modules():
    out = run("""
        import sys
        import bilevel as bl
        problem, theta = {l: (p, t) for l, p, t in bl.problems.Ridge.examples()}["ridge-scalar"]
        bl.hypergradient(problem, lambda x, theta=None: 0.5 * (x * x).sum(), theta)
        print(sorted(m for m in sys.modules if m.startswith("bilevel.solvers.")))
    """)
    assert eval(out.strip()) == ["bilevel.solvers.cholesky", "bilevel.solvers.ridge"]


def test_warmup_leaves_the_prange_kernels_to_their_first_use_unless_asked():
    out = run("""
        from bilevel import solvers
        from bilevel.solvers import pooling
        solvers.warmup(["pooling"])
        before = (len(pooling.pool_solve_rows.signatures),
                  len(pooling.pool_solve_batched.signatures))
        solvers.warmup(["pooling"], parallel=True)
        print(before, len(pooling.pool_solve_batched.signatures))
    """)
    assert out.strip() == "(1, 0) 1"


@pytest.mark.slow
def test_every_kernel_compiles_once_without_numbas_costliest_library_code(tmp_path):
    """Compile time: one specialization per kernel, ``prange`` ones included, and no kernel
    pulls in numba code that costs seconds per new process.

    Slice assignment from an array (its error formatting, ~3.5 s), ``np.linalg.lstsq``
    (~6 s with that formatting), ``np.linalg.inv``. Every kernel compiles from an empty
    cache here (minutes), hence slow.
    """
    out = run("""
        from numba.core import event
        from bilevel import solvers

        costly = ("raise_with_shape_context", "linalg.lstsq", "linalg.inv")
        found = set()

        class Listener(event.Listener):
            def on_start(self, ev):
                fn = getattr((ev.data or {}).get("dispatcher"), "py_func", None)
                name = f"{fn.__module__}.{fn.__qualname__}" if fn else ""
                found.update(c for c in costly if c in name)

            def on_end(self, ev):
                pass

        event.register("numba:compile", Listener())
        solvers.warmup(parallel=True); solvers.warmup(parallel=True)
        print((sorted(found), {len(k.signatures) for k in solvers.KERNELS}))
    """, timeout=1200, NUMBA_CACHE_DIR=str(tmp_path))
    assert eval(out.strip()) == ([], {1})
