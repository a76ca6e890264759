"""Peak-memory measurement of a block: NumPy/Python allocations plus the autograd graph."""

from __future__ import annotations

import tracemalloc
from contextlib import contextmanager

import torch

__all__ = ["MemoryReport", "measure_memory"]


class MemoryReport:
    """Bytes measured by :func:`measure_memory`.

    ``traced`` is the tracemalloc peak (Python objects and NumPy buffers); ``graph`` the
    distinct storages autograd saved for a backward pass (torch tensors are invisible to
    tracemalloc). ``peak`` is their sum.
    """

    def __init__(self):
        self.traced = 0
        self.graph = 0
        self._seen = set()

    @property
    def peak(self):
        """``traced + graph`` in bytes."""
        return self.traced + self.graph

    def _pack(self, t):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._seen:
            self._seen.add(key)
            self.graph += storage.nbytes()
        return t


@contextmanager
def measure_memory(track_graph=True):
    """Context manager yielding a :class:`MemoryReport` filled in on exit.

    ``track_graph=False`` skips the autograd count (``graph`` stays 0): torch.func
    transforms refuse the saved-tensor hooks it installs.
    """
    report = MemoryReport()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        if track_graph:
            with torch.autograd.graph.saved_tensors_hooks(report._pack, lambda t: t):
                yield report
        else:
            yield report
    finally:
        report.traced = max(tracemalloc.get_traced_memory()[1] - base, 0)
        if not was_tracing:
            tracemalloc.stop()
