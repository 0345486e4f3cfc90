"""Sampling grids with physical geometry (ITK conventions, world = LPS mm).

A grid maps voxel index i (ITK order: i_x, i_y, i_z) to world x = origin + direction @ (spacing * i).
Tensors hold the spatial axes reversed: shape (D, H, W) in 3D, (H, W) in 2D, so the last tensor axis
is the first index axis. Normalised coordinates (``*_norm``) are those of ``torch.grid_sample`` with
``align_corners=True``: -1 at the first voxel centre, +1 at the last.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from morphreg.errors import MorphregError

ORTHONORMAL_TOL = 1e-4


def _as_vector(values, dim: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, dim)
    if arr.size != dim:
        raise MorphregError(f"{name} has {arr.size} values, expected {dim}")
    return arr


@dataclass(frozen=True, eq=False)
class Grid:
    """Geometry of a regular lattice of points.

    Attributes:
        size: number of points per index axis, ITK order (nx, ny[, nz]).
        origin: world position of index 0, mm, shape (dim,).
        spacing: distance between neighbouring points along each index axis, mm, shape (dim,).
        direction: (dim, dim) orthonormal matrix whose column k is index axis k in world space.
    """

    size: tuple[int, ...]
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray

    def __init__(self, size: Sequence[int], origin=None, spacing=None, direction=None):
        size = tuple(int(s) for s in size)
        dim = len(size)
        if dim not in (2, 3):
            raise MorphregError(f"grids must be 2D or 3D, got {dim}D")
        if min(size) < 1:
            raise MorphregError(f"grid size {size} has an empty axis")
        origin = np.zeros(dim) if origin is None else _as_vector(origin, dim, "origin")
        spacing = np.ones(dim) if spacing is None else _as_vector(spacing, dim, "spacing")
        direction = np.eye(dim) if direction is None else np.asarray(direction, np.float64).reshape(dim, dim)
        if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
            raise MorphregError(f"spacing {spacing.tolist()} must be positive and finite")
        if not np.allclose(direction.T @ direction, np.eye(dim), atol=ORTHONORMAL_TOL):
            raise MorphregError(f"direction matrix {direction.tolist()} is not orthonormal")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "direction", direction)

    # ----- basic properties -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """Tensor shape of the spatial axes: (D, H, W) or (H, W)."""
        return tuple(reversed(self.size))

    @property
    def numel(self) -> int:
        return int(np.prod(self.size))

    @property
    def extent(self) -> np.ndarray:
        """Physical length covered by the points along each index axis, mm."""
        return (np.asarray(self.size) - 1) * self.spacing

    def center(self) -> np.ndarray:
        """World position of the grid's geometric centre, mm."""
        return self.index_to_world_points((np.asarray(self.size, np.float64) - 1) / 2)

    def __eq__(self, other) -> bool:
        return isinstance(other, Grid) and self.same_as(other)

    def __hash__(self) -> int:
        return hash((self.size, tuple(np.round(self.origin, 6)), tuple(np.round(self.spacing, 6))))

    def to_dict(self) -> dict:
        """The one serialisation of a grid (JSON-ready): size, origin (mm, LPS), spacing (mm), direction."""
        return {"size": list(self.size), "origin": self.origin.tolist(), "spacing": self.spacing.tolist(),
                "direction": self.direction.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Grid:
        return cls(d["size"], d["origin"], d["spacing"], d["direction"])

    def same_as(self, other: Grid, tol: float = 1e-5) -> bool:
        """True if both grids have the same size and (within ``tol`` mm or relative) geometry."""
        return (
            self.size == other.size
            and np.allclose(self.origin, other.origin, atol=tol * max(1.0, np.abs(self.spacing).max()))
            and np.allclose(self.spacing, other.spacing, rtol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def __repr__(self) -> str:
        return (
            f"Grid(size={self.size}, origin={np.round(self.origin, 4).tolist()}, "
            f"spacing={np.round(self.spacing, 4).tolist()}, direction={np.round(self.direction, 4).tolist()})"
        )

    # ----- homogeneous matrices (float64 numpy, (dim+1, dim+1)) -------------------------------------
    def index_to_world(self) -> np.ndarray:
        m = np.eye(self.dim + 1)
        m[: self.dim, : self.dim] = self.direction @ np.diag(self.spacing)
        m[: self.dim, self.dim] = self.origin
        return m

    def world_to_index(self) -> np.ndarray:
        m = np.eye(self.dim + 1)
        inv = np.diag(1.0 / self.spacing) @ self.direction.T
        m[: self.dim, : self.dim] = inv
        m[: self.dim, self.dim] = -inv @ self.origin
        return m

    def index_to_norm(self) -> np.ndarray:
        n = np.asarray(self.size, np.float64)
        scale = np.where(n > 1, 2.0 / np.maximum(n - 1, 1), 0.0)
        m = np.eye(self.dim + 1)
        m[: self.dim, : self.dim] = np.diag(scale)
        m[: self.dim, self.dim] = np.where(n > 1, -1.0, 0.0)
        return m

    def world_to_norm(self) -> np.ndarray:
        return self.index_to_norm() @ self.world_to_index()

    def norm_to_world(self) -> np.ndarray:
        n = np.asarray(self.size, np.float64)
        m = np.eye(self.dim + 1)
        m[: self.dim, : self.dim] = np.diag((n - 1) / 2)
        m[: self.dim, self.dim] = (n - 1) / 2
        return self.index_to_world() @ m

    # ----- points ------------------------------------------------------------------------------------
    def index_to_world_points(self, index) -> np.ndarray:
        index = np.asarray(index, np.float64)
        return index @ (self.direction @ np.diag(self.spacing)).T + self.origin

    def world_to_index_points(self, points) -> np.ndarray:
        points = np.asarray(points, np.float64)
        return (points - self.origin) @ self.direction / self.spacing

    def points(self, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """World coordinates of every grid point, mm, shape (*shape, dim), last axis ordered x, y, z.

        Built from per-axis vectors by broadcasting, so it is cheap even for large volumes.
        """
        m = torch.as_tensor(self.index_to_world(), dtype=torch.float64)
        out = torch.zeros(*self.shape, self.dim, dtype=dtype, device=device)
        out += m[: self.dim, self.dim].to(device=device, dtype=dtype)
        for k, n in enumerate(self.size):
            idx = torch.arange(n, dtype=torch.float64)
            # Axis k of the index is tensor axis (dim - 1 - k).
            view = [1] * self.dim + [self.dim]
            view[self.dim - 1 - k] = n
            contrib = (idx[:, None] * m[: self.dim, k][None, :]).to(device=device, dtype=dtype)
            out += contrib.reshape(view)
        return out

    # ----- derived grids -----------------------------------------------------------------------------
    def with_spacing(self, spacing) -> Grid:
        """A grid over the same physical extent with a new spacing (mm); the centre is kept."""
        spacing = _as_vector(spacing, self.dim, "spacing")
        size = np.maximum(1, np.floor(self.extent / spacing + 1e-6).astype(int) + 1)
        return self.with_size_about_center(size, spacing)

    def with_size_about_center(self, size, spacing) -> Grid:
        size = np.asarray(size, int)
        spacing = _as_vector(spacing, self.dim, "spacing")
        half = (size - 1) / 2 * spacing
        origin = self.center() - self.direction @ half
        return Grid(size.tolist(), origin, spacing, self.direction)

    def downsample(self, factor) -> Grid:
        """Grid with ``factor`` times fewer points per axis (ITK shrink: same extent, centre kept)."""
        f = _as_vector(factor, self.dim, "shrink factor")
        size = np.maximum(1, np.floor(np.asarray(self.size) / f).astype(int))
        spacing = self.spacing * np.asarray(self.size) / size
        return self.with_size_about_center(size, spacing)

    def crop(self, start, stop) -> Grid:
        """Sub-grid of index range [start, stop) per axis (ITK order); may extend beyond (padding)."""
        start = np.asarray(start, int)
        stop = np.asarray(stop, int)
        return Grid((stop - start).tolist(), self.index_to_world_points(start), self.spacing, self.direction)

    @staticmethod
    def bounding(points: np.ndarray, spacing, direction=None, margin: float = 0.0) -> Grid:
        """Smallest grid with the given spacing/direction that covers ``points`` (N, dim) plus margin mm."""
        points = np.asarray(points, np.float64)
        dim = points.shape[1]
        direction = np.eye(dim) if direction is None else np.asarray(direction, np.float64)
        spacing = _as_vector(spacing, dim, "spacing")
        local = points @ direction
        lo, hi = local.min(0) - margin, local.max(0) + margin
        size = np.ceil((hi - lo) / spacing - 1e-9).astype(int) + 1
        return Grid(size.tolist(), direction @ lo, spacing, direction)
