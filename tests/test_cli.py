"""The bilevel command and the bundled data sets."""

import numpy as np
import pytest

from bilevel._registry import strategy_names
from bilevel.cli import main
from bilevel.datasets import load, split_standardize


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
    from bilevel._registry import STRATEGIES
    from bilevel.problems import Ridge

    expected = ["yes" if STRATEGIES[n].requires <= Ridge.capabilities else "-"
                for n in strategy_names()]
    assert expected[strategy_names().index("partial_smoothness")] == "-"
    assert expected[strategy_names().index("implicit")] == "yes"
    assert ridge.split()[1:] == expected


def test_bundled_data_match_scikit_learn():
    from sklearn.datasets import load_breast_cancer, load_diabetes

    X, y = load("breast_cancer")
    ref = load_breast_cancer()
    np.testing.assert_array_equal(X, ref.data)
    np.testing.assert_array_equal(y, 2.0 * ref.target - 1.0)
    X, y = load("diabetes")
    ref = load_diabetes(scaled=False)
    np.testing.assert_allclose(X, ref.data)
    np.testing.assert_allclose(y, ref.target)
    Xt, yt, Xv, yv = split_standardize(X, y)
    assert Xt.shape[0] + Xv.shape[0] == 442
    np.testing.assert_allclose(Xt.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Xt.std(axis=0), 1, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown dataset"):
        load("mnist")


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
