"""The one transform interface.

A transform maps fixed-image world points (mm, LPS) to moving-image world points (backward mapping).
Points are tensors (..., dim) with the last axis ordered x, y, z; dense fields are (N, dim, *spatial).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from morphreg.core.differences import mapping_jacobian_determinant, world_gradient
from morphreg.image.grid import Grid

TRANSFORM_TYPES: dict[str, type[Transform]] = {}


class Transform(nn.Module):
    """Base class: subclasses implement :meth:`points`; dense models override :meth:`map_grid`."""

    dim: int
    linear: ClassVar[bool] = False
    frozen: bool = False  # set by freeze(): no more optimisation, derived fields may be cached

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        TRANSFORM_TYPES[cls.__name__] = cls

    # ----- mapping --------------------------------------------------------------------------------
    def points(self, x: torch.Tensor) -> torch.Tensor:
        """Map world points (..., dim) mm to world points (..., dim) mm."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.points(x)

    def map_grid(self, grid: Grid, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Mapped positions of every point of ``grid``: (N, *grid.shape, dim) world mm (N = 1 usually)."""
        device = device or self._device()
        y = self.points(grid.points(device=device, dtype=dtype))
        return y if y.dim() == grid.dim + 2 else y.unsqueeze(0)

    def displacement(self, grid: Grid, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Displacement T(x) - x on ``grid``: (N, dim, *grid.shape), world mm, channels x, y, z."""
        device = device or self._device()
        u = self.map_grid(grid, dtype, device) - grid.points(device=device, dtype=dtype)
        return torch.movedim(u, -1, 1)

    def jacobian(self, grid: Grid, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Jacobian matrix dT/dx on ``grid``: (N, *grid.shape, dim, dim), row = output coordinate."""
        y = torch.movedim(self.map_grid(grid, dtype, device), -1, 1)  # (N, dim, *shape)
        g = world_gradient(y, grid)  # (N, dim_out, dim_in, *shape)
        return torch.movedim(torch.movedim(g, 1, -1), 1, -1)

    def jacobian_determinant(self, grid: Grid, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """det(dT/dx) on ``grid``: (N, *grid.shape). <= 0 means folding."""
        if type(self).jacobian is not Transform.jacobian:  # an analytic Jacobian (linear models): exact
            return torch.linalg.det(self.jacobian(grid, dtype, device).to(torch.float64)).to(dtype)
        mapped = self.map_grid(grid, dtype, device).to(torch.float64)
        return mapping_jacobian_determinant(torch.movedim(mapped, -1, 1), grid).to(dtype)

    def freeze(self) -> Transform:
        """No more optimisation: parameters stop requiring gradients and the transforms inside may
        cache what they compute from them (an SVF its exponential). Returns self."""
        for p in self.parameters():
            p.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, Transform):
                m.frozen = True
        return self

    # ----- algebra ----------------------------------------------------------------------------------
    def compose(self, other: Transform) -> Transform:
        """self o other: x -> self(other(x)). (Warping with it applies ``other`` to fixed points first.)"""
        from morphreg.transforms.composite import CompositeTransform

        return CompositeTransform([self, other])

    def inverse(self, grid: Grid | None = None, iterations: int = 50, tolerance: float = 1e-3) -> Transform:
        """Inverse transform. Dense/non-linear models use a fixed-point iteration on ``grid``.

        The result carries ``inverse_residual`` (max and mean |T(T^-1(y)) - y| in mm on the grid).
        """
        from morphreg.transforms.dense import fixed_point_inverse

        grid = grid or self.domain()
        if grid is None:
            raise ValueError(f"{type(self).__name__}.inverse needs a grid to represent the inverse on")
        return fixed_point_inverse(self, grid, iterations=iterations, tolerance=tolerance)

    def domain(self) -> Grid | None:
        """The grid the transform is naturally defined on (dense models), else None."""
        return None

    def _device(self):
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    # ----- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain description (tensors allowed) that :meth:`from_dict` turns back into the same transform."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict) -> Transform:
        raise NotImplementedError

    def save(self, path, grid: Grid | None = None):
        """Save: ``.pt`` keeps the exact model; ``.tfm/.txt/.mat/.h5`` ITK transform files;
        ``.nii/.nii.gz/.mha/.nrrd`` an ITK displacement-field image on ``grid`` (or the model's own)."""
        from morphreg.transforms.io import save_transform

        return save_transform(self, path, grid=grid)

    @staticmethod
    def load(path) -> Transform:
        from morphreg.transforms.io import load_transform

        return load_transform(path)

    def to_sitk(self, grid: Grid | None = None):
        """The equivalent SimpleITK transform (dense models on ``grid`` or their own domain)."""
        from morphreg.transforms.itk import to_sitk_transform

        return to_sitk_transform(self, grid)


def grid_to_dict(grid: Grid | None) -> dict | None:
    """:meth:`Grid.to_dict`, None for no grid (transforms without a domain)."""
    return None if grid is None else grid.to_dict()


def grid_from_dict(d: dict | None) -> Grid | None:
    return None if d is None else Grid.from_dict(d)

