"""The bilevel command: compare, minimize, list, and --plot without matplotlib."""

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
