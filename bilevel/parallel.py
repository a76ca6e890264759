"""Learning over many lower-level instances, mapped over a ``concurrent.futures`` executor.

An upper loss that sums over instances (cross-validation folds, tasks, images),
``L(theta) = sum_k w_k L_k(x_k*(theta), theta)``, needs one inner solve and one VJP per
instance. :class:`InstanceSum` holds the instances; :func:`map_instances` evaluates
``hypergradient`` on each through an executor chosen by the user, and :func:`sum_instances`
adds the results in instance order, whatever the order in which they finish. The executor
is anything with ``submit(fn, *args) -> Future``: ``None`` (serial, in this process), a
:class:`concurrent.futures.ProcessPoolExecutor` (use a ``spawn`` or ``forkserver``
context, see :func:`process_pool`), or a Dask ``distributed.Client`` (or its
``get_executor()``). Nothing in ``problems/`` or ``strategies/`` knows which.

Results are bitwise those of the serial run: every instance is computed by the same code
on the same inputs (a worker computes with one thread, as the serial run does under
:func:`limit_threads`), and the sum is taken here, in instance order.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from bilevel._threads import controller
from bilevel._types import as_tuple, like_structure

__all__ = ["InstanceSum", "limit_threads", "map_instances", "process_pool", "sum_instances",
           "sweep"]


@contextlib.contextmanager
def limit_threads(n):
    """Limit BLAS/OpenMP (threadpoolctl), torch and numba to ``n`` threads inside the block.

    The previous settings are restored on exit. One thread makes timings of small problems
    stable (no oversubscription) and per-instance results independent of the machine.

    Parameters
    ----------
    n : int or None
        Threads, ``>= 1``; None leaves every setting as it is.
    """
    if n is None:
        yield
        return
    import numba
    import torch

    n = int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    n_numba = min(n, numba.config.NUMBA_NUM_THREADS)    # numba's pool cannot grow
    old_torch, old_numba = torch.get_num_threads(), numba.get_num_threads()
    with controller().limit(limits=n):
        torch.set_num_threads(n)
        numba.set_num_threads(n_numba)
        try:
            yield
        finally:
            torch.set_num_threads(old_torch)
            numba.set_num_threads(old_numba)


def process_pool(max_workers=None):
    """Return a :class:`~concurrent.futures.ProcessPoolExecutor` that spawns its workers.

    Forking a process after numba's OpenMP layer has started can hang; ``spawn`` starts
    each worker afresh (it imports ``bilevel`` once, and numba's on-disk cache spares the
    compilation). Use it in a ``with`` block, under ``if __name__ == "__main__":`` in a
    script.
    """
    return ProcessPoolExecutor(max_workers=max_workers,
                               mp_context=multiprocessing.get_context("spawn"))


@dataclass(frozen=True)
class InstanceSum:
    """An upper loss summed over lower-level instances: ``sum_k w_k L_k(x_k*(theta), theta)``.

    Parameters
    ----------
    instances : sequence of (problem, loss)
        One lower-level problem and its upper loss per instance (e.g. the training and
        validation splits of one fold); all share ``theta``.
    weights : sequence of float, optional
        ``w_k``; default ``1 / K`` (the mean over instances).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> rng = np.random.default_rng(0)
    >>> folds = [(bl.problems.Ridge(rng.standard_normal((8, 3)), rng.standard_normal(8)),
    ...           bl.losses.Reconstruction(np.zeros(3))) for _ in range(3)]
    >>> total = bl.InstanceSum(folds)
    >>> value, grad = bl.hypergradient(total, None, 0.5, strategy="implicit")
    >>> parts = [bl.hypergradient(p, l, 0.5, strategy="implicit") for p, l in folds]
    >>> bool(np.isclose(value, np.mean([v for v, _ in parts])))
    True
    """

    instances: tuple
    weights: tuple | None = None

    def __post_init__(self):
        instances = tuple(tuple(pair) for pair in self.instances)
        if not instances or any(len(pair) != 2 for pair in instances):
            raise ValueError("instances must be a non-empty sequence of (problem, loss) pairs")
        object.__setattr__(self, "instances", instances)
        k = len(instances)
        weights = (1.0 / k,) * k if self.weights is None else tuple(map(float, self.weights))
        if len(weights) != k or not all(np.isfinite(weights)):
            raise ValueError(f"weights must be {k} finite numbers (one per instance), "
                             f"got {self.weights!r}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "_scattered", {})   # see _placed: data kept on a cluster

    def __len__(self):
        return len(self.instances)


def _one(pair, theta, strategy, log_scale, threads):
    """One instance's ``(value, grad parts, info)``: runs where the executor puts it."""
    from bilevel.api import hypergradient

    problem, loss = pair
    with limit_threads(threads):
        value, grad, info = hypergradient(problem, loss, theta, strategy, log_scale=log_scale,
                                          return_info=True)
    parts = tuple(np.asarray(g, dtype=np.float64) for g in as_tuple(grad))
    return float(value), parts, {"n_iter": int(info["solution"].n_iter),
                                 "strategy": info["strategy"]}


def _placed(total, executor):
    """Return the instances as the executor should receive them.

    A Dask ``Client`` (it has ``scatter``) receives each ``(problem, loss)`` once: the data
    are scattered to the workers at the first call and the futures kept with ``total``,
    so later calls (an outer loop) send only ``theta``. Other executors receive the pairs
    with every call.
    """
    scatter = getattr(executor, "scatter", None)
    if not callable(scatter):
        return total.instances
    cache = total._scattered
    if cache.get("client") is not executor:
        cache.clear()
        cache.update(client=executor, futures=scatter(list(total.instances), hash=False))
    return cache["futures"]


def map_instances(total, theta, strategy=None, *, executor=None, log_scale=False, threads=1):
    """Value and hypergradient of every instance of ``total``, through ``executor``.

    Parameters
    ----------
    total : InstanceSum
    theta : ndarray or tuple of ndarray
    strategy : Strategy, str or None
        As for :func:`bilevel.hypergradient`; the same for every instance.
    executor : concurrent.futures.Executor, distributed.Client or None
        Anything with ``submit(fn, *args)`` returning a future with ``result()``; None runs
        serially in this process.
    log_scale : bool
        Gradients with respect to ``log(theta)``.
    threads : int or None
        Threads per instance (see :func:`limit_threads`); None leaves them as they are.

    Returns
    -------
    list of (value, grad, info)
        In instance order; ``grad`` in theta's structure, ``info`` with ``n_iter`` (inner
        iterations) and ``strategy``.
    """
    return _run(total, [theta], strategy, executor, log_scale, threads)[0]


def sweep(total, thetas, strategy=None, *, executor=None, log_scale=False, threads=1):
    """``[(value, grad), ...]`` of ``total`` at each theta of ``thetas``, through ``executor``.

    A parameter sweep (a grid of hyperparameters) over many instances: every
    ``(theta, instance)`` pair is submitted at once, so the executor can run them all in
    parallel; each theta's sum is taken here, in instance order (bitwise the serial result).
    Arguments as for :func:`map_instances`.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> X = np.eye(2); y = np.array([1.0, 2.0])
    >>> total = bl.InstanceSum([(bl.problems.Ridge(X, y), bl.losses.Reconstruction(y))])
    >>> [round(v, 6) for v, _ in bl.parallel.sweep(total, [0.5, 1.0], "analytic")]
    [0.625, 1.111111]

    (``x* = y / (1 + 2 lam)``, so ``L = |2 lam y / (1 + 2 lam)|^2 / 2``: 5/8 and 10/9.)
    """
    thetas = list(thetas)
    if not thetas:
        raise ValueError("thetas must hold at least one theta")
    return [sum_instances(total, results)
            for results in _run(total, thetas, strategy, executor, log_scale, threads)]


def _run(total, thetas, strategy, executor, log_scale, threads):
    """Per theta, the per-instance ``(value, grad, info)``, all submitted at once."""
    if not isinstance(total, InstanceSum):
        raise TypeError(f"total must be a bilevel.InstanceSum, got {type(total).__name__}")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError("executor must have submit(fn, *args) (a concurrent.futures "
                        f"executor or a dask.distributed Client), got {type(executor).__name__}")
    if executor is None:        # one thread limit around the loop: it costs milliseconds
        with limit_threads(threads):
            done = [[_one(pair, theta, strategy, log_scale, None) for pair in total.instances]
                    for theta in thetas]
    else:
        pairs = _placed(total, executor)
        # A Dask client would reuse a finished task with equal arguments (pure=True);
        # every call computes afresh, as the serial run does.
        extra = {"pure": False} if pairs is not total.instances else {}
        futures = [[executor.submit(_one, pair, theta, strategy, log_scale, threads, **extra)
                    for pair in pairs] for theta in thetas]
        done = [[fut.result() for fut in row] for row in futures]
    return [[(value, like_structure(parts, theta), info) for value, parts, info in row]
            for theta, row in zip(thetas, done)]


def sum_instances(total, results):
    """``(sum_k w_k value_k, sum_k w_k grad_k)`` of :func:`map_instances`' results, in order."""
    value = 0.0
    acc = None
    for w, (v, g, _) in zip(total.weights, results):
        value += w * v
        parts = tuple(w * np.asarray(p) for p in as_tuple(g))
        acc = parts if acc is None else tuple(a + p for a, p in zip(acc, parts))
    return value, like_structure(acc, results[0][1])
