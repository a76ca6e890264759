"""The Deep Declarative Networks examples: their layers' gradients and their --quick runs.

``examples/ddn_point_clouds.py`` (robust pooling in a PointNet) and
``examples/ddn_projections.py`` (Lp sphere and ball projections before a classifier): the
pooling and projection layers, alone and inside the examples' models, pass
``torch.autograd.gradcheck`` in float64; ours agree with the DDN-style reference layers;
each example's ``--quick`` mode prints its tables with the expected rows.
"""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))          # the examples share _ddn_training


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pc = load("ddn_point_clouds")
pj = load("ddn_projections")


# --- point clouds: robust pooling ---------------------------------------------------------
def features(seed=0, shape=(2, 3, 16)):
    """Gaussian features with a fifth of the points outliers, float64."""
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(*shape, generator=gen, dtype=torch.float64)
    outlier = torch.rand(*shape, generator=gen) < 0.2
    return torch.where(outlier, 4 * torch.rand(*shape, generator=gen, dtype=torch.float64) - 2, f)


@pytest.mark.parametrize("name", pc.POOLINGS)
def test_pooling_layer_passes_gradcheck(name):
    f = features().requires_grad_()
    # Central differences with eps 1e-6 against the analytic VJP; the data sit away from
    # the kinks of Huber and the truncated quadratic (the layer would warn, an error here).
    assert torch.autograd.gradcheck(pc.pooling_layer(name), (f,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", pc.POOLINGS)
def test_point_net_passes_gradcheck_through_its_pooling(name):
    torch.manual_seed(0)
    model = pc.PointNet(pc.pooling_layer(name)).double().eval()
    rng = np.random.default_rng(0)
    X, _ = pc.point_clouds(1, 16, rng)
    points = torch.tensor(pc.with_outliers(X[::5], 0.2, rng), dtype=torch.float64,
                          requires_grad=True)                         # 2 clouds of 16
    assert torch.autograd.gradcheck(model, (points,), eps=1e-6, atol=1e-5)


def test_point_clouds_are_in_the_unit_ball_with_the_requested_outliers():
    rng = np.random.default_rng(1)
    X, y = pc.point_clouds(3, 50, rng)
    assert X.shape == (30, 50, 3) and X.dtype == np.float32
    assert np.bincount(y).tolist() == [3] * 10
    assert np.linalg.norm(X, axis=2).max() <= 1.05                 # jitter 0.01 beyond 1
    Xo = pc.with_outliers(X, 0.2, rng)
    changed = np.any(Xo != X, axis=2).sum(axis=1)
    assert np.all(changed == 10) and np.linalg.norm(Xo, axis=2).max() <= 1.05


# --- projections ------------------------------------------------------------------------
def rows_around_the_radius(name, seed=0, shape=(6, 8)):
    """Rows whose norm is spread on both sides of the radius; ``(x, radius)``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    norms = x.norm(p=pj.ORD[name.split("_")[0]], dim=1)
    return x, float(norms.mean())


@pytest.mark.parametrize("name", pj.SETS)
def test_projection_layer_passes_gradcheck_and_agrees_with_the_ddn_style_layer(name):
    x, r = rows_around_the_radius(name)
    x.requires_grad_()
    ours, ddn = pj.projection_layer(name, r), pj.DDNProjection(name, r)
    assert torch.autograd.gradcheck(ours, (x,), eps=1e-6, atol=1e-6)
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, y_ddn = ours(x), ddn(x)
    g, = torch.autograd.grad(y, x, v)
    g_ddn, = torch.autograd.grad(y_ddn, x, v)
    # Two implementations of the same closed forms: round-off.
    torch.testing.assert_close(y, y_ddn, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ddn, rtol=1e-12, atol=1e-12)
    # On the sphere, or inside the ball.
    norm = y.norm(p=pj.ORD[name.split("_")[0]], dim=1)
    if name.endswith("sphere"):
        torch.testing.assert_close(norm, torch.full_like(norm, r))
    else:
        assert torch.all(norm <= r * (1 + 1e-12))


def test_linf_sphere_is_the_nearest_point_of_the_sphere():
    # Brute force: the nearest point of ||u||_inf = r has some |u_k| = r; for each k the
    # best such u is x clipped to the ball with u_k = +-r.
    x, r = rows_around_the_radius("linf_sphere", seed=2, shape=(20, 5))
    y = pj.LinfSphere(r)(x)
    for xi, yi in zip(x, y):
        cands = []
        for k in range(xi.numel()):
            for s in (-r, r):
                u = xi.clamp(-r, r).clone()
                u[k] = s
                cands.append(float((u - xi).norm()))
        assert abs(float((yi - xi).norm()) - min(cands)) <= 1e-12


@pytest.mark.parametrize("name", ("none", "bn") + pj.SETS)
def test_digits_cnn_passes_gradcheck_through_its_projection(name):
    torch.manual_seed(0)
    images = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator()
                         .manual_seed(3))
    r = None
    if name in pj.SETS:
        with torch.no_grad():
            norms = pj.DigitsCNN().double().eval().features(images).norm(
                p=pj.ORD[name.split("_")[0]], dim=1)
        # Balls: a radius the two feature rows straddle. Spheres: below both norms, since
        # the features have exact zeros (dead ReLUs), whose sign is not unique when a row
        # inside the l1 ball is pushed out to its sphere (the layer would warn).
        r = float(norms.mean() if name.endswith("ball") else 0.7 * norms.min())
    torch.manual_seed(0)
    model = pj.make_model(name, r).double().eval()
    assert torch.autograd.gradcheck(model, (images.requires_grad_(),), eps=1e-6, atol=1e-6)


# --- the --quick runs ------------------------------------------------------------------------
def table_rows(text, title):
    """The first cells of the markdown table printed after the line starting ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 3:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].strip())
    return rows


def test_point_clouds_quick_prints_both_tables_and_the_time_ratio(tmp_path, capsys):
    table2, table3, times = pc.main(["--quick", "--quiet", "--out", str(tmp_path / "f.png")])
    out = capsys.readouterr().out
    assert table_rows(out, "Table II: trained and tested") == ["0", "50"]
    assert table_rows(out, "Table III: trained without") == ["0", "10", "50"]
    header = re.search(r"^\| outliers % \|(.*)\|$", out, re.M).group(1)
    assert [c.strip() for c in header.split("|")] == list(pc.POOLINGS)
    assert len(re.findall(r"ratio \d+\.\d+x", out)) == 2 and set(times) == {"PH", "W"}
    accuracies = [acc for cells in table3.values() for runs in cells.values()
                  for acc, _ in runs]
    assert all(0 <= a <= 100 for a in accuracies)
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "f.png").stat().st_size > 0


def test_projections_quick_prints_table_iv_and_the_time_ratios(tmp_path, capsys):
    argv = ["--quick", "--quiet", "--out", str(tmp_path / "f.png")]
    results, scales, times, alone = pj.main(argv)
    out = capsys.readouterr().out
    assert table_rows(out, "Table IV") == ["no projection", "batch norm, no projection",
                                           *pj.SETS]
    assert len(re.findall(r"ratio \d+\.\d+x", out)) == 2 * len(pj.SETS)
    assert set(times) == set(alone) == set(pj.SETS)
    assert all(len(results[m]) == 1 for m in pj.MODELS)
    assert scales[0]["l1_ball"] > scales[0]["l2_ball"] > scales[0]["linf_ball"] > 0


@pytest.mark.parametrize("module", [pc, pj], ids=["point_clouds", "projections"])
def test_help_runs_nothing(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0 and "--quick" in capsys.readouterr().out
