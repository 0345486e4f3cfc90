"""Image = tensor + grid geometry."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid


@dataclass(eq=False)
class Image:
    """A (multi-channel) 2D or 3D image in physical space.

    Attributes:
        data: tensor of shape (C, *grid.shape), i.e. (C, D, H, W) or (C, H, W). Floating point for
            intensities, an integer dtype for label maps and masks (kept through warping).
        grid: the image's sampling geometry (origin, spacing in mm, direction).
        name: where it came from (a path), used in error messages.
    """

    data: torch.Tensor
    grid: Grid
    name: str = "<image>"

    def __post_init__(self):
        if not isinstance(self.data, torch.Tensor):
            self.data = torch.as_tensor(np.asarray(self.data))
        if self.data.dim() == self.grid.dim:
            self.data = self.data.unsqueeze(0)
        if tuple(self.data.shape[1:]) != self.grid.shape:
            raise MorphregError(
                f"data shape {tuple(self.data.shape)} does not match grid shape (C, {self.grid.shape})", self.name
            )

    # ----- convenience ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.grid.dim

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def is_label(self) -> bool:
        """Integer (or bool) data: a label map or mask; warped without mixing values."""
        return not (self.data.is_floating_point() or self.data.is_complex())

    @property
    def origin(self) -> np.ndarray:
        return self.grid.origin

    @property
    def spacing(self) -> np.ndarray:
        return self.grid.spacing

    @property
    def direction(self) -> np.ndarray:
        return self.grid.direction

    def batch(self) -> torch.Tensor:
        """Data as a batch of one: (1, C, *shape)."""
        return self.data.unsqueeze(0)

    def with_data(self, data: torch.Tensor, name: str | None = None) -> Image:
        """Same geometry, new voxels (shape (C, *shape) or (*shape))."""
        return Image(data, self.grid, self.name if name is None else name)

    def to(self, device=None, dtype=None) -> Image:
        return Image(self.data.to(device=device, dtype=dtype), self.grid, self.name)

    def float(self) -> Image:
        return self.to(dtype=torch.float32)

    def labels(self) -> list[int]:
        """Sorted non-zero label values present (channel 0)."""
        vals = torch.unique(self.data[0])
        return [int(v) for v in vals.tolist() if v != 0]

    def points(self, dtype=torch.float32) -> torch.Tensor:
        """World coordinates of the voxel centres, (*shape, dim) mm."""
        return self.grid.points(device=self.data.device, dtype=dtype)

    def __repr__(self) -> str:
        return f"Image({self.name!r}, channels={self.channels}, dtype={self.data.dtype}, {self.grid!r})"

    def check_finite(self) -> Image:
        if self.data.is_floating_point() and not torch.isfinite(self.data).all():
            bad = int((~torch.isfinite(self.data)).sum())
            raise MorphregError(f"image has {bad} NaN/inf voxels", self.name)
        return self
