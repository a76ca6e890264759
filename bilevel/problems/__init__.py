"""Lower-level problems: energies with the structure strategies exploit.

Each problem declares what it offers strategies as typed :class:`Capabilities`
(:meth:`Problem.offers`); :class:`KKT` is the constraints capability.
"""

from bilevel.problems.base import Capabilities, Problem
from bilevel.problems.composite import Composite
from bilevel.problems.custom import Constrained, Smooth
from bilevel.problems.image_prior import ImagePrior
from bilevel.problems.kkt import KKT
from bilevel.problems.lad import LeastAbsoluteDeviation, LinearProgram
from bilevel.problems.logistic import LogisticRegression
from bilevel.problems.piecewise import ConnectedComponents, PiecewisePolynomial
from bilevel.problems.pooling import RobustPooling
from bilevel.problems.projections import Projection
from bilevel.problems.qp import NNLS, QP, EqualityConstrainedLS, moment_matrix
from bilevel.problems.quadratic import Ridge
from bilevel.problems.simplex import (
    EntropicSimplex,
    MatrixGame,
    MultiLabelSegmentation,
    SimplexLeastSquares,
)
from bilevel.problems.sparse import ElasticNet, Lasso
from bilevel.problems.tv import TV1D
from bilevel.problems.tv2d import TV2D

__all__ = [
    "KKT", "NNLS", "QP", "TV1D", "TV2D", "Capabilities", "Composite", "ConnectedComponents",
    "Constrained", "ElasticNet", "EntropicSimplex", "EqualityConstrainedLS", "ImagePrior", "Lasso",
    "LeastAbsoluteDeviation", "LinearProgram", "LogisticRegression", "MatrixGame",
    "MultiLabelSegmentation", "PiecewisePolynomial", "Problem", "Projection", "Ridge",
    "RobustPooling", "SimplexLeastSquares", "Smooth", "moment_matrix",
]
