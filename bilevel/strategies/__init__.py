"""Hypergradient strategies: interchangeable ways to compute ``(dx*/dtheta)^T v``."""

from bilevel.strategies.analytic import Analytic
from bilevel.strategies.base import Strategy
from bilevel.strategies.finite_difference import FiniteDifference
from bilevel.strategies.fixed_point import FixedPoint
from bilevel.strategies.implicit import Implicit
from bilevel.strategies.partial_smoothness import PartialSmoothness
from bilevel.strategies.unroll import Unroll

__all__ = ["Analytic", "FiniteDifference", "FixedPoint", "Implicit", "PartialSmoothness",
           "Strategy", "Unroll"]
