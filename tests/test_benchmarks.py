"""Smoke test: every ``benchmarks/bench_*.py`` runs in ``--quick`` mode and exits with 0.

A benchmark declares the peers it imports in a module-level tuple ``PEERS`` (module names,
from the optional ``bench`` extra); the test skips a benchmark whose peers are not
installed. Speed itself is never asserted here: the benchmarks print it.
"""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCH_DIR.glob("bench_*.py"))


def declared_peers(script):
    """The ``PEERS`` tuple of a benchmark script, read without importing it."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "PEERS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{script.name} must declare PEERS = (module names it imports)")


def test_benchmarks_exist():
    assert SCRIPTS, f"no bench_*.py in {BENCH_DIR}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_quick(script):
    missing = [m for m in declared_peers(script) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{script.name} needs {', '.join(missing)}: pip install -e '.[bench]'")
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True,
                          text=True, timeout=600, cwd=BENCH_DIR.parent)
    assert proc.returncode == 0, (f"{script.name} --quick exited with {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout[-3000:]}\n"
                                  f"stderr:\n{proc.stderr[-3000:]}")
    assert "ours" in proc.stdout, f"{script.name} printed no table:\n{proc.stdout[-3000:]}"
