"""The table :func:`bilevel.compare` returns: text, markdown, JSON, and a convergence plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["CompareReport", "require_matplotlib"]

_COLUMNS = ("strategy", "hypergradient", "rel. error", "time", "peak mem", "iters", "residual")


@dataclass
class CompareReport:
    """Result of :func:`bilevel.compare`.

    Attributes
    ----------
    problem : str
    loss : float
        Upper loss at ``x*``.
    reference : str
        Strategy that gave the reference hypergradient.
    reference_grad : list
        Reference hypergradient, one nested list per theta part.
    solve_time : float
        Seconds of the shared lower-level solve (``solve_label`` says what was timed).
    log_scale : bool
        Whether gradients are with respect to ``log(theta)``.
    solve_label : str
        What ``solve_time`` timed (for an InstanceSum: the reference over all instances).
    rows : list of dict
        Per strategy: ``strategy``, ``label`` (name and non-default knobs), ``params``,
        and either ``skipped`` (the reason) with
        ``missing`` (the capabilities it lacks), or ``failed`` (the error it raised, e.g. a
        singular system), or
        ``grad``, ``error``, ``time`` (median seconds), ``runs`` (timed runs),
        ``peak_bytes``, ``iterations``,
        ``residual`` and, with budgets, ``trace`` (budget, error) pairs.
    """

    problem: str
    loss: float
    reference: str
    reference_grad: list
    solve_time: float
    log_scale: bool
    rows: list = field(default_factory=list)
    solve_label: str = "lower-level solve"

    def to_dict(self):
        """Plain dict (JSON-serializable)."""
        return asdict(self)

    def to_json(self, **kwargs):
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), default=_jsonable, **kwargs)

    def _cells(self):
        out = []
        for row in self.rows:
            if "skipped" in row:
                out.append((row["label"], "skipped: needs " + ", ".join(row["missing"]),
                            "", "", "", "", ""))
                continue
            if "failed" in row:
                out.append((row["label"], "failed: " + row["failed"].split(":")[0],
                            "", "", "", "", ""))
                continue
            out.append((row["label"], _format_grad(row["grad"]), f"{row['error']:.1e}",
                        _format_time(row["time"]), _format_bytes(row["peak_bytes"]),
                        "" if row["iterations"] is None else str(row["iterations"]),
                        _format_float(row["residual"])))
        return out

    def _title(self):
        wrt = "log(theta)" if self.log_scale else "theta"
        return (f"{self.problem}: upper loss {self.loss:.6g}, hypergradient w.r.t. {wrt}; "
                f"reference {self.reference}; {self.solve_label} {_format_time(self.solve_time)}")

    def __str__(self):
        cells = self._cells()
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
                  for i, h in enumerate(_COLUMNS)]
        lines = [self._title(), "  ".join(h.ljust(w) for h, w in zip(_COLUMNS, widths))]
        lines.append("  ".join("-" * w for w in widths))
        for c in cells:
            lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
        return "\n".join(lines)

    def to_markdown(self):
        """Render as a GitHub-flavoured markdown table with a title line."""
        lines = [f"**{self._title()}**", "", "| " + " | ".join(_COLUMNS) + " |",
                 "|" + "---|" * len(_COLUMNS)]
        lines += ["| " + " | ".join(c) + " |" for c in self._cells()]
        return "\n".join(lines)

    def plot(self, path=None):
        """Relative error against budget for the iterative strategies (needs ``budgets``).

        Saves to ``path`` when given; returns the matplotlib figure.
        """
        require_matplotlib()
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        traced = [r for r in self.rows if r.get("trace")]
        if not traced:
            raise ValueError("no convergence trace: call compare(..., budgets=[...])")
        fig, ax = plt.subplots(figsize=(6, 4))
        for row in traced:
            budgets, errors = zip(*row["trace"])
            ax.loglog(budgets, np.maximum(errors, 1e-17), marker="o", label=row["strategy"])
        ax.set_xlabel("budget (iterations / steps / terms)")
        ax.set_ylabel("relative error of the hypergradient")
        ax.set_title(self.problem)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def require_matplotlib():
    """Raise a one-line :class:`ImportError` naming the ``plot`` extra unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("plotting needs matplotlib, which is not installed: "
                          "pip install 'bilevel[plot]' (or -e '.[plot]' in a checkout)") from None


def _format_grad(parts):
    flat = np.concatenate([np.ravel(p) for p in parts])
    if flat.size <= 2:
        return ", ".join(f"{v:+.10e}" for v in flat)
    return f"[{flat[0]:+.4e}, {flat[1]:+.4e}, ...] ({flat.size})"


def _format_time(seconds):
    """Three significant digits in the largest unit that keeps the value under 1000.

    ``157 us``, ``5.69 ms``, ``823 ms``, ``2.04 s``: the table's time column stays 6-7 wide.
    """
    for unit, per_second in (("us", 1e6), ("ms", 1e3), ("s", 1.0)):
        value = f"{seconds * per_second:.3g}"
        if float(value) < 1000:
            return f"{value} {unit}"
    return f"{seconds:.0f} s"


def _format_bytes(n):
    if n is None:           # not measured (work run by an executor elsewhere)
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _format_float(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.1e}"


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
