"""The public verbs: join a problem, a strategy and a loss.

``hypergradient`` computes ``dL/dtheta = (dx*/dtheta)^T grad_x L + grad_theta L`` at
``x* = argmin_x E(x, theta)``; everything else is built on the strategies' VJP.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from bilevel._autograd import pullback, scalar_tensor
from bilevel._memory import measure_memory
from bilevel._registry import (
    STRATEGIES,
    VALUE_STRATEGIES,
    applicable_strategies,
    check_applicable,
    check_problem,
    get_strategy,
    strategy_names,
)
from bilevel._report import CompareReport
from bilevel._types import (
    BatchSolution,
    ConvergenceWarning,
    LazyGradient,
    NotApplicable,
    SingularSystemError,
    as_tuple,
    like_structure,
)
from bilevel.losses import Loss, OptimalValue
from bilevel.parallel import InstanceSum, map_instances, sum_instances
from bilevel.problems.base import all_finite, check_array
from bilevel.strategies import FiniteDifference, Strategy, ValueFiniteDifference

__all__ = ["MinimizeResult", "compare", "hypergradient", "jacobian", "jvp", "minimize",
           "solve_batch", "value_gradient", "vjp", "vjp_batch"]


def _loss_terms(loss, x, theta, lazy=False):
    """``(value, grad_x, grad_theta)`` of ``loss`` at ``(x, theta)``; grad_theta may be None.

    With ``lazy``, a ready loss may give ``grad_x`` as a :class:`LazyGradient`.
    """
    if not callable(loss):
        raise TypeError(f"loss must be callable loss(x, theta) -> scalar, got {loss!r}")
    if isinstance(loss, Loss):
        terms = loss.value_and_lazy_grad if lazy else loss.value_and_grad
        value, gx, gtheta = terms(x, theta)
    else:
        parts = tuple(torch.tensor(np.asarray(t, np.float64), requires_grad=True)
                      for t in as_tuple(theta))
        x_t = torch.tensor(x, requires_grad=True)
        with torch.enable_grad():
            out = loss(x_t, like_structure(parts, theta))
        out = scalar_tensor(out, "loss")
        gx, *grads = pullback(out, (x_t, *parts), np.ones(out.shape))
        value = float(out.detach())
        gtheta = like_structure(tuple(grads), theta)
    lazy_gx = isinstance(gx, LazyGradient)
    if not (np.isfinite(value) and all_finite(gx.weights if lazy_gx else gx)):
        raise ValueError(f"loss or its gradient is not finite at x* (loss={value}); "
                         "check the loss and the data")
    if not lazy_gx:
        gx = np.asarray(gx, dtype=np.float64).reshape(x.shape)
    return float(value), gx, gtheta


def _add(a, b):
    """Sum of two gradients in the same theta structure (b may be None)."""
    if b is None:
        return a
    return like_structure(tuple(np.asarray(p) + np.asarray(q)
                                for p, q in zip(as_tuple(a), as_tuple(b))), a)


def _scale_log(grad, theta):
    """Chain rule to log theta: ``dL/dlog theta = theta * dL/dtheta``."""
    return like_structure(tuple(np.asarray(g) * np.asarray(t)
                                for g, t in zip(as_tuple(grad), as_tuple(theta))), grad)


def vjp(problem, theta, v, strategy=None, *, init=None, return_info=False):
    """``(dx*/dtheta)^T v``, in theta's structure.

    Parameters
    ----------
    problem : Problem
    theta : ndarray or tuple of ndarray
    v : ndarray, shaped like ``x*``
    strategy : Strategy, str or None
        None picks the best applicable strategy (``info["strategy"]`` says which).
    init : ndarray, optional
        Warm start of the inner solve.
    return_info : bool
        Also return the strategy's info dict, with ``strategy`` and ``solution``.
    """
    check_problem(problem)
    strat = get_strategy(strategy, problem)
    check_applicable(strat, problem)
    sol = problem.solve(theta, init=init)
    v = check_array(v, "v", shape=sol.x.shape)
    grad, info = strat.vjp(problem, sol, v)
    info = {**info, "strategy": strat.name, "solution": sol}
    return (grad, info) if return_info else grad


def jvp(problem, theta, dtheta, strategy=None, *, init=None, return_info=False):
    """Forward mode: ``(dx*/dtheta) dtheta``, shaped like ``x*``.

    Parameters
    ----------
    problem : Problem
    theta : ndarray or tuple of ndarray
    dtheta : ndarray or tuple of ndarray
        A tangent direction in theta's structure (a scalar broadcasts over its part).
    strategy : Strategy, str or None
        A strategy with a forward mode (``partial_smoothness``, ``finite_difference``);
        None picks the best applicable one.
    init : ndarray, optional
        Warm start of the inner solve.
    return_info : bool
        Also return the strategy's info dict, with ``strategy`` and ``solution``.
    """
    check_problem(problem)
    forward = [n for n in applicable_strategies(problem) if STRATEGIES[n].jvp is not Strategy.jvp]
    strat = get_strategy(strategy if strategy is not None else forward[0], problem)
    if type(strat).jvp is Strategy.jvp:
        raise NotApplicable(f"strategy {strat.name!r} has no forward mode (jvp); strategies "
                            f"with one that apply to this problem: {', '.join(forward)}")
    check_applicable(strat, problem)
    sol = problem.solve(theta, init=init)
    parts = as_tuple(sol.theta)
    dparts = as_tuple(dtheta)
    if len(dparts) != len(parts):
        raise ValueError(f"dtheta must have theta's structure ({len(parts)} part(s)), "
                         f"got {len(dparts)}")
    dparts = tuple(_check_tangent(d, p, k) for k, (d, p) in enumerate(zip(dparts, parts)))
    dx, info = strat.jvp(problem, sol, like_structure(dparts, sol.theta))
    info = {**info, "strategy": strat.name, "solution": sol}
    return (dx, info) if return_info else dx


def _check_tangent(d, part, k):
    """Part ``k`` of a tangent ``dtheta``: finite, a scalar or theta's part's shape."""
    d = check_array(d, f"dtheta (part {k})")
    if d.ndim and d.shape != np.shape(part):
        raise ValueError(f"dtheta (part {k}) must have theta's shape {np.shape(part)} (or be a "
                         f"scalar, broadcast), got {d.shape}")
    return np.broadcast_to(d, np.shape(part)).copy()


def hypergradient(problem, loss, theta, strategy=None, *, init=None, warm_start=None,
                  log_scale=False, return_info=False, executor=None):
    """Value and gradient of ``theta -> L(x*(theta), theta)``.

    Parameters
    ----------
    problem : Problem or InstanceSum
        An :class:`~bilevel.InstanceSum` sums over lower-level instances, each with its own
        loss (``loss`` is then None); their solves and VJPs go through ``executor``.
    loss : callable
        ``loss(x, theta) -> scalar`` in torch, or a ready loss from :mod:`bilevel.losses`;
        :class:`bilevel.losses.OptimalValue` makes it :func:`value_gradient`.
    theta : ndarray or tuple of ndarray
    strategy : Strategy, str or None
        None picks the best applicable strategy (``info["strategy"]`` says which).
    init : ndarray, optional
        Warm start of the inner solve.
    warm_start : ndarray, optional
        A previous ``info["warm_start"]``: warm start of the strategy's linear solve.
    log_scale : bool
        Return ``dL/dlog(theta) = theta * dL/dtheta`` instead.
    return_info : bool
        Also return info: the strategy's, plus ``strategy``, ``solution``, ``solve_time``
        (for an InstanceSum: ``strategy``, ``n_iter`` summed and ``instances``, the
        per-instance ``(value, grad, info)``).
    executor : concurrent.futures.Executor, distributed.Client or None
        For an InstanceSum: where its instances run (see :mod:`bilevel.parallel`); None
        runs them one after another here. Results do not depend on it.

    Returns
    -------
    value : float
    grad : ndarray or tuple of ndarray, in theta's structure
    info : dict, only with ``return_info``

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> X = np.eye(2); y = np.array([1.0, 2.0])
    >>> value, grad = bl.hypergradient(bl.problems.Ridge(X, y),
    ...                                bl.losses.Reconstruction(np.zeros(2)), 0.5)
    >>> round(float(grad), 6)   # x* = y/2 / (1/2 + lam): dL/dlam = -|x*|^2 / (1/2 + lam)
    -1.25
    """
    if isinstance(problem, InstanceSum):
        if loss is not None or init is not None or warm_start is not None:
            raise ValueError("with an InstanceSum, loss, init and warm_start must be None: "
                             "each instance carries its own loss and solves from its default")
        results = map_instances(problem, theta, strategy, executor=executor,
                                log_scale=log_scale)
        value, grad = sum_instances(problem, results)
        info = {"strategy": results[0][2]["strategy"], "solution": None, "instances": results,
                "n_iter": sum(r[2]["n_iter"] for r in results)}
        return (value, grad, info) if return_info else (value, grad)
    if executor is not None:
        raise ValueError("executor applies to an InstanceSum problem (many instances); "
                         "pass executor=None for a single problem")
    check_problem(problem)
    if warm_start is not None and not all(
            np.all(np.isfinite(np.asarray(w, dtype=np.float64))) for w in as_tuple(warm_start)):
        raise ValueError("warm_start contains NaN or Inf: pass a previous info['warm_start'] "
                         "(from a finite hypergradient) or None")
    if isinstance(loss, OptimalValue):     # L = p(theta): a value strategy
        value, grad, info = value_gradient(problem, theta, strategy, init=init,
                                           return_info=True)
        sol = info["solution"]
    else:
        strat = get_strategy(strategy, problem)
        check_applicable(strat, problem)
        sol = problem.solve(theta, init=init)
        value, gx, gtheta = _loss_terms(loss, sol.x, sol.theta, lazy=strat.reads_coordinates)
        grad, info = strat.vjp(problem, sol, gx, warm_start=warm_start)
        grad, info = _add(grad, gtheta), {**info, "strategy": strat.name}
    if log_scale:
        grad = _scale_log(grad, sol.theta)
    if not return_info:
        return value, grad
    return value, grad, {**info, "solution": sol,
                         "solve_time": sol.info.get("time", float("nan"))}


def jacobian(problem, theta, strategy=None, *, init=None):
    """Dense ``dx*/dtheta`` by one VJP per entry of ``x*``; for small problems.

    Returns an array of shape ``x.shape + theta.shape`` (a tuple of them for tuple theta).
    """
    check_problem(problem)
    strat = get_strategy(strategy, problem)
    check_applicable(strat, problem)
    sol = problem.solve(theta, init=init)
    parts = as_tuple(sol.theta)
    rows = [[] for _ in parts]
    basis = np.eye(sol.x.size)
    for i in range(sol.x.size):
        g, _ = strat.vjp(problem, sol, basis[i].reshape(sol.x.shape))
        for k, gk in enumerate(as_tuple(g)):
            rows[k].append(np.asarray(gk))
    out = tuple(np.stack(r).reshape(sol.x.shape + np.shape(p)) for r, p in zip(rows, parts))
    return like_structure(out, sol.theta)


def value_gradient(problem, theta, strategy=None, *, init=None, return_info=False):
    """Value and gradient of ``p(theta) = min_x E(x, theta)``.

    Value strategies (:mod:`bilevel.strategies.value_function`): ``"value_function"``, the
    dual solution (Mehmood and Ochs 2021), which exists when ``E`` is convex but not
    strongly convex in ``x`` and needs the problem's ``dual``; ``"envelope"``, Danskin's
    ``grad p(theta) = grad_theta E(x*, theta)`` for a smooth energy with a unique minimizer
    (on constrained problems, the Lagrangian's); ``"finite_difference"``, central
    differences of ``p``, the reference. ``strategy=None`` picks the first that applies in
    that order.

    Parameters
    ----------
    problem : Problem
    theta : ndarray or tuple of ndarray
    strategy : ValueStrategy, str or None
    init : ndarray, optional
        Warm start of the inner solve.
    return_info : bool
        Also return info (the strategy's, with ``strategy`` and ``solution``).

    Raises
    ------
    NotApplicable
        When the problem offers none of ``dual``, ``energy``, ``constraints``, or not what
        the strategy needs.
    """
    check_problem(problem)
    strat = get_strategy(strategy, problem, VALUE_STRATEGIES)
    check_applicable(strat, problem)
    sol = problem.solve(theta, init=init)
    value, grad, info = strat.value_gradient(problem, sol)
    info = {**info, "strategy": strat.name, "solution": sol}
    return (value, grad, info) if return_info else (value, grad)


def solve_batch(problem, parts, strategy=None):
    """Solve a batch of instances for ``strategy``'s batched VJP: a :class:`~bilevel.BatchSolution`.

    ``parts`` are theta's parts, each stacked along a first axis ``B``. When the strategy
    uses the problem's batched kernel (``strategy.batch_kernel``), every row is solved by
    the problem's batched solve; otherwise row by row, keeping each row's certificate.
    Either way every row is first validated by ``problem.check_batch``, the single solve's
    ``check_theta`` per row: a bad row raises a ValueError naming the row.
    """
    check_problem(problem)
    strat = get_strategy(strategy, problem)
    check_applicable(strat, problem)
    return solve_batch_checked(problem, parts, strat)


def solve_batch_checked(problem, parts, strat):
    """:func:`solve_batch` for a strategy object already checked to apply to ``problem``.

    What a layer calls on every forward pass, having checked its problem and strategy once.
    """
    parts = tuple(np.ascontiguousarray(p, dtype=np.float64) for p in parts)
    size = problem.check_batch(parts)      # one validation path, single and batched
    if strat.batch_kernel(problem) is not None:
        return problem.capabilities.batch.solve(*parts)
    template = parts if len(parts) > 1 else parts[0]
    solutions = tuple(problem.solve(like_structure(tuple(p[b] for p in parts), template))
                      for b in range(size))
    return BatchSolution(x=np.stack([s.x for s in solutions]), parts=parts,
                         solutions=solutions)


def vjp_batch(problem, batch, V, strategy=None):
    """VJPs of every row of a :func:`solve_batch` result: ``(grads, info)``.

    ``V`` is ``(B, *x.shape)``; ``grads`` a tuple over theta's parts of ``(B, ...)`` arrays,
    by ``strategy.vjp_batch`` (its batched kernel, or each row with every knob).
    """
    check_problem(problem)
    return vjp_batch_checked(problem, batch, V, get_strategy(strategy, problem))


def vjp_batch_checked(problem, batch, V, strat):
    """:func:`vjp_batch` for a strategy object already checked to apply to ``problem``."""
    V = np.ascontiguousarray(V, dtype=np.float64)
    if V.shape != batch.x.shape:
        raise ValueError(f"V must have the batch's solution shape {batch.x.shape}, "
                         f"got {V.shape}")
    grads, info = strat.vjp_batch(problem, batch, V)
    return grads, {**info, "strategy": strat.name}


def _resolve_list(strategies, problem, registry):
    if strategies is None:
        return [registry[n]() for n in strategy_names(registry)]
    return [get_strategy(s, problem, registry) for s in strategies]


def compare(problem, loss, theta, strategies=None, reference="auto", *, repeat=5,
            max_time=1.0, budgets=None, log_scale=False, executor=None):
    """Run several strategies on one instance against a reference hypergradient.

    Parameters
    ----------
    problem, loss, theta
        As for :func:`hypergradient`. With the loss :class:`bilevel.losses.OptimalValue`
        the rows are value strategies (:func:`value_gradient`). An
        :class:`~bilevel.InstanceSum` (``loss`` None) compares the strategies on the sum
        over its instances, each strategy's per-instance solves and VJPs mapped over
        ``executor``; a strategy must apply to every instance. Its rows report no peak
        memory (the work runs where the executor puts it), and ``budgets`` is refused.
    strategies : list of Strategy or str, optional
        Default: every registered strategy (of the loss's kind); inapplicable ones are
        reported as skipped.
    reference : "auto", str or Strategy
        "auto": the closed form (``analytic``) when the problem has one, else fourth-order
        finite differences (of ``x*``, or of ``p`` for the optimal value).
    repeat : int
        Timed runs per strategy, at most; the median is reported.
    max_time : float
        Seconds: a strategy's timed runs stop once they have taken this long together
        (after the first), so that a slow strategy is not run ``repeat`` times. Each row
        records its number of timed runs (``runs``).
    budgets : list of int, optional
        For iterative strategies, the relative error at each value of their budget knob
        (iterations, steps, terms), for :meth:`CompareReport.plot`.
    log_scale : bool
        Report gradients with respect to ``log(theta)``.
    executor : concurrent.futures.Executor, distributed.Client or None
        For an InstanceSum: where its instances run (see :mod:`bilevel.parallel`).

    Returns
    -------
    CompareReport
        One row per strategy: hypergradient, relative error, median time, peak memory,
        iterations, residual, or the reason it was skipped or failed.
    """
    if isinstance(problem, InstanceSum):
        return _compare_instances(problem, loss, theta, strategies, reference, repeat,
                                  max_time, budgets, log_scale, executor)
    if executor is not None:
        raise ValueError("executor applies to an InstanceSum problem (many instances); "
                         "pass executor=None for a single problem")
    check_problem(problem)
    _check_timing(repeat, max_time)
    solve_times = []
    for _ in range(repeat):
        sol = problem.solve(theta)
        solve_times.append(sol.info["time"])
    values = isinstance(loss, OptimalValue)
    registry = VALUE_STRATEGIES if values else STRATEGIES
    if not values:
        value, gx, gtheta = _loss_terms(loss, sol.x, sol.theta)

    def full(strat):
        if values:
            _, g, info = strat.value_gradient(problem, sol)
        else:
            g, info = strat.vjp(problem, sol, gx)
            g = _add(g, gtheta)
        return (_scale_log(g, sol.theta) if log_scale else g), info

    if reference == "auto":
        reference = (ValueFiniteDifference(order=4) if values
                     else "analytic" if "analytic_vjp" in problem.capabilities
                     else FiniteDifference(order=4))
    ref_strategy = get_strategy(reference, problem, registry)
    check_applicable(ref_strategy, problem)
    ref_grad, _ = full(ref_strategy)
    if values:
        value = ref_strategy.value_gradient(problem, sol)[0]
    ref_flat = np.concatenate([np.ravel(g) for g in as_tuple(ref_grad)])

    def error(g):
        return _relative_error(g, ref_flat)

    rows = []
    for strat in _resolve_list(strategies, problem, registry):
        row, out = _timed_row(strat, lambda s: check_applicable(s, problem), full, repeat,
                              max_time)
        rows.append(row)
        if out is None:
            continue
        g, info = out
        try:
            with measure_memory() as mem:
                full(strat)
        except RuntimeError:        # torch.func transforms refuse saved-tensor hooks
            with measure_memory(track_graph=False) as mem:
                full(strat)
        row.update(grad=[np.asarray(p).tolist() for p in as_tuple(g)], error=error(g),
                   peak_bytes=mem.peak, iterations=info.get("iterations"),
                   residual=info.get("residual"))
        if budgets is not None and strat.iterative:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)   # small budgets, by design
                row["trace"] = [(int(b), error(full(strat.with_budget(b))[0])) for b in budgets]
    return CompareReport(problem=problem.name, loss=float(value), reference=_label(ref_strategy),
                         reference_grad=[np.asarray(p).tolist() for p in as_tuple(ref_grad)],
                         solve_time=float(np.median(solve_times)),
                         log_scale=log_scale, rows=rows)


def _compare_instances(total, loss, theta, strategies, reference, repeat, max_time, budgets,
                       log_scale, executor):
    """:func:`compare` on an :class:`~bilevel.InstanceSum`, through ``executor``."""
    if loss is not None:
        raise ValueError("with an InstanceSum, loss must be None: each instance carries its "
                         "own loss")
    if budgets is not None:
        raise ValueError("budgets traces one instance: compare one of the InstanceSum's "
                         "instances with budgets, or drop budgets")
    _check_timing(repeat, max_time)
    problems = [p for p, _ in total.instances]
    for p in problems:
        check_problem(p)

    def applies(strat):
        for p in problems:
            check_applicable(strat, p)

    if reference == "auto":
        reference = ("analytic" if all("analytic_vjp" in p.capabilities for p in problems)
                     else FiniteDifference(order=4))
    ref_strategy = get_strategy(reference, problems[0], STRATEGIES)
    applies(ref_strategy)
    start = time.perf_counter()
    value, ref_grad = hypergradient(total, None, theta, ref_strategy, log_scale=log_scale,
                                    executor=executor)
    ref_time = time.perf_counter() - start
    ref_flat = np.concatenate([np.ravel(g) for g in as_tuple(ref_grad)])
    def run(strat):
        return hypergradient(total, None, theta, strat, log_scale=log_scale, return_info=True,
                             executor=executor)[1:]

    rows = []
    for strat in _resolve_list(strategies, problems[0], STRATEGIES):
        row, out = _timed_row(strat, applies, run, repeat, max_time)
        rows.append(row)
        if out is not None:
            g, info = out
            row.update(grad=[np.asarray(p).tolist() for p in as_tuple(g)],
                       error=_relative_error(g, ref_flat), peak_bytes=None,
                       iterations=info["n_iter"], residual=None)
    return CompareReport(problem=f"{len(problems)} instances of {problems[0].name}",
                         loss=float(value), reference=_label(ref_strategy),
                         reference_grad=[np.asarray(p).tolist() for p in as_tuple(ref_grad)],
                         solve_time=ref_time, log_scale=log_scale, rows=rows,
                         solve_label="reference, all instances")


def _check_timing(repeat, max_time):
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if not max_time >= 0:
        raise ValueError(f"max_time must be >= 0 seconds, got {max_time}")


def _timed_row(strat, applies, run, repeat, max_time):
    """Start a compare row: ``(row, (grad, info))``, ``run`` timed ``repeat`` times at most.

    The runs stop once they have taken ``max_time`` seconds together (after the first).

    A strategy that ``applies`` refuses gives a ``skipped`` row, one that meets a singular
    system a ``failed`` row; both come with None in place of the result.
    """
    row = {"strategy": strat.name, "label": _label(strat), "params": asdict(strat)}
    try:
        applies(strat)
    except NotApplicable as exc:
        return {**row, "skipped": str(exc), "missing": list(exc.missing)}, None
    times = []
    try:
        while not times or (len(times) < repeat and sum(times) < max_time):
            start = time.perf_counter()
            out = run(strat)
            times.append(time.perf_counter() - start)
    except SingularSystemError as exc:
        return {**row, "failed": f"{type(exc).__name__}: {exc}"}, None
    row.update(time=float(np.median(times)), runs=len(times))
    return row, out


def _relative_error(g, ref_flat):
    """``||g - ref|| / ||ref||`` over every part of a gradient."""
    flat = np.concatenate([np.ravel(p) for p in as_tuple(g)])
    return float(np.linalg.norm(flat - ref_flat) / max(np.linalg.norm(ref_flat), 1e-300))


def _label(strat):
    """Name the strategy, with the knobs that differ from their defaults."""
    changed = [f"{f.name}={getattr(strat, f.name)!r}" for f in fields(strat)
               if getattr(strat, f.name) != f.default]
    return f"{strat.name}({', '.join(changed)})" if changed else strat.name


@dataclass
class MinimizeResult:
    """Outcome of :func:`minimize`.

    Attributes
    ----------
    theta : ndarray or tuple of ndarray
        The last iterate.
    loss : float
        Upper loss at ``theta``.
    history : dict of lists
        Per outer step, at the iterate the step starts from (``theta[0]`` is ``theta0``):
        ``loss``, ``theta``, ``grad_norm``, ``inner_iterations``; and ``time`` elapsed at
        the step's end.
    strategy : str
        The strategy used.
    """

    theta: object
    loss: float
    strategy: str
    history: dict = field(default_factory=dict)

    @property
    def n_steps(self):
        """Outer steps taken."""
        return len(self.history.get("loss", ()))


_OPTIMIZERS = {"gd": (torch.optim.SGD, 0.1), "adam": (torch.optim.Adam, 0.1),
               "lbfgs": (torch.optim.LBFGS, 1.0)}


def minimize(problem, loss, theta0, strategy=None, *, optimizer="adam", steps=100, lr=None,
             log_scale=False, trainable=None, progress=True, callback=None, executor=None):
    """Minimize ``theta -> L(x*(theta), theta)`` by a first-order outer loop.

    Each outer step warm-starts the inner solve from the previous ``x*`` and the strategy's
    linear solve from the previous adjoint.

    Parameters
    ----------
    problem, loss, theta0
        As for :func:`hypergradient`; ``theta0`` is the starting point. ``problem`` may be
        an :class:`~bilevel.InstanceSum` (``loss`` None): the mean loss over instances,
        whose solves and VJPs run on ``executor`` (each from its default start).
    strategy : Strategy, str or None
    optimizer : {"gd", "adam", "lbfgs"}
        ``torch.optim`` SGD, Adam, or L-BFGS with a strong-Wolfe line search.
    steps : int
        Outer iterations (L-BFGS: iterations of its outer loop, each may evaluate more).
    lr : float, optional
        Learning rate (defaults: 0.1 for gd and adam, 1.0 for lbfgs).
    log_scale : bool
        Optimize ``log(theta)``: keeps positive hyperparameters positive.
    trainable : sequence of bool, optional
        For a tuple theta, which parts are optimized (default: all); the others stay at
        their ``theta0`` value, e.g. ``(False, True)`` learns only ``lam`` of
        ``TV2D``'s ``(f, lam)``. ``log_scale`` applies to the trainable parts.
    progress : bool or {"bar", "lines"}
        Report progress on stderr after every evaluation of the hypergradient: a tqdm bar
        (``"bar"``), or one line per outer step (``"lines"``, for logs and pipes). True
        picks the bar on a terminal and lines elsewhere; False is silent.
    callback : callable, optional
        ``callback(step, theta, loss, grad)``; returning True stops the loop.
    executor : concurrent.futures.Executor, distributed.Client or None
        Where an InstanceSum's instances run (see :mod:`bilevel.parallel`).

    Returns
    -------
    MinimizeResult

    Warns
    -----
    RuntimeWarning
        When the final upper loss is above the starting one: the steps overshoot. The
        message names the knobs to change (``lr``, ``optimizer``, ``strategy``).
    """
    many = isinstance(problem, InstanceSum)
    if many:
        if loss is not None:
            raise ValueError("with an InstanceSum, loss must be None: each instance carries "
                             "its own loss")
        members = [p for p, _ in problem.instances]
    elif executor is not None:
        raise ValueError("executor applies to an InstanceSum problem (many instances); "
                         "pass executor=None for a single problem")
    else:
        members = [problem]
    for member in members:
        check_problem(member)
    lead = members[0]
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if progress not in (True, False, "bar", "lines"):
        raise ValueError(f"progress must be True, False, 'bar' or 'lines', got {progress!r}")
    optimal_value = isinstance(loss, OptimalValue)    # L = p(theta): a value strategy
    strat = get_strategy(strategy, lead, VALUE_STRATEGIES if optimal_value else None)
    for member in members:
        check_applicable(strat, member)
    name = strat.name
    start_parts = lead.check_theta(theta0)
    trainable = (True,) * len(start_parts) if trainable is None else tuple(map(bool, trainable))
    if len(trainable) != len(start_parts) or not any(trainable):
        raise ValueError(f"trainable must give one bool per theta part ({len(start_parts)}), "
                         f"at least one True; got {trainable}")
    if log_scale and any(np.any(p <= 0) for p, t in zip(start_parts, trainable) if t):
        raise ValueError("log_scale=True needs theta0 > 0 everywhere it is trainable")
    params = [torch.tensor(np.log(p) if log_scale else p, requires_grad=True)
              for p, t in zip(start_parts, trainable) if t]
    cls, default_lr = _OPTIMIZERS[optimizer]
    lr = default_lr if lr is None else lr
    # One L-BFGS iteration per outer step, with room for its line search's evaluations.
    kwargs = ({"line_search_fn": "strong_wolfe", "max_iter": 1, "max_eval": 25}
              if optimizer == "lbfgs" else {})
    opt = cls(params, lr=lr, **kwargs)
    history = {"loss": [], "theta": [], "grad_norm": [], "inner_iterations": [], "time": []}
    state = {"init": None, "warm_start": None, "evaluations": 0}
    begin = time.perf_counter()
    report = _Progress(progress, steps, f"minimize ({name})")

    def current_theta():
        learned = iter(np.exp(p.detach().numpy()) if log_scale else p.detach().numpy().copy()
                       for p in params)
        values = tuple(next(learned) if t else fixed
                       for fixed, t in zip(start_parts, trainable))
        return like_structure(values, theta0)

    def closure():
        opt.zero_grad()
        theta = current_theta()
        if many:
            value, grad, info = hypergradient(problem, None, theta, strat, log_scale=log_scale,
                                              return_info=True, executor=executor)
            n_iter = info["n_iter"]
        else:
            value, grad, info = hypergradient(problem, loss, theta, strat, init=state["init"],
                                              warm_start=state["warm_start"],
                                              log_scale=log_scale, return_info=True)
            state.update(init=info["solution"].x, warm_start=info.get("warm_start"))
            n_iter = info["solution"].n_iter
        if "value" not in state:     # the step's first evaluation: at the current iterate
            state.update(value=value, grad=grad, theta=theta, n_iter=n_iter)
        state["evaluations"] += 1
        report.evaluation(value, state["evaluations"])
        for p, g in zip(params, (g for g, t in zip(as_tuple(grad), trainable) if t)):
            p.grad = torch.as_tensor(np.asarray(g, dtype=np.float64)).reshape(p.shape)
        return torch.tensor(value)

    try:
        for step in range(steps):
            for key in ("value", "grad", "theta", "n_iter"):
                state.pop(key, None)
            opt.step(closure)
            grad_norm = float(np.sqrt(sum(np.sum(np.square(g)) for g, t
                                          in zip(as_tuple(state["grad"]), trainable) if t)))
            history["loss"].append(state["value"])
            history["theta"].append(state["theta"])
            history["grad_norm"].append(grad_norm)
            history["inner_iterations"].append(state["n_iter"])
            history["time"].append(time.perf_counter() - begin)
            report.step(step, state["value"], grad_norm, state["evaluations"])
            if callback is not None and callback(step, state["theta"], state["value"],
                                                 state["grad"]):
                break
    finally:
        report.close()
    theta = current_theta()
    if many:
        value = hypergradient(problem, None, theta, strat, executor=executor)[0]
    elif optimal_value:
        value = value_gradient(problem, theta, strat, init=state["init"])[0]
    else:
        value = _loss_terms(loss, problem.solve(theta, init=state["init"]).x, theta)[0]
    start = history["loss"][0]
    if value > start:
        best = int(np.argmin(history["loss"]))
        others = ", ".join(o for o in _OPTIMIZERS if o != optimizer)
        warnings.warn(
            f"minimize made the upper loss worse: {start:.6g} at the start -> {value:.6g} "
            f"after {len(history['loss'])} steps of {optimizer} (lr={lr:g}, strategy "
            f"{name!r}); the steps overshoot: lower lr, or try optimizer={others} (lbfgs "
            "has a line search), or another strategy; the best iterate seen is "
            f"history['theta'][{best}] with loss {history['loss'][best]:.6g}",
            RuntimeWarning, stacklevel=2)
    return MinimizeResult(theta=theta, loss=value, strategy=name, history=history)


class _Progress:
    """Progress of :func:`minimize` on stderr: a tqdm bar, or one line per outer step."""

    def __init__(self, mode, steps, desc):
        import sys

        if mode is True:
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.steps, self.desc, self.bar = mode, steps, desc, None
        if mode == "bar":
            from tqdm.auto import tqdm

            # miniters=1, mininterval=0: redraw at every evaluation, however fast or slow.
            self.bar = tqdm(total=steps, desc=desc, miniters=1, mininterval=0)

    def evaluation(self, value, evaluations):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{value:.4g}", evals=evaluations)

    def step(self, step, value, grad_norm, evaluations):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{value:.4g}", grad=f"{grad_norm:.2g}",
                                 evals=evaluations, refresh=False)
            self.bar.update(1)
        elif self.mode == "lines":
            import sys

            print(f"{self.desc}: step {step + 1}/{self.steps}  loss {value:.6g}  "
                  f"grad {grad_norm:.2g}  evaluations {evaluations}", file=sys.stderr,
                  flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
