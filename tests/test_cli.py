"""The bilevel command: compare, minimize, list, warmup, and --plot without matplotlib."""

import numpy as np
import pytest

from bilevel._registry import strategy_names
from bilevel.cli import main


def test_compare_prints_every_strategy(capsys):
    assert main(["compare", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "log(theta)" in out and "reference finite_difference" in out
    for name in ("implicit", "fixed_point", "unroll", "finite_difference"):
        assert f"\n{name} " in out
    assert "skipped: needs analytic_vjp" in out


def test_compare_json_ridge(capsys):
    import json

    assert main(["compare", "--problem", "ridge", "--repeat", "1", "--format", "json",
                 "--strategies", "implicit,analytic"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["strategy"] for r in data["rows"]] == ["implicit", "analytic"]
    assert data["rows"][0]["error"] < 1e-10


def test_minimize_and_list(capsys):
    assert main(["minimize", "--steps", "3", "--quiet"]) == 0
    assert "validation loss" in capsys.readouterr().out
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "problem"
    ridge = next(line for line in lines if line.startswith("ridge"))
    # Ridge offers optimality, step, energy, analytic_vjp: no manifold, mirror, dual,
    # straight_through; a cell says whether the strategy's requirements are offered.
    from bilevel._registry import STRATEGIES, requirement_sets
    from bilevel.problems import Ridge

    offered = Ridge(np.eye(2), np.ones(2)).capabilities.names
    expected = ["yes" if any(req <= offered for req in requirement_sets(STRATEGIES[n])) else "-"
                for n in strategy_names()]
    assert expected[strategy_names().index("partial_smoothness")] == "-"
    assert expected[strategy_names().index("implicit")] == "yes"
    assert ridge.split()[1:] == expected


def test_compare_lasso(capsys):
    assert main(["compare", "--problem", "lasso", "--repeat", "1", "--format", "json",
                 "--strategies", "partial_smoothness,fixed_point"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)["rows"]
    # Both exact on the identified support; the reference is 4th-order finite differences.
    assert [r["strategy"] for r in rows] == ["partial_smoothness", "fixed_point"]
    assert all(r["error"] < 1e-8 for r in rows)


def test_plot_without_matplotlib_fails_first_in_one_line(capsys, monkeypatch, tmp_path):
    import sys

    import bilevel as bl

    def no_computation(*args, **kwargs):
        raise AssertionError("compare ran before the missing matplotlib was reported")

    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib fails
    monkeypatch.setattr(bl, "compare", no_computation)
    assert main(["compare", "--plot", str(tmp_path / "c.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "pip install 'bilevel[plot]'" in captured.err
    assert not (tmp_path / "c.png").exists()


def test_report_plot_without_matplotlib_names_the_extra(monkeypatch):
    import sys

    from bilevel._report import CompareReport

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    report = CompareReport("p", 0.0, "finite_difference", [], 0.0, False, rows=[])
    with pytest.raises(ImportError, match=r"bilevel\[plot\]") as caught:
        report.plot()
    assert "\n" not in str(caught.value) and caught.value.__cause__ is None


# Bad usage: one line on stderr naming the argument and the remedy, exit status 2, no
# traceback and nothing on stdout. Each case fails before any solve where it can.
BAD_USAGE = [
    (["compare", "--strategies", "bogus"], "--strategies: unknown 'bogus'"),
    (["compare", "--strategies", ",,,"], "names no strategy"),
    (["compare", "--theta", "-1"], "--theta"),
    (["minimize", "--strategy", "bregman", "--steps", "1", "--quiet"],
     "Strategies that apply: implicit"),
    (["minimize", "--strategy", "bogus"], "--strategy: unknown 'bogus'"),
    (["compare", "--budgets", "1", "2"], "add --plot"),
    (["compare", "--repeat", "0"], "--repeat: must be a positive int"),
    (["compare", "--threads", "0"], "--threads: must be a positive int"),
    (["compare", "--max-time", "-1"], "--max-time: must be a positive float"),
    (["minimize", "--steps", "0"], "--steps: must be a positive int"),
    (["minimize", "--lr", "-1"], "--lr: must be a positive float"),
    (["minimize", "--problem", "logistic", "--dataset", "diabetes"], "--dataset breast_cancer"),
    (["compare", "--problem", "bogus"], "--problem 'bogus' is not a problem"),
    (["compare", "--problem", "os:no_such_factory"], "cannot load 'no_such_factory'"),
    (["compare", "--problem", "tv1d", "--dataset", "diabetes"], "--dataset applies to"),
    (["compare", "--problem", "tv1d", "--theta", "1"], "MODULE:FACTORY"),
    (["compare", "--format", "yaml"], "--format: invalid choice"),
    (["frobnicate"], "invalid choice"),
    (["warmup", "lasso"], "unknown family lasso; choose among tv1d, sparse"),
    (["warmup", "--jobs", "0"], "--jobs: must be a positive int"),
]


@pytest.mark.parametrize("argv, says", BAD_USAGE, ids=[" ".join(a) for a, _ in BAD_USAGE])
def test_bad_usage_is_one_line_and_exit_2(argv, says, capsys):
    try:
        status = main(argv)
    except SystemExit as exc:       # argparse's own errors
        status = exc.code
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("bilevel")
    assert says in captured.err


def test_debug_shows_the_traceback():
    from bilevel import NotApplicable

    with pytest.raises(NotApplicable, match="bregman"):
        main(["--debug", "minimize", "--strategy", "bregman", "--steps", "1", "--quiet"])


def test_version(capsys):
    import bilevel

    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"bilevel {bilevel.__version__}\n"


def test_help_shows_true_defaults(capsys):
    from bilevel.cli import _TASKS

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 3)" in out and "(default: 1)" in out      # --repeat, --threads
    for name, (dataset, lam) in _TASKS.items():
        assert f"{name} (on {dataset}, default --theta {lam:g})" in out
    assert _TASKS["lasso"][1] == 1.0


def test_heading_names_the_problem_asked_for(capsys):
    assert main(["compare", "--problem", "logistic_l1", "--repeat", "1",
                 "--strategies", "partial_smoothness"]) == 0
    assert capsys.readouterr().out.startswith("logistic_l1: ")


def test_every_registered_problem_is_reachable():
    """Each registry entry and each of its example labels builds through --problem."""
    import argparse

    from bilevel._registry import PROBLEMS
    from bilevel.cli import _task

    for key, cls in PROBLEMS.items():
        for name in (key, *(label for label, _, _ in cls.examples())):
            args = argparse.Namespace(problem=name, dataset=None, theta=None)
            label, problem, loss, theta, _ = _task(args)
            assert isinstance(problem, cls) or key in ("logistic", "ridge", "lasso")


def test_an_example_problem_compares_against_its_reference(capsys):
    import json

    assert main(["compare", "--problem", "projection-simplex", "--repeat", "1",
                 "--format", "json", "--strategies", "implicit,partial_smoothness"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["problem"] == "projection-simplex" and data["reference"] == "analytic"
    # Projection onto the simplex: implicit (a linear solve) and partial smoothness agree
    # with the closed-form Jacobian to round-off.
    assert all(r["error"] < 1e-12 for r in data["rows"])


def factory():
    """A MODULE:FACTORY target for the test below."""
    import bilevel as bl

    X = np.eye(3)
    return bl.problems.Ridge(X, np.ones(3)), bl.losses.Reconstruction(np.zeros(3)), 0.5


def test_module_factory(capsys, monkeypatch):
    import json
    import sys

    monkeypatch.setitem(sys.modules, "cli_factory_for_tests", sys.modules[__name__])
    assert main(["compare", "--problem", "cli_factory_for_tests:factory", "--repeat", "1",
                 "--format", "json", "--strategies", "implicit", "--theta", "1.0"]) == 0
    data = json.loads(capsys.readouterr().out)
    # x* = y / (1 + lam) with X = I, n = 3: E = |x-y|^2/6 + lam|x|^2/2 so x* = y/(1 + 3 lam);
    # L = |x*|^2/2 = 3/(2(1+3 lam)^2), dL/dlam = -9/(1+3 lam)^3 = -9/64 at lam = 1.
    assert data["rows"][0]["grad"][0] == pytest.approx(-9 / 64, rel=1e-10)


def test_threads_are_restored(monkeypatch):
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    assert main(["compare", "--problem", "ridge", "--repeat", "1", "--format", "json",
                 "--strategies", "implicit", "--threads", "1"]) == 0
    assert (torch.get_num_threads(), numba.get_num_threads()) == before


def test_a_skipped_row_never_shows_an_empty_reason(capsys, monkeypatch):
    import bilevel as bl
    from bilevel._report import CompareReport

    def compare(*args, **kwargs):
        row = {"strategy": "value_function", "label": "value_function", "params": {},
               "skipped": "needs a dual certificate", "missing": []}
        return CompareReport("ridge", 1.0, "analytic", [[0.0]], 0.0, True, rows=[row])

    monkeypatch.setattr(bl, "compare", compare)
    assert main(["compare", "--problem", "ridge", "--repeat", "1"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("value_f"))
    assert "skipped: needs a dual certificate" in line


def test_warmup_compiles_the_named_families_and_lists_them(capsys):
    from bilevel.solvers import FAMILIES

    assert main(["warmup", "ridge", "logistic", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["ridge", "logistic", "total"]
    assert main(["warmup", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(FAMILIES)
