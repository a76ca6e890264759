"""Hypergradient strategies: interchangeable ways to compute ``(dx*/dtheta)^T v``."""

from bilevel.strategies.analytic import Analytic
from bilevel.strategies.base import Strategy
from bilevel.strategies.bregman import BregmanUnroll
from bilevel.strategies.finite_difference import FiniteDifference
from bilevel.strategies.fixed_point import FixedPoint
from bilevel.strategies.implicit import Implicit
from bilevel.strategies.partial_smoothness import PartialSmoothness
from bilevel.strategies.straight_through import StraightThrough
from bilevel.strategies.unroll import Unroll
from bilevel.strategies.value_function import ValueFunction

__all__ = ["Analytic", "FiniteDifference", "FixedPoint", "Implicit", "PartialSmoothness",
           "StraightThrough", "Strategy", "Unroll",
           "BregmanUnroll", "ValueFunction"]
