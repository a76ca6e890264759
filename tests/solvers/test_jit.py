"""Importing compiles nothing; a second solve recompiles nothing."""

import subprocess
import sys
import textwrap


def run(code):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=300)
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


def test_warmup_compiles_every_kernel_once():
    out = run("""
        from bilevel import solvers
        solvers.warmup(); solvers.warmup()
        print([len(k.signatures) for k in solvers.KERNELS])
    """)
    assert set(eval(out.strip())) == {1}


def test_import_does_not_import_heavy_optional_modules():
    out = run("""
        import sys, bilevel
        print(sorted(m for m in ("sklearn", "matplotlib", "hypothesis", "scipy.optimize",
                                     "scipy.linalg", "scipy.sparse", "skimage")
                     if m in sys.modules))
    """)
    assert eval(out.strip()) == []
