"""Torch layers: ``y = Layer(problem, strategy)(*theta)``, differentiable in every tensor."""

from bilevel.torch.layer import Layer

__all__ = ["Layer"]
