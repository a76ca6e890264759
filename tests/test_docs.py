"""Every Python block of README.md and docs/ runs, and the outputs the pages show are current.

The blocks of one page run in order in one namespace, as one session, in a temporary working
directory (pages may write figures). A ```text block that follows a ```python block with
nothing but blank lines between them is that block's printed output, compared token by token:

- words must be equal;
- a number followed by a time or memory unit (``us``, ``ms``, ``s``, ``B``, ``KiB``, ...)
  varies with the machine: any number and any unit of the same kind match;
- other numbers agree to 1e-6 relative, or both lie below 1e-8 in magnitude (round-off:
  errors and residuals at machine precision differ between BLAS builds).

A block that needs an optional dependency names its extra in a comment (``.[plot]``); the
page is skipped when that extra is missing. The ``$ bilevel ...`` lines of ```console blocks
run through the command's entry point and must exit with status 0 (the install lines are what
``.ci/run`` itself runs).
"""

import contextlib
import io
import math
import pathlib
import re
import shlex

import pytest

from bilevel._registry import PROBLEMS, STRATEGIES
from bilevel.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.S | re.M)
EXTRAS = {".[plot]": "matplotlib", ".[distributed]": "distributed"}
TIME_UNITS = {"ns", "us", "ms", "s"}
MEMORY_UNITS = {"B", "KiB", "MiB", "GiB"}
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def blocks(page):
    """``[(code, expected_output or None), ...]`` of a page's Python blocks, dedented."""
    text = page.read_text()
    fences = list(FENCE.finditer(text))
    out = []
    for k, m in enumerate(fences):
        if m["lang"] != "python":
            continue
        indent = len(m["indent"])
        code = "\n".join(line[indent:] for line in m["body"].splitlines())
        expected = None
        if k + 1 < len(fences):
            after = fences[k + 1]
            if after["lang"] == "text" and not text[m.end():after.start()].strip():
                expected = after["body"]
        out.append((code, expected))
    return out


def commands(page):
    """The ``bilevel`` command lines of a page's console blocks, as argument lists."""
    out = []
    for m in FENCE.finditer(page.read_text()):
        if m["lang"] == "console":
            for line in m["body"].splitlines():
                line = line.strip()
                if line.startswith("$ bilevel "):
                    out.append(shlex.split(line[2:], comments=True)[1:])
    return out


def _kind(unit):
    return "time" if unit in TIME_UNITS else "memory" if unit in MEMORY_UNITS else None


def _numbers_match(expected, actual):
    a, b = float(expected), float(actual)
    if abs(a) < 1e-8 and abs(b) < 1e-8:
        return True
    return math.isclose(a, b, rel_tol=1e-6)


def _cell(token):
    return re.sub(r"^[\[(]+|[\]),]+$", "", token)


def output_mismatch(expected, actual):
    """Return a description of the first difference, or None when the outputs match."""
    want = [line.split() for line in expected.strip().splitlines()]
    got = [line.split() for line in actual.strip().splitlines()]
    if len(want) != len(got):
        return f"{len(got)} lines printed, {len(want)} shown on the page"
    for row, (w_line, g_line) in enumerate(zip(want, got)):
        if len(w_line) != len(g_line):
            return f"line {row + 1}: {' '.join(g_line)!r} printed, {' '.join(w_line)!r} shown"
        for col, (w, g) in enumerate(zip(w_line, g_line)):
            if w == g or set(w) == set(g) == {"-"}:
                continue                                  # a table rule: as wide as its cells
            wc, gc = _cell(w), _cell(g)
            if NUMBER.match(wc) and NUMBER.match(gc):
                unit_w = w_line[col + 1] if col + 1 < len(w_line) else ""
                unit_g = g_line[col + 1] if col + 1 < len(g_line) else ""
                if _kind(unit_w) is not None and _kind(unit_w) == _kind(unit_g):
                    continue                          # a time or a memory size
                if _numbers_match(wc, gc):
                    continue
            elif _kind(w) is not None and _kind(w) == _kind(g) and col > 0 \
                    and NUMBER.match(_cell(w_line[col - 1])):
                continue                              # the unit of a time or memory size
            return f"line {row + 1}: {g!r} printed where the page shows {w!r}"
    return None


RUNNABLE = [p for p in PAGES if blocks(p) or commands(p)]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_page_blocks_run_and_print_what_the_page_shows(page, tmp_path, monkeypatch):
    page_blocks = blocks(page)
    for marker, module in EXTRAS.items():
        if any(marker in code for code, _ in page_blocks):
            pytest.importorskip(module, reason=f"the page needs the {marker} extra")
    monkeypatch.chdir(tmp_path)
    with _registries_restored():
        _run(page, page_blocks)
    for argv in commands(page):
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(argv) == 0, f"{page.name}: bilevel {shlex.join(argv)} failed"


@contextlib.contextmanager
def _registries_restored():
    """A page may register its own problems and strategies: keep them out of other pages."""
    saved = [(registry, dict(registry)) for registry in (PROBLEMS, STRATEGIES)]
    try:
        yield
    finally:
        for registry, entries in saved:
            registry.clear()
            registry.update(entries)


def _run(page, page_blocks):
    namespace = {"__name__": "__docs__"}
    for k, (code, expected) in enumerate(page_blocks):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"{page.name}, block {k + 1}", "exec"), namespace)
        if expected is not None:
            problem = output_mismatch(expected, printed.getvalue())
            assert problem is None, (f"{page.name}, block {k + 1}: {problem}\n--- printed:\n"
                                     f"{printed.getvalue()}")


def test_output_comparison_is_strict_where_it_should_be():
    shown = "implicit  +8.9113932507e-03  4.4e-12  272 us  77.0 KiB  1  2.4e-16"
    assert output_mismatch(shown, shown.replace("272 us", "1.13 ms")) is None
    assert output_mismatch(shown, shown.replace("77.0 KiB", "1.1 MiB")) is None
    assert output_mismatch(shown, shown.replace("4.4e-12", "6.5e-12")) is None
    assert output_mismatch(shown, shown.replace("+8.9113932507e-03", "+8.9113932508e-03")) \
        is None
    assert output_mismatch(shown, shown.replace("+8.9113932507e-03", "+6.83e-03"))
    assert output_mismatch(shown, shown.replace("  1  ", "  200  "))
    assert output_mismatch(shown, shown.replace("implicit", "unroll"))
    assert output_mismatch(shown, shown.replace("272 us", "272 KiB"))
    assert output_mismatch(shown, shown + "\nmore")
    rule = "--------  -------  ---"
    assert output_mismatch(rule, rule.replace("-------  ", "---------  ")) is None
    assert output_mismatch(rule, rule.replace("---", "1.0"))


def test_every_page_with_code_is_found():
    names = {p.relative_to(ROOT).as_posix() for p in RUNNABLE}
    assert {"README.md", "docs/getting-started.md", "docs/strategies/implicit.md"} <= names
    assert ["compare", "--format", "json", "--repeat", "1"] in commands(
        ROOT / "docs" / "getting-started.md")
