"""Hypergradient strategies: interchangeable ways to compute ``(dx*/dtheta)^T v``.

Value strategies (:class:`ValueFunction`, :class:`Envelope`, :class:`ValueFiniteDifference`)
compute the gradient of the optimal value ``p(theta) = min_x E(x, theta)`` instead, for
:func:`bilevel.value_gradient`.
"""

from bilevel.strategies.analytic import Analytic
from bilevel.strategies.base import Strategy, ValueStrategy
from bilevel.strategies.bregman import BregmanUnroll
from bilevel.strategies.finite_difference import FiniteDifference
from bilevel.strategies.fixed_point import FixedPoint
from bilevel.strategies.implicit import Implicit
from bilevel.strategies.partial_smoothness import PartialSmoothness
from bilevel.strategies.straight_through import StraightThrough
from bilevel.strategies.unroll import Unroll
from bilevel.strategies.value_function import Envelope, ValueFiniteDifference, ValueFunction

__all__ = ["Analytic", "BregmanUnroll", "Envelope", "FiniteDifference", "FixedPoint",
           "Implicit", "PartialSmoothness", "StraightThrough", "Strategy", "Unroll",
           "ValueFiniteDifference", "ValueFunction", "ValueStrategy"]
