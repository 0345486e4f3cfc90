"""Backward warping: moving image sampled at T(x) for every point x of a reference grid."""
from __future__ import annotations

import torch

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.sampling import sample_onto
from morphreg.transforms.base import Transform


def warp(
    image: Image,
    transform: Transform | None,
    reference: Grid | Image | None = None,
    interpolation: str | None = None,
    fill_value: float = 0.0,
    mapped: torch.Tensor | None = None,
) -> Image:
    """Resample ``image`` onto ``reference`` through ``transform`` (fixed -> moving points).

    Args:
        image: the moving image (any channels; integer data = labels).
        transform: maps reference-grid world points to moving world points; None = identity.
        reference: grid (or image whose grid) to sample on; default: the image's own grid.
        interpolation: nearest | linear | bspline | label; default linear, or nearest for labels.
        fill_value: value outside the moving image (background label for labels).
        mapped: ``transform.map_grid(reference)`` when the caller already has it, (1, *shape, dim) mm.
    Returns:
        Image on ``reference`` with the moving image's dtype for labels. Differentiable w.r.t.
        the image data and the transform parameters.
    """
    grid = reference.grid if isinstance(reference, Image) else (reference or image.grid)
    if grid.dim != image.dim:
        raise MorphregError(f"cannot warp a {image.dim}D image onto a {grid.dim}D grid", image.name)
    if transform is not None and transform.dim != image.dim:
        raise MorphregError(f"a {transform.dim}D transform cannot warp a {image.dim}D image", image.name)
    dtype = torch.float64 if image.data.dtype == torch.float64 else torch.float32
    points = None if transform is None else transform.map_grid(grid, dtype=dtype, device=image.data.device) \
        if mapped is None else mapped.to(dtype)
    return sample_onto(image, grid, points, interpolation, fill_value, name=f"{image.name} (warped)")
