"""Analytic: a degenerate row of a batched closed-form VJP raises a DegeneracyWarning."""

import pytest
import torch

import bilevel as bl


def test_layer_warns_at_a_huber_kink():
    layer = bl.torch.Layer(bl.problems.RobustPooling("huber", 1.0))
    x = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)   # y = 1: |y - x_i| = alpha
    with pytest.warns(bl.DegeneracyWarning, match="degenerate"):
        layer(x).sum().backward()
