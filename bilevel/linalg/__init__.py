"""Linear solvers behind one signature, used by the strategies."""

from bilevel.linalg.solve import METHODS, solve

__all__ = ["METHODS", "solve"]
