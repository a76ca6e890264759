"""Data sets for bilevel tasks: scikit-learn's bundled ones, and a synthetic regression.

The CSV files ship inside scikit-learn; they are read directly so that a command-line
run does not pay for importing scikit-learn (about a second).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "load", "regression_data", "split_standardize"]

DATASETS = ("breast_cancer", "diabetes")


def _data_dir():
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the bundled data sets come with scikit-learn: pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def load(name):
    """``(X, y)`` of a bundled data set.

    breast_cancer: 569 x 30 features, labels in {-1, +1} (+1 benign), as
    ``sklearn.datasets.load_breast_cancer``. diabetes: 442 x 10 raw features, a
    continuous target, as ``load_diabetes(scaled=False)``.
    """
    if name == "breast_cancer":
        data = np.loadtxt(_data_dir() / "breast_cancer.csv", delimiter=",", skiprows=1)
        return data[:, :-1], 2.0 * data[:, -1] - 1.0
    if name == "diabetes":
        X = np.loadtxt(_data_dir() / "diabetes_data_raw.csv.gz")
        y = np.loadtxt(_data_dir() / "diabetes_target.csv.gz")
        return X, y
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def split_standardize(X, y, *, train_fraction=0.5, seed=0):
    """Shuffle, split into train / validation, standardize columns with train statistics.

    Returns ``X_train, y_train, X_val, y_val``.
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    order = np.random.default_rng(seed).permutation(X.shape[0])
    cut = int(round(train_fraction * X.shape[0]))
    train, val = order[:cut], order[cut:]
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    std[std == 0] = 1.0
    Xs = (X - mean) / std
    return (np.ascontiguousarray(Xs[train]), np.ascontiguousarray(y[train]),
            np.ascontiguousarray(Xs[val]), np.ascontiguousarray(y[val]))


def regression_data(n_samples, n_features, *, seed=0, noise=0.1):
    """Gaussian design with standardized columns, and a noisy linear target."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features))
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    w = rng.standard_normal(n_features)
    return X, X @ w + noise * rng.standard_normal(n_samples)
