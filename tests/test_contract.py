"""The API promises, walked over the registry: every applicable (problem, strategy) pair
returns theta's structure, float64, finite, and agrees with the exact VJP (implicit
differentiation, or on the active manifold for non-smooth problems)."""

import inspect

import numpy as np
import pytest
import torch

import bilevel as bl
from bilevel._registry import (
    PROBLEMS,
    STRATEGIES,
    VALUE_STRATEGIES,
    applicable_strategies,
    requirement_sets,
)
from bilevel._types import Batch, Dual, Manifold, Mirror, Optimality, StepMap
from bilevel.problems import KKT

# Every registered class's representative instances (Problem.examples): curated so that each
# sits away from kinks (positive margins, positive multipliers, clear supports).
INSTANCES = {label: (problem, theta) for cls in PROBLEMS.values()
             for label, problem, theta in cls.examples()}
PAIRS = [(k, s) for k, (p, _) in INSTANCES.items() for s in applicable_strategies(p)]


def test_registry_covers_every_class():
    assert set(PROBLEMS) == {"ridge", "logistic", "smooth", "lasso", "elastic_net", "tv1d", "tv2d",
                              "piecewise_polynomial", "connected_components",
                              "constrained", "equality_constrained_ls", "qp", "nnls",
                              "simplex_ls", "segmentation", "matrix_game", "lad",
                              "linear_program", "robust_pooling", "projection",
                              "entropic_simplex", "composite", "image_prior"}
    assert set(STRATEGIES) == {"analytic", "implicit", "fixed_point", "unroll",
                               "partial_smoothness", "finite_difference",
                               "straight_through", "bregman"}
    assert set(VALUE_STRATEGIES) == {"value_function", "envelope", "finite_difference"}
    assert {k.split("-")[0] for k in INSTANCES} == set(PROBLEMS)


@pytest.mark.parametrize("key, name", PAIRS)
def test_vjp_contract_and_agreement_with_implicit(key, name):
    problem, theta = INSTANCES[key]
    shape = problem.solve(theta).x.shape
    v = np.linspace(-1, 1, int(np.prod(shape))).reshape(shape)
    strategy = STRATEGIES[name]()     # unroll: replays until x_n is within 1e-10 of x*
    # The disc mirror of isotropic TV has a sublinear tail (tests/strategies/test_bregman.py
    # measures it): the contract (structure, dtype, finite) on a step budget, without agreement.
    slow_tail = (key, name) == ("tv2d-identity", "bregman")
    if slow_tail:
        strategy = bl.strategies.BregmanUnroll(n_steps=2000, tol=None)
    g, info = bl.vjp(problem, theta, v, strategy, return_info=True)
    exact = ("implicit" if {"optimality", "constraints"} & problem.capabilities
             else "partial_smoothness" if "manifold" in problem.capabilities
             else "analytic" if "analytic_vjp" in problem.capabilities
             else "finite_difference")
    g_ref = bl.vjp(problem, theta, v, exact)
    assert isinstance(g, tuple) == isinstance(theta, tuple)
    for part, ref, t in zip(*(x if isinstance(x, tuple) else (x,) for x in (g, g_ref, theta))):
        assert part.shape == np.shape(t) and part.dtype == np.float64
        assert np.all(np.isfinite(part))
        if name == "straight_through" or slow_tail:
            continue    # the identity backward is biased by design: no agreement to check
        # Exact strategies to round-off; FD to ~1e-9; unroll once x_n is within 1e-10 of x*.
        np.testing.assert_allclose(part, ref, rtol=1e-6, atol=1e-10)
    assert info["strategy"] == name and "time" in info and "iterations" in info


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_not_applicable_text(name):
    class Empty(bl.problems.Problem):
        name = "empty"

    cls = STRATEGIES[name]
    if not cls.requires:
        pytest.skip(f"{name} requires nothing")
    with pytest.raises(bl.NotApplicable) as exc:
        cls().vjp(Empty(), None, None)
    text = str(exc.value)
    assert name in text and all(c in text for req in requirement_sets(cls) for c in req)
    assert "finite_difference" in text                  # always names what would work


def test_public_names_are_documented():
    modules = [bl, bl.problems, bl.strategies, bl.losses, bl.testing]
    for module in modules:
        assert module.__doc__, module.__name__
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_docs_matrix_is_generated_from_the_registry():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "docs" / "make_matrix.py"
    out = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, f"docs/matrix.md is stale: run python {script}\n{out.stdout}"


def test_check_vjp_fails_on_a_wrong_strategy():
    from bilevel.testing import check_vjp

    problem, lam = INSTANCES["logistic"]
    with pytest.raises(AssertionError, match="unroll VJP differs from finite_difference"), \
            pytest.warns(bl.ConvergenceWarning, match="n_steps=1"):
        check_vjp(problem, lam, bl.strategies.Unroll(n_steps=1))
    assert check_vjp(problem, lam, "implicit", rtol=1e-7) < 1e-7


@pytest.mark.parametrize("key", sorted(INSTANCES))
def test_what_each_problem_declares_is_what_it_provides(key):
    """Every declared capability has its declared type and does what its contract says."""
    problem, theta = INSTANCES[key]
    caps = problem.capabilities
    sol = problem.solve(theta)
    parts = bl._types.as_tuple(sol.theta)
    tensors = tuple(torch.from_numpy(np.asarray(p, dtype=np.float64)) for p in parts)
    theta_t = tensors if isinstance(sol.theta, tuple) else tensors[0]
    x = torch.from_numpy(np.asarray(sol.x, dtype=np.float64))
    scale = max(1.0, float(np.abs(sol.x).max()))
    assert caps.names == frozenset(caps) and all(name in caps for name in caps.names)
    if caps.optimality is not None:
        assert isinstance(caps.optimality, Optimality)
        residual = caps.optimality.residual(x, theta_t)
        assert residual.shape == x.shape
        assert float(residual.detach().abs().max()) <= 1e-6 * scale      # F(x*, theta) = 0
        if caps.optimality.fast_path:
            H = caps.optimality.hessian(sol)
            assert H.shape == (sol.x.size, sol.x.size)
    if caps.step is not None:
        assert isinstance(caps.step, StepMap)
        z = torch.from_numpy(np.asarray(caps.step.at_solution(sol), dtype=np.float64))
        z_next = caps.step.step(z, theta_t)
        # the solution is the step map's fixed point, to the solver's accuracy
        assert float((z_next - z).detach().abs().max()) <= 1e-6 * max(1.0, float(z.abs().max()))
        np.testing.assert_allclose(caps.step.read(z, theta_t).numpy(), sol.x, atol=1e-12)
        assert np.shape(caps.step.start(parts)) == np.shape(z)
    if caps.energy is not None:
        assert caps.energy(x, theta_t).numel() == 1
    if caps.constraints is not None:
        assert isinstance(caps.constraints, KKT)
        system = caps.constraints.system(sol)
        assert system.n_x == sol.x.size and system.size >= system.n_x
        assert np.shape(system.matvec(np.ones(system.size))) == (system.size,)
    for name, kind in (("manifold", Manifold), ("mirror", Mirror), ("dual", Dual)):
        fn = getattr(caps, name)
        if fn is not None:
            assert isinstance(fn(sol), kind), name
    if caps.manifold is not None and caps.manifold(sol).coordinates is not None:
        manifold = caps.manifold(sol)           # restrict selects these coordinates
        v = np.random.default_rng(0).standard_normal(sol.x.shape)
        np.testing.assert_array_equal(manifold.restrict(v), v.ravel()[manifold.coordinates])
    if caps.analytic_vjp is not None:
        grads = caps.analytic_vjp(sol, np.ones(sol.x.shape))
        assert [np.shape(g) for g in grads] == [np.shape(p) for p in parts]
    assert caps.straight_through in (True, False)
    if caps.batch is not None:
        assert isinstance(caps.batch, Batch)
        assert len(caps.batch.theta_ndim) == len(parts)
        one_instance = caps.batch.theta_ndim == tuple(np.ndim(p) for p in parts)
        if caps.batch.solve is not None and one_instance:
            rows = tuple(np.stack([p, p]) for p in parts)
            batch = caps.batch.solve(*rows)
            np.testing.assert_allclose(batch.x, np.stack([sol.x, sol.x]), atol=1e-10)
            for kernel in (caps.batch.analytic_vjp, caps.batch.manifold_vjp):
                if kernel is not None:
                    V = np.ones(batch.x.shape)
                    args = (batch, V) if kernel is caps.batch.analytic_vjp else (batch, V, False)
                    grads, margins = kernel(*args)
                    assert [np.shape(g) for g in grads] == [np.shape(r) for r in rows]
                    assert np.shape(margins) == (2,)


def test_every_problem_class_has_examples_covering_its_variants():
    from bilevel._registry import problem_variants

    labels = [label for label, _ in problem_variants()]
    assert {"tv1d-l1", "tv1d-l2", "logistic", "logistic-l1", "smooth-tuple",
            "smooth-no_step", "qp-c", "qp-tuple", "projection-l1_ball",
            "projection-l2_sphere", "projection-linf_ball"} <= set(labels)
    # TV1D's l1 orders share one capability set (every order has its closed form): one row,
    # with an example of each order walked by the contract tests.
    assert {"tv1d-order2", "tv1d-order3"} <= set(INSTANCES) and "tv1d-order2" not in labels
    assert all(PROBLEMS[name].examples() for name in PROBLEMS)


def test_old_style_capability_declaration_is_refused():
    with pytest.raises(TypeError, match="offers"):
        class OldStyle(bl.problems.Problem):
            capabilities = frozenset({"step"})


EMPTY_CELLS = [(key, registry_name, s) for key, (p, _) in INSTANCES.items()
               for registry_name, registry in (("vjp", STRATEGIES), ("value", VALUE_STRATEGIES))
               for s in sorted(set(registry) - set(applicable_strategies(p, registry)))]


@pytest.mark.parametrize("key, table, name", EMPTY_CELLS)
def test_every_strategy_that_does_not_apply_has_the_problems_reason(key, table, name):
    from bilevel._registry import why_not_applicable

    problem, theta = INSTANCES[key]
    strategy = (STRATEGIES if table == "vjp" else VALUE_STRATEGIES)[name]
    why = why_not_applicable(strategy, problem)
    assert why, f"{key}: {name} does not apply and {type(problem).__name__} gives no reason"
    missing = sorted(requirement_sets(strategy)[0] - problem.capabilities.names)
    assert why.startswith(f"no {missing[0]}: ")
    assert "not implemented" not in why
    # The reason reaches the user in NotApplicable's text.
    sol = problem.solve(theta)
    with pytest.raises(bl.NotApplicable) as exc:
        if table == "vjp":
            strategy().vjp(problem, sol, np.ones(np.shape(sol.x)))
        else:
            strategy().value_gradient(problem, sol)
    assert why in str(exc.value)


def test_why_not_explains_only_what_is_not_offered():
    for key, (problem, _) in INSTANCES.items():
        caps = problem.capabilities
        assert not set(caps.why_not) & caps.names, key
    with pytest.raises(ValueError, match="offered"):
        bl.problems.Capabilities(energy=lambda x, t: x.sum(), why_not={"energy": "no"})


def test_matrix_fails_loudly_on_a_cell_without_a_reason(monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "make_matrix.py"
    spec = importlib.util.spec_from_file_location("make_matrix", path)
    make_matrix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_matrix)

    class Reasonless(bl.problems.Problem):
        name = "reasonless"

        def offers(self):
            return bl.problems.Capabilities(energy=lambda x, t: (x * x).sum())

        @classmethod
        def examples(cls):
            return [("reasonless", cls(), np.zeros(1))]

    monkeypatch.setitem(PROBLEMS, "reasonless", Reasonless)
    with pytest.raises(make_matrix.MissingReason, match="reasonless x analytic"):
        make_matrix.render()
    assert make_matrix.main(["--check"]) == 2
    assert "reasonless x partial_smoothness" in capsys.readouterr().err


def test_list_why_prints_every_reason(capsys):
    from bilevel._registry import problem_variants, strategy_names, why_not_applicable
    from bilevel.cli import main

    assert main(["list", "--why"]) == 0
    out = capsys.readouterr().out
    table, reasons = out.split("why not (")
    assert "lasso" in table and "no manifold: " not in table
    for label, problem in problem_variants():
        for name in strategy_names():
            if name not in applicable_strategies(problem):
                why = why_not_applicable(STRATEGIES[name], problem)
                assert f"  {name}: {why or '(no reason given)'}" in reasons, (label, name)
    assert main(["list"]) == 0
    assert "why not" not in capsys.readouterr().out
