"""The ``bilevel`` command: compare strategies, run an outer loop, list what applies."""

from __future__ import annotations

import argparse
import sys

import numpy as np

__all__ = ["main"]

# problem name -> (the data set it is meant for, default lam)
_TASKS = {"logistic": ("breast_cancer", 1e-2), "ridge": ("diabetes", 1e-1),
          "lasso": ("diabetes", 1.0), "logistic_l1": ("breast_cancer", 1e-2)}


def _build(problem, dataset):
    """Build the problem on the training split and the validation loss of a bundled data set."""
    from bilevel import losses, problems
    from bilevel.datasets import load, split_standardize

    X, y = load(dataset)
    X_train, y_train, X_val, y_val = split_standardize(X, y)
    if problem.startswith("logistic"):
        if dataset != "breast_cancer":
            raise SystemExit(f"{problem} needs labels in {{-1, +1}}: use --dataset breast_cancer")
        penalty = "l1" if problem == "logistic_l1" else "l2"
        return (problems.LogisticRegression(X_train, y_train, penalty=penalty),
                losses.LogisticLoss(X_val, y_val))
    y_mean = y_train.mean()
    model = problems.Lasso if problem == "lasso" else problems.Ridge
    return (model(X_train, y_train - y_mean), losses.SquaredError(X_val, y_val - y_mean))


def _strategies(text):
    return None if text in (None, "all") else [s.strip() for s in text.split(",") if s.strip()]


def _compare(args):
    import bilevel as bl
    from bilevel._report import require_matplotlib

    if args.plot:
        try:
            require_matplotlib()     # before any computation
        except ImportError as exc:
            print(f"bilevel compare: error: --plot: {exc}", file=sys.stderr)
            return 2
    problem, loss = _build(args.problem, args.dataset or _TASKS[args.problem][0])
    theta = args.theta if args.theta is not None else _TASKS[args.problem][1]
    report = bl.compare(problem, loss, theta, strategies=_strategies(args.strategies),
                        repeat=args.repeat, log_scale=not args.linear,
                        budgets=args.budgets if args.plot else None)
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

    problem, loss = _build(args.problem, args.dataset or _TASKS[args.problem][0])
    theta0 = args.theta if args.theta is not None else _TASKS[args.problem][1]
    result = bl.minimize(problem, loss, theta0, strategy=args.strategy,
                         optimizer=args.optimizer, steps=args.steps, lr=args.lr,
                         log_scale=True, progress=not args.quiet)
    h = result.history
    print(f"strategy {result.strategy}, optimizer {args.optimizer}, {result.n_steps} steps")
    print(f"validation loss {h['loss'][0]:.6g} at theta={float(np.ravel(h['theta'][0])[0]):.4g}"
          f" -> {result.loss:.6g} at theta={float(np.ravel(result.theta)[0]):.4g}")


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


def main(argv=None):
    """Entry point of the ``bilevel`` command."""
    parser = argparse.ArgumentParser(prog="bilevel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--problem", choices=sorted(_TASKS), default="logistic")
    common.add_argument("--dataset", choices=("breast_cancer", "diabetes"),
                        help="bundled scikit-learn data set (default: the problem's own)")
    common.add_argument("--theta", type=float, help="regularization lam (default 1e-2 / 1e-1)")

    p = sub.add_parser("compare", parents=[common],
                       help="hypergradient of the validation loss by every strategy")
    p.add_argument("--strategies", default="all", help="comma-separated names, or 'all'")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per strategy (median)")
    p.add_argument("--linear", action="store_true", help="gradient w.r.t. lam, not log lam")
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    p.add_argument("--plot", metavar="PNG", help="write error-vs-budget plot (needs matplotlib)")
    p.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100, 200],
                   help="budgets traced for --plot")
    p.set_defaults(func=_compare)

    p = sub.add_parser("minimize", parents=[common], help="tune log lam on validation loss")
    p.add_argument("--strategy", default=None, help="strategy name (default: best applicable)")
    p.add_argument("--optimizer", choices=("gd", "adam", "lbfgs"), default="lbfgs")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_minimize)

    p = sub.add_parser("list", help="the problem x strategy applicability matrix")
    p.add_argument("--why", action="store_true",
                   help="print, under the table, why each '-' strategy does not apply")
    p.set_defaults(func=_list)

    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
