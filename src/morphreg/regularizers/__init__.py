"""Regularisers in world units: plain functions on dense displacement fields and on transforms.

``PENALTIES`` maps names to ``penalty(displacement, grid, mask=None, **params) -> scalar``;
:func:`transform_penalty` evaluates any of them for a parametric transform (B-spline control grid).
"""
from __future__ import annotations

import torch
from torch import nn

from morphreg.image.grid import Grid
from morphreg.regularizers.dense import (
    bending_energy,
    diffusion,
    displacement_gradient,
    folding_penalty,
    jacobian_determinant,
    linear_elastic,
    log_jacobian,
    rigidity_penalty,
)
from morphreg.regularizers.penalties import PENALTIES, penalty_function
from morphreg.regularizers.transform import penalty_grid, transform_penalty


class Penalty(nn.Module):
    """``Penalty("rigidity", linearity=2.0)(displacement, grid, mask)``: a registered penalty with fixed params."""

    def __init__(self, name: str, **params):
        super().__init__()
        self.name = name
        self.fn = penalty_function(name)
        self.params = params

    def forward(self, displacement: torch.Tensor, grid: Grid, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(displacement, grid, mask, **self.params)

    def extra_repr(self) -> str:
        return f"{self.name!r}, " + ", ".join(f"{k}={v!r}" for k, v in self.params.items())


__all__ = [
    "PENALTIES", "Penalty", "penalty_function", "diffusion", "bending_energy", "linear_elastic", "log_jacobian",
    "folding_penalty", "rigidity_penalty", "jacobian_determinant", "displacement_gradient",
    "transform_penalty", "penalty_grid",
]
