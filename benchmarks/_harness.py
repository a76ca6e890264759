"""A tiny harness shared by the benchmark scripts in ``benchmarks/``.

A benchmark runs a peer and ``bilevel`` on the same instance in one process and prints a
ratio table. This module provides the four pieces every benchmark needs:

- :func:`make_parser`: an argument parser with ``--quick`` (a smoke run with few repeats,
  what ``tests/test_benchmarks.py`` runs) and ``--repeat``;
- :func:`time_median`: the median of ``repeat`` timings after untimed warm-up calls;
- :func:`time_fresh_process`: timings taken inside fresh Python processes (first-call and
  import costs, which one process can only measure once);
- :func:`print_table`: times per column and the ratio of each peer to ``ours``.

Timings are wall-clock seconds from :func:`time.perf_counter`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

__all__ = ["Timing", "format_seconds", "make_parser", "print_table", "time_fresh_process",
           "time_interleaved", "time_median"]


@dataclass(frozen=True)
class Timing:
    """Repeated timings of one measurement, in seconds.

    Attributes
    ----------
    times : tuple of float
        Seconds per call, one entry per repeat.
    """

    times: tuple

    @property
    def median(self):
        """Median seconds per call."""
        return statistics.median(self.times)


def make_parser(description):
    """An :class:`argparse.ArgumentParser` with the flags every benchmark takes.

    ``--quick`` asks for a smoke run (few repeats, expensive rows skipped) that finishes in
    seconds; ``--repeat K`` overrides the number of timed repeats. A script adds its own
    arguments to the returned parser.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: few repeats, expensive rows skipped")
    parser.add_argument("--repeat", type=int, default=None, metavar="K",
                        help="timed repeats per measurement (median reported)")
    return parser


def time_median(fn, *, repeat=7, number=1, warmup=1):
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeat`` samples of ``number`` calls.

    Each sample is the mean time of ``number`` consecutive calls (``number > 1`` averages
    out the timer's resolution for sub-millisecond calls); the median over samples is
    robust to the occasional interruption. ``fn`` must block until its result is ready
    (call ``.block_until_ready()`` on JAX arrays).

    Returns
    -------
    Timing
    """
    if repeat < 1 or number < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1, number >= 1, warmup >= 0; "
                         f"got {repeat}, {number}, {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return Timing(tuple(times))


def time_interleaved(fns, *, repeat=15, number=1, warmup=1):
    """Time several calls in turn: ``{name: Timing}`` for ``fns = {name: fn}``.

    Each round takes one sample of every function (``number`` consecutive calls each, as in
    :func:`time_median`; a dict ``{name: number}`` gives each its own, 1 where missing), so
    that a slow spell of the machine hits them alike: the ratio of their medians is
    steadier than that of separate :func:`time_median` runs.
    """
    numbers = number if isinstance(number, dict) else dict.fromkeys(fns, number)
    numbers = {name: numbers.get(name, 1) for name in fns}
    if repeat < 1 or min(numbers.values()) < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1, number >= 1, warmup >= 0; "
                         f"got {repeat}, {number}, {warmup}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            times[name].append((time.perf_counter() - start) / numbers[name])
    return {name: Timing(tuple(t)) for name, t in times.items()}


def time_fresh_process(code, *, repeat=3, prime=True, timeout=300):
    """Run ``code`` in ``repeat`` fresh interpreters; collect the timings it reports.

    ``code`` is a Python program (run as ``python -c code`` with this interpreter) that
    times what it wants and prints, as the last line of its standard output, a JSON object
    mapping names to seconds. A fresh process is the only way to measure a first call:
    compilation, lazy imports, loading on-disk caches.

    Parameters
    ----------
    code : str
    repeat : int
        Timed runs.
    prime : bool
        Run once, untimed, beforehand: fills on-disk caches (numba's ``cache=True``, a
        persistent compilation cache) so the timed runs measure a warm disk cache.
    timeout : float
        Seconds allowed per run.

    Returns
    -------
    dict of str to Timing
        One entry per name the program reported.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")

    def run_once():
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"fresh-process benchmark failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        lines = proc.stdout.strip().splitlines()
        if not lines:
            raise RuntimeError("fresh-process benchmark printed nothing; it must print a "
                               "JSON object of timings as its last line")
        return json.loads(lines[-1])

    if prime:
        run_once()
    runs = [run_once() for _ in range(repeat)]
    return {name: Timing(tuple(float(r[name]) for r in runs)) for name in runs[0]}


def format_seconds(seconds):
    """``seconds`` in a readable unit: ``'812 us'``, ``'1.23 ms'``, ``'2.45 s'``."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def print_table(title, rows, columns, *, reference="ours", file=None):
    """Print times per column and, for each other column, its ratio to ``reference``.

    Parameters
    ----------
    title : str
        Printed above the table.
    rows : list of (str, dict)
        ``(label, {column: Timing or seconds or None})``; a missing or None cell prints "-".
    columns : list of str
        Column names in order; must include ``reference``.
    reference : str
        The column the ratios divide by. A ratio ``peer/ours`` above 1 means ours is faster.
    """
    if reference not in columns:
        raise ValueError(f"reference {reference!r} is not one of the columns {columns}")
    peers = [c for c in columns if c != reference]

    def seconds(cell):
        return cell.median if isinstance(cell, Timing) else cell

    header = [""] + list(columns) + [f"{p}/{reference}" for p in peers]
    table = [header]
    for label, cells in rows:
        values = {c: seconds(cells.get(c)) for c in columns}
        ref = values[reference]
        ratios = [f"{values[p] / ref:.2f}x" if values[p] is not None and ref else "-"
                  for p in peers]
        table.append([label] + [format_seconds(values[c]) for c in columns] + ratios)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print(title, file=file)
    for k, row in enumerate(table):
        first = row[0].ljust(widths[0])
        rest = "  ".join(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))
        print(f"  {first}  {rest}", file=file)
        if k == 0:
            print("  " + "-" * (sum(widths) + 2 * (len(widths) - 1)), file=file)
