"""Lower-level problems: energies with the structure strategies exploit."""

from bilevel.problems.base import Problem
from bilevel.problems.logistic import LogisticRegression
from bilevel.problems.quadratic import Ridge
from bilevel.problems.smooth import Smooth
from bilevel.problems.sparse import ElasticNet, Lasso
from bilevel.problems.tv import TV1D

__all__ = ["TV1D", "ElasticNet", "Lasso", "LogisticRegression", "Problem", "Ridge", "Smooth"]
