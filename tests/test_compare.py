"""compare: one row per strategy, errors against the reference, exports."""

import json

import numpy as np
import pytest

import bilevel as bl
from bilevel.testing import regression_data


@pytest.fixture(scope="module")
def ridge_report():
    X, y = regression_data(40, 4, seed=1)
    Xv, yv = regression_data(20, 4, seed=2)
    return bl.compare(bl.problems.Ridge(X, y), bl.losses.SquaredError(Xv, yv), 0.3, repeat=2,
                      budgets=[1, 4, 16, 64])


def test_rows_and_errors(ridge_report):
    rows = {r["strategy"]: r for r in ridge_report.rows}
    assert set(rows) == {"analytic", "implicit", "fixed_point", "unroll", "finite_difference",
                         "partial_smoothness", "bregman", "straight_through", "value_function"}
    assert rows.pop("partial_smoothness")["missing"] == ["manifold"]   # ridge is smooth
    for name, missing in (("bregman", "mirror"), ("straight_through", "straight_through"),
                          ("value_function", "dual")):
        assert rows.pop(name)["missing"] == [missing]                  # skipped, with reason
    assert ridge_report.reference == "analytic"
    for name in ("analytic", "implicit", "fixed_point"):
        assert rows[name]["error"] < 1e-10, name             # exact up to round-off
    assert rows["finite_difference"]["error"] < 1e-7         # 4th order, h ~ 7e-4
    for row in rows.values():
        assert row["time"] > 0 and row["peak_bytes"] > 0
    trace = [e for _, e in rows["unroll"]["trace"]]
    assert trace[0] > trace[-1]                              # more steps, smaller error


def test_exports(ridge_report, tmp_path):
    data = json.loads(ridge_report.to_json())
    assert data["reference"] == "analytic" and len(data["rows"]) == 9
    md = ridge_report.to_markdown()
    assert md.count("\n| ") == 10 and "rel. error" in md
    text = str(ridge_report).splitlines()
    assert text[1].startswith("strategy") and len({len(line) for line in text[1:3]}) == 1
    assert ridge_report.to_dict()["rows"][0]["strategy"] == "analytic"
    pytest.importorskip("matplotlib")
    ridge_report.plot(tmp_path / "conv.png")
    assert (tmp_path / "conv.png").stat().st_size > 1000


def test_finite_difference_reference_and_log_scale():
    X, y = regression_data(40, 3, seed=3)
    problem = bl.problems.LogisticRegression(X, np.sign(y))
    loss = bl.losses.LogisticLoss(X[:10], np.sign(y[:10]))
    report = bl.compare(problem, loss, 0.1, ["implicit", "unroll"], repeat=1, log_scale=True)
    assert report.reference == "finite_difference"
    _, g = bl.hypergradient(problem, loss, 0.1, "implicit")
    assert report.rows[0]["grad"][0] == pytest.approx(0.1 * float(g), rel=1e-12)
    assert report.rows[0]["error"] < 1e-7
    with pytest.raises(ValueError, match="budgets"):
        report.plot()
