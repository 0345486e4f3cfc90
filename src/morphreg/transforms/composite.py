"""Composition of transforms: ordered (T = T_0 o T_1 o ... ) and additive (x + sum_i u_i(x))."""
from __future__ import annotations

import torch
from torch import nn

from morphreg.image.grid import Grid
from morphreg.transforms.base import Transform


class CompositeTransform(Transform):
    """T(x) = T_0(T_1(...T_{n-1}(x))): the *last* transform is applied to the fixed points first.

    This is ITK's CompositeTransform order (transforms listed in the order they were added), so
    a registration result "affine, then deformable on top" is ``CompositeTransform([affine, deformable])``.
    """

    def __init__(self, transforms: list[Transform]):
        super().__init__()
        flat: list[Transform] = []
        for t in transforms:
            flat.extend(t.transforms if isinstance(t, CompositeTransform) else [t])
        if not flat:
            raise ValueError("a composite transform needs at least one transform")
        dims = {t.dim for t in flat}
        if len(dims) != 1:
            raise ValueError(f"cannot compose transforms of dimensions {sorted(dims)}")
        self.dim = dims.pop()
        self.transforms = nn.ModuleList(flat)

    def points(self, x: torch.Tensor) -> torch.Tensor:
        for t in reversed(self.transforms):
            x = t.points(x)
        return x

    def map_grid(self, grid: Grid, dtype=torch.float32, device=None) -> torch.Tensor:
        y = self.transforms[-1].map_grid(grid, dtype, device)
        for t in reversed(self.transforms[:-1]):
            y = t.points(y)
        return y

    def domain(self) -> Grid | None:
        for t in reversed(self.transforms):
            if t.domain() is not None:
                return t.domain()
        return None

    def inverse(self, grid: Grid | None = None, **kwargs) -> CompositeTransform:
        """(T_0 o ... o T_n)^-1 = T_n^-1 o ... o T_0^-1; each part inverts its own way.

        A dense part's inverse is represented on its own domain, or on ``grid``.
        """
        parts = []
        for t in self.transforms:
            parts.append(t.inverse(grid, **kwargs) if not t.linear else t.inverse())
        return CompositeTransform(list(reversed(parts)))

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "transforms": [t.to_dict() for t in self.transforms]}

    @classmethod
    def from_dict(cls, d):
        from morphreg.transforms.io import transform_from_dict

        return cls([transform_from_dict(t) for t in d["transforms"]])


class AdditiveTransform(Transform):
    """T(x) = x + sum_i (T_i(x) - x): displacements added, e.g. global + local as in Rueckert's FFD."""

    def __init__(self, transforms: list[Transform]):
        super().__init__()
        self.dim = transforms[0].dim
        self.transforms = nn.ModuleList(transforms)

    def points(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for t in self.transforms:
            y = y + (t.points(x) - x)
        return y

    def map_grid(self, grid: Grid, dtype=torch.float32, device=None) -> torch.Tensor:
        x = grid.points(device=device, dtype=dtype).unsqueeze(0)
        y = x
        for t in self.transforms:
            y = y + (t.map_grid(grid, dtype, device) - x)
        return y

    def domain(self) -> Grid | None:
        return next((t.domain() for t in self.transforms if t.domain() is not None), None)

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "transforms": [t.to_dict() for t in self.transforms]}

    @classmethod
    def from_dict(cls, d):
        from morphreg.transforms.io import transform_from_dict

        return cls([transform_from_dict(t) for t in d["transforms"]])
