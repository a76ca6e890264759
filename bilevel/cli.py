"""The ``bilevel`` command: compare, minimize, list what applies, warm up the kernel cache."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
import warnings

import numpy as np

__all__ = ["main"]

# problem name -> (the data set it is meant for, default lam)
_TASKS = {"logistic": ("breast_cancer", 1e-2), "ridge": ("diabetes", 1e-1),
          "lasso": ("diabetes", 1.0), "logistic_l1": ("breast_cancer", 1e-2)}
_DEFAULT_BUDGETS = (1, 2, 5, 10, 20, 50, 100, 200)
_PROBLEM_HELP = (
    "what to differentiate: "
    + ", ".join(f"{name} (on {data}, default --theta {lam:g})"
                for name, (data, lam) in _TASKS.items())
    + "; or any problem of `bilevel list` by name or example label (e.g. tv1d, tv1d-order2, "
    "projection-simplex), at its example theta, with the upper loss ||x - t||^2/2 for a "
    "fixed random t; or MODULE:FACTORY, your own: FACTORY() returns (problem, loss, theta)")


class UsageError(Exception):
    """Bad usage: reported in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """One-line errors with the remedy, exit status 2."""

    def error(self, message):
        """Print ``prog: error: message`` in one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except where a help text says them itself."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0 or (kind is float and not np.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a positive {kind.__name__}, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _task(args):
    """``(label, problem, loss, theta, log_scale)`` for ``--problem`` and ``--theta``."""
    from bilevel import losses, problems
    from bilevel.datasets import load, split_standardize

    name = args.problem
    if name in _TASKS:
        dataset = args.dataset or _TASKS[name][0]
        if name.startswith("logistic") and dataset != "breast_cancer":
            raise UsageError(f"--problem {name} needs labels in {{-1, +1}}: "
                             "use --dataset breast_cancer")
        theta = _TASKS[name][1] if args.theta is None else args.theta
        if not theta > 0:
            raise UsageError(f"--theta is the regularization lam of {name} and must be > 0, "
                             f"got {theta:g}")
        X, y = load(dataset)
        X_train, y_train, X_val, y_val = split_standardize(X, y)
        if name.startswith("logistic"):
            penalty = "l1" if name == "logistic_l1" else "l2"
            return (name, problems.LogisticRegression(X_train, y_train, penalty=penalty),
                    losses.LogisticLoss(X_val, y_val), theta, True)
        y_mean = y_train.mean()
        model = problems.Lasso if name == "lasso" else problems.Ridge
        return (name, model(X_train, y_train - y_mean),
                losses.SquaredError(X_val, y_val - y_mean), theta, True)
    if args.dataset is not None:
        raise UsageError(f"--dataset applies to the problems {', '.join(_TASKS)} only, "
                         f"not to {name!r}: drop it")
    if ":" in name:
        label, problem, loss, theta = _factory(name)
    else:
        from bilevel._types import as_tuple

        label, problem, theta = _example(name)
        loss = _SeededTarget()
        if args.theta is not None:
            if len(as_tuple(theta)) != 1 or np.ndim(as_tuple(theta)[0]) != 0:
                raise UsageError(f"--theta sets a scalar theta, but {label} takes "
                                 f"{len(as_tuple(theta))} part(s) of shapes "
                                 f"{[np.shape(p) for p in as_tuple(theta)]}: give it through "
                                 "--problem MODULE:FACTORY")
    if args.theta is not None:
        theta = args.theta
    return label, problem, loss, theta, False


class _SeededTarget:
    """``||x - t||^2 / 2`` for a fixed standard normal ``t`` (seed 0) shaped like ``x``."""

    def _target(self, shape):
        return np.random.default_rng(0).standard_normal(shape)

    def __call__(self, x, theta=None):
        import torch

        d = x - torch.as_tensor(self._target(tuple(x.shape)), dtype=x.dtype)
        return 0.5 * (d * d).sum()


def _example(name):
    from bilevel._registry import PROBLEMS

    labels = []
    for key, cls in PROBLEMS.items():
        examples = cls.examples()
        for label, problem, theta in examples:
            if name in (label, key):
                return label, problem, theta
            labels.append(label)
    names = ", ".join([*_TASKS, *(k for k in PROBLEMS if k not in _TASKS)])
    raise UsageError(f"--problem {name!r} is not a problem: use one of {names}, an example "
                     f"label ({', '.join(labels)}), or MODULE:FACTORY")


def _factory(spec):
    module, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--problem {spec}: cannot load {attr!r} from module {module!r} "
                         f"({exc}); is the module on PYTHONPATH?") from exc
    out = factory()
    if not (isinstance(out, tuple) and len(out) == 3):
        raise UsageError(f"--problem {spec}: {attr}() must return (problem, loss, theta), "
                         f"got {type(out).__name__}")
    return (spec, *out)


def _strategies(text):
    if text == "all":
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UsageError(f"--strategies {text!r} names no strategy: give comma-separated "
                         "names (see `bilevel list`) or 'all'")
    return names


def _compare(args):
    import bilevel as bl
    from bilevel._report import require_matplotlib
    from bilevel.parallel import limit_threads

    if args.budgets is not None and not args.plot:
        raise UsageError("--budgets sets the budgets traced for --plot: add --plot PNG, "
                         "or drop --budgets")
    if args.plot:
        try:
            require_matplotlib()     # before any computation
        except ImportError as exc:
            raise UsageError(f"--plot: {exc}") from exc
    strategies = _strategies(args.strategies)
    if strategies is not None:
        from bilevel._registry import STRATEGIES

        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown:
            raise UsageError(f"--strategies: unknown {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(STRATEGIES)}")
    label, problem, loss, theta, log_scale = _task(args)
    with limit_threads(args.threads):
        report = bl.compare(problem, loss, theta, strategies=strategies,
                            repeat=args.repeat, max_time=args.max_time,
                            log_scale=log_scale and not args.linear,
                            budgets=(args.budgets or list(_DEFAULT_BUDGETS)) if args.plot
                            else None)
    # A skipped row shows "skipped: needs <missing>": never with an empty reason.
    rows = [row if row.get("missing") or "skipped" not in row
            else {**row, "missing": [row["skipped"].split("needs ", 1)[-1] or "(no reason)"]}
            for row in report.rows]
    report = dataclasses.replace(report, problem=label, rows=rows)
    if args.format == "markdown":
        print(report.to_markdown())
    elif args.format == "json":
        print(report.to_json(indent=2))
    else:
        print(report)
    if args.plot:
        report.plot(args.plot)
        print(f"convergence plot written to {args.plot}")
    return 0


def _minimize(args):
    import bilevel as bl
    from bilevel.parallel import limit_threads

    if args.strategy is not None:
        from bilevel._registry import STRATEGIES

        if args.strategy not in STRATEGIES:
            raise UsageError(f"--strategy: unknown {args.strategy!r}; known: "
                             f"{', '.join(STRATEGIES)}")
    label, problem, loss, theta0, log_scale = _task(args)
    with limit_threads(args.threads):
        result = bl.minimize(problem, loss, theta0, strategy=args.strategy,
                             optimizer=args.optimizer, steps=args.steps, lr=args.lr,
                             log_scale=log_scale, progress=not args.quiet)
    h = result.history
    print(f"{label}: strategy {result.strategy}, optimizer {args.optimizer}, "
          f"{result.n_steps} steps")
    kind = "validation" if label in _TASKS else "upper"
    print(f"{kind} loss {h['loss'][0]:.6g} at theta={float(np.ravel(h['theta'][0])[0]):.4g}"
          f" -> {result.loss:.6g} at theta={float(np.ravel(result.theta)[0]):.4g}")
    return 0


def _list(args):
    from bilevel._registry import (
        STRATEGIES,
        applicable_strategies,
        problem_variants,
        strategy_names,
        why_not_applicable,
    )

    names = strategy_names()
    variants = problem_variants()
    width = max(len(label) for label, _ in variants) + 2
    print("problem".ljust(width) + "  ".join(names))
    for label, problem in variants:
        ok = set(applicable_strategies(problem))
        cells = [("yes" if n in ok else "-").ljust(len(n)) for n in names]
        print(label.ljust(width) + "  ".join(cells).rstrip())
    print("\n(one row per capability set: a problem whose capabilities depend on its "
          "constructor arguments has a row per variant; Smooth offers 'step' with step_size)")
    if args.why:
        print("\nwhy not (the problem's reason for the capability the strategy needs):")
        for label, problem in variants:
            ok = set(applicable_strategies(problem))
            missing = [n for n in names if n not in ok]
            if missing:
                print(f"\n{label}")
            for n in missing:
                why = why_not_applicable(STRATEGIES[n], problem)
                print(f"  {n}: {why or '(no reason given)'}")
    return 0


def _warmup(args):
    from bilevel.solvers import FAMILIES, warmup

    if args.list:
        width = max(map(len, FAMILIES)) + 2
        for name, (_, served) in FAMILIES.items():
            print(f"{name.ljust(width)}{served}")
        return 0
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        raise UsageError(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} "
                         f"{', '.join(unknown)}; choose among {', '.join(FAMILIES)} "
                         "(bilevel warmup --list)")
    start = time.perf_counter()
    seconds = warmup(args.families or None, jobs=args.jobs, parallel=args.parallel,
                     progress=not args.quiet)
    for name, s in seconds.items():
        print(f"{name:<12} {s:7.1f} s")
    print(f"{'total':<12} {time.perf_counter() - start:7.1f} s wall, {args.jobs} job(s); "
          "later processes load these kernels from numba's disk cache")
    return 0


def _version():
    try:
        from importlib.metadata import version

        return version("bilevel")
    except Exception:           # not installed: the source tree's version
        from bilevel import __version__

        return __version__


def _parser():
    parser = _Parser(prog="bilevel", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"bilevel {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--problem", default="logistic", metavar="NAME", help=_PROBLEM_HELP
                        + " (default: logistic)")
    common.add_argument("--dataset", choices=("breast_cancer", "diabetes"),
                        help="bundled scikit-learn data set (default: the problem's own)")
    common.add_argument("--theta", type=float,
                        help="theta (a scalar): lam of the data-set problems (default: the "
                        "problem's, see --problem), or a scalar theta of an example")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error instead of one line")

    p = sub.add_parser("compare", parents=[common], formatter_class=_Formatter,
                       help="hypergradient of the upper loss by every strategy")
    p.add_argument("--strategies", default="all", help="comma-separated names, or 'all'")
    p.add_argument("--repeat", type=_positive(int), default=3,
                   help="timed runs per strategy (median), at most")
    p.add_argument("--max-time", type=_positive(float), default=1.0, metavar="SECONDS",
                   help="a strategy's timed runs stop once they have taken this long")
    p.add_argument("--threads", type=_positive(int), default=1,
                   help="BLAS, torch and numba threads during the run (one keeps timings of "
                   "small problems stable)")
    p.add_argument("--linear", action="store_true",
                   help="gradient w.r.t. lam, not log lam (examples are always linear)")
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table",
                   help="output format")
    p.add_argument("--plot", metavar="PNG", help="write error-vs-budget plot (needs matplotlib)")
    p.add_argument("--budgets", type=_positive(int), nargs="+",
                   help="budgets traced for --plot (default: "
                   f"{' '.join(map(str, _DEFAULT_BUDGETS))})")
    p.set_defaults(func=_compare)

    p = sub.add_parser("minimize", parents=[common], formatter_class=_Formatter,
                       help="tune theta on the upper loss (log lam for data-set problems)")
    p.add_argument("--strategy", help="strategy name (default: best applicable)")
    p.add_argument("--optimizer", choices=("gd", "adam", "lbfgs"), default="lbfgs")
    p.add_argument("--steps", type=_positive(int), default=20, help="outer steps")
    p.add_argument("--lr", type=_positive(float),
                   help="learning rate (default: 0.1 for gd and adam, 1.0 for lbfgs)")
    p.add_argument("--threads", type=_positive(int),
                   help="BLAS, torch and numba threads (default: as set by the environment)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_minimize)

    p = sub.add_parser("warmup", formatter_class=_Formatter,
                       help="compile the numba kernels ahead of time (once per machine)")
    p.add_argument("families", nargs="*", metavar="FAMILY",
                   help="problem families to compile (default: all; see --list)")
    p.add_argument("--jobs", type=_positive(int), default=os.cpu_count() or 1,
                   help="families compiled at once, one process each (default: the number "
                   "of CPUs)")
    p.add_argument("--parallel", action="store_true",
                   help="also the prange kernels of large batches (twice the compile time)")
    p.add_argument("--list", action="store_true", help="list the families and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_warmup)

    p = sub.add_parser("list", formatter_class=_Formatter,
                       help="the problem x strategy applicability matrix")
    p.add_argument("--why", action="store_true",
                   help="print, under the table, why each '-' strategy does not apply")
    p.set_defaults(func=_list)
    return parser


def main(argv=None):
    """Entry point of the ``bilevel`` command; returns its exit status (2: bad usage)."""
    from bilevel._types import NotApplicable

    args = _parser().parse_args(argv)
    prog = f"bilevel {args.command}"

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: {category.__name__}: {' '.join(str(message).split())}",
              file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            return args.func(args) or 0
    except (UsageError, NotApplicable, ValueError, TypeError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        if not isinstance(exc, (UsageError, NotApplicable)):
            message = f"{type(exc).__name__}: {message} (--debug shows the traceback)"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
