"""Numba-jitted inner solvers: pure functions on float64 arrays, no torch.

Every kernel is ``@njit(cache=True)`` and compiles on first call, never at import. Each
module owns its kernels (``KERNELS``) and compiles them on a tiny instance (``warmup()``);
problems import a kernel from its module (``from bilevel.solvers.tv import tv1d_condat``).
This package collects the lists (imported on first access): ``MODULES`` and ``KERNELS``
cover every module, and :func:`warmup` compiles ahead of time, by problem family
(:data:`FAMILIES`), in parallel processes if asked (``bilevel warmup`` on the command line).
"""

from __future__ import annotations

import importlib
import time

__all__ = ["FAMILIES", "KERNELS", "MODULES", "warmup"]

_MODULE_NAMES = ("bregman", "coordinate_descent", "logistic", "logistic_l1", "piecewise",
                 "pooling", "projections", "qp", "ridge", "tv", "tv2d")


def __getattr__(name):
    """``MODULES`` and ``KERNELS``, imported on first access.

    A problem imports only its own solver module: the first solve in a new process loads
    (or compiles) its kernels alone, not every module's dispatchers.
    """
    if name == "MODULES":
        return tuple(importlib.import_module(f"{__name__}.{m}") for m in _MODULE_NAMES)
    if name == "KERNELS":
        return tuple(kernel for module in __getattr__("MODULES") for kernel in module.KERNELS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: family -> (its solver modules, the problems and strategies they serve). No module is in
#: two families, so parallel workers never compile a kernel twice; the costliest come first,
#: so that they finish together.
FAMILIES = {
    "tv1d": (("tv",), "TV1D (orders 1-3, l1 and l2), bl.prox.TV1D"),
    "sparse": (("coordinate_descent", "logistic_l1"),
               "Lasso, ElasticNet, l1-penalized LogisticRegression"),
    "qp": (("qp",), "QP, NNLS, EqualityConstrainedLS"),
    "mirror": (("bregman",), "Bregman strategies, simplex problems, LeastAbsoluteDeviation, "
               "LinearProgram, MatrixGame, Composite mirrors"),
    "piecewise": (("piecewise",), "PiecewisePolynomial, ConnectedComponents"),
    "projections": (("projections",), "Projection (balls, sphere, simplex), softmax"),
    "pooling": (("pooling",), "RobustPooling"),
    "tv2d": (("tv2d",), "TV2D (denoising and deblurring)"),
    "logistic": (("logistic",), "l2-penalized LogisticRegression"),
    "ridge": (("ridge",), "Ridge"),
}


def _warm_family(name, parallel):
    """Compile (or load from the cache) one family's kernels; return the seconds taken."""
    start = time.perf_counter()
    for module in FAMILIES[name][0]:
        importlib.import_module(f"bilevel.solvers.{module}").warmup(parallel=parallel)
    return time.perf_counter() - start


def warmup(families=None, *, jobs=1, parallel=False, progress=False):
    """Compile the kernels of ``families`` ahead of time into numba's on-disk cache.

    Parameters
    ----------
    families : iterable of str, optional
        Keys of :data:`FAMILIES`; default all of them.
    jobs : int
        Families compiled at once, each in a fresh process (numba compiles on one core);
        the cache they write is what every later process loads.
    parallel : bool
        Also the ``prange`` kernels (``*_batched``), which only large batches run (a layer
        on small batches and every single solve use their serial twins); they cost about
        as much to compile as all the others.
    progress : bool
        A progress bar over the families (tqdm).

    Returns
    -------
    dict
        Seconds per family: compilation from an empty cache, loading from a warm one.
    """
    names = list(FAMILIES) if families is None else list(dict.fromkeys(families))
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"families must be among {', '.join(FAMILIES)}; got {unknown}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    from tqdm import tqdm

    bar = tqdm(total=len(names), desc="compiling", unit="family", disable=not progress)
    seconds = {}
    if jobs == 1 or len(names) == 1:
        for name in names:
            bar.set_postfix_str(name)
            seconds[name] = _warm_family(name, parallel)
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")   # no forked numba or torch state
        with ProcessPoolExecutor(min(jobs, len(names)), mp_context=context) as pool:
            futures = {pool.submit(_warm_family, name, parallel): name for name in names}
            for future in as_completed(futures):
                seconds[futures[future]] = future.result()
                bar.set_postfix_str(futures[future])
                bar.update()
    bar.close()
    return {name: seconds[name] for name in names}
