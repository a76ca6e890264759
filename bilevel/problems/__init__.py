"""Lower-level problems: energies with the structure strategies exploit."""

from bilevel.problems.base import Problem
from bilevel.problems.bregman import MatrixGame, MultiLabelSegmentation, SimplexLeastSquares
from bilevel.problems.constrained import (
    NNLS,
    QP,
    Constrained,
    EqualityConstrainedLS,
    moment_matrix,
)
from bilevel.problems.entropic import EntropicSimplex
from bilevel.problems.lad import LeastAbsoluteDeviation, LinearProgram
from bilevel.problems.logistic import LogisticRegression
from bilevel.problems.piecewise import ConnectedComponents, PiecewisePolynomial
from bilevel.problems.pooling import RobustPooling
from bilevel.problems.projections import Projection
from bilevel.problems.quadratic import Ridge
from bilevel.problems.smooth import Smooth
from bilevel.problems.sparse import ElasticNet, Lasso
from bilevel.problems.tv import TV1D
from bilevel.problems.tv2d import TV2D

__all__ = [
    "NNLS", "QP", "TV1D", "TV2D", "ConnectedComponents", "Constrained", "ElasticNet",
    "EntropicSimplex", "EqualityConstrainedLS", "Lasso", "LeastAbsoluteDeviation",
    "LinearProgram", "LogisticRegression", "MatrixGame", "MultiLabelSegmentation",
    "PiecewisePolynomial", "Problem", "Projection", "Ridge", "RobustPooling",
    "SimplexLeastSquares", "Smooth", "moment_matrix",
]
