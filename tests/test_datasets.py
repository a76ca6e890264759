"""The bundled data sets against scikit-learn's copies, and split_standardize."""

import numpy as np
import pytest

from bilevel.datasets import load, split_standardize


def test_bundled_data_match_scikit_learn():
    from sklearn.datasets import load_breast_cancer, load_diabetes

    X, y = load("breast_cancer")
    ref = load_breast_cancer()
    np.testing.assert_array_equal(X, ref.data)
    np.testing.assert_array_equal(y, 2.0 * ref.target - 1.0)
    X, y = load("diabetes")
    ref = load_diabetes(scaled=False)
    np.testing.assert_allclose(X, ref.data)
    np.testing.assert_allclose(y, ref.target)
    Xt, yt, Xv, yv = split_standardize(X, y)
    assert Xt.shape[0] + Xv.shape[0] == 442
    np.testing.assert_allclose(Xt.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Xt.std(axis=0), 1, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown dataset"):
        load("mnist")
