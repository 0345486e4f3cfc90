"""Resampling onto other grids, cropping and padding by index, cropping to a mask.

Resampling goes through the one sampling path (``morphreg.image.sampling``, which warps use too, hence
``morphreg.core.sampling.sample``); label maps keep their integer dtype. Cropping and padding slice
or extend the tensor and move the origin, so every kept voxel stays at the same world position.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from morphreg.errors import MorphregError
from morphreg.image.filters import gaussian_smooth
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.sampling import sample_onto


def _index_vector(values, dim: int, name: str) -> np.ndarray:
    arr = np.asarray(values).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, dim)
    if arr.size != dim or not np.all(np.equal(np.mod(arr, 1), 0)):
        raise MorphregError(f"{name} must be {dim} whole voxel counts (ITK order x, y[, z]), got {arr.tolist()}")
    return arr.astype(int)


def resample(
    image: Image,
    reference: Grid | Image,
    interpolation: str | None = None,
    fill_value: float = 0.0,
) -> Image:
    """Sample ``image`` at the points of ``reference`` (a grid or an image's grid), in world space.

    interpolation: nearest | linear | bspline | label (default linear, nearest for label maps);
    points outside the image get ``fill_value``. No smoothing: use :func:`resample_to_spacing` or
    smooth first when the new grid is much coarser.
    """
    grid = reference.grid if isinstance(reference, Image) else reference
    if not isinstance(grid, Grid):
        raise MorphregError(f"resample needs a Grid or Image as reference, got {type(reference).__name__}")
    return sample_onto(image, grid, None, interpolation, fill_value)


def antialias_sigma_mm(old_spacing, new_spacing) -> np.ndarray:
    """Smoothing before going from ``old_spacing`` to ``new_spacing`` (mm, per index axis).

    sigma = (new - old) / 2 mm where the spacing grows, 0 elsewhere: the scikit-image choice
    sigma_vox = (factor - 1) / 2, which removes most content above the new Nyquist frequency.
    """
    old = np.asarray(old_spacing, np.float64)
    new = np.asarray(new_spacing, np.float64)
    return np.maximum(0.0, (new - old) / 2)


def resample_to_spacing(
    image: Image,
    spacing_mm,
    interpolation: str | None = None,
    antialias: bool = True,
    fill_value: float = 0.0,
) -> Image:
    """Resample to a new voxel spacing (mm, scalar or per index axis x, y[, z]).

    The new grid keeps the direction and the centre and covers the same physical extent
    (``Grid.with_spacing``). Intensity images are smoothed first along the axes whose spacing grows
    (see :func:`antialias_sigma_mm`) unless ``antialias`` is False; label maps never are.
    """
    grid = image.grid.with_spacing(spacing_mm)
    if antialias and not image.is_label:
        sigma = antialias_sigma_mm(image.spacing, grid.spacing)
        if np.any(sigma > 0):
            image = gaussian_smooth(image, sigma)
    return resample(image, grid, interpolation, fill_value)


def crop(image: Image, start, stop) -> Image:
    """Voxels with index start <= i < stop per axis (ITK order x, y[, z]); world positions kept."""
    start = _index_vector(start, image.dim, "crop start")
    stop = _index_vector(stop, image.dim, "crop stop")
    size = np.asarray(image.grid.size)
    if np.any(start < 0) or np.any(stop > size) or np.any(stop <= start):
        raise MorphregError(
            f"crop [{start.tolist()}, {stop.tolist()}) is empty or outside the image size {size.tolist()}", image.name
        )
    # Index axis k is tensor axis (dim - k) of (C, *shape).
    slices = [slice(None)] + [slice(int(start[k]), int(stop[k])) for k in reversed(range(image.dim))]
    return Image(image.data[tuple(slices)], image.grid.crop(start, stop), image.name)


def pad(image: Image, before, after, value: float = 0.0) -> Image:
    """Add ``before``/``after`` voxels per axis (ITK order x, y[, z]) filled with ``value``.

    The origin moves so the original voxels keep their world positions. Integer images stay integer.
    """
    before = _index_vector(before, image.dim, "pad before")
    after = _index_vector(after, image.dim, "pad after")
    if np.any(before < 0) or np.any(after < 0):
        raise MorphregError(f"pad widths must be >= 0, got {before.tolist()} and {after.tolist()}", image.name)
    widths = []
    for k in range(image.dim):  # F.pad lists the last tensor axis (index axis x) first
        widths += [int(before[k]), int(after[k])]
    data = F.pad(image.data, widths, mode="constant", value=value)
    grid = image.grid.crop(-before, np.asarray(image.grid.size) + after)
    return Image(data, grid, image.name)


def mask_bounds(mask: Image, grid: Grid | None = None, margin_mm=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Index box [start, stop) on ``grid`` (default the mask's) holding every non-zero mask voxel plus
    ``margin_mm`` (scalar or per index axis), clipped to the grid. ITK order x, y[, z]."""
    grid = grid or mask.grid
    if grid.dim != mask.dim:
        raise MorphregError(f"a {mask.dim}D mask cannot crop a {grid.dim}D image", mask.name)
    inside = (mask.data != 0).any(dim=0)
    if not bool(inside.any()):
        raise MorphregError("the mask is empty (no non-zero voxel)", mask.name)
    nz = torch.nonzero(inside)  # (P, dim) tensor order
    lo = nz.min(0).values.flip(0).cpu().numpy()
    hi = nz.max(0).values.flip(0).cpu().numpy()
    if grid.same_as(mask.grid):
        lo_i, hi_i = lo.astype(np.float64), hi.astype(np.float64)
    else:
        # Corners of the mask's index box, in the target grid's index space (conservative if oblique).
        box = np.meshgrid(*[[lo[k], hi[k]] for k in range(mask.dim)], indexing="ij")
        corners = np.array(box).reshape(mask.dim, -1).T
        idx = grid.world_to_index_points(mask.grid.index_to_world_points(corners))
        lo_i, hi_i = idx.min(0), idx.max(0)
    margin = np.asarray(margin_mm, np.float64) * np.ones(grid.dim)
    if np.any(margin < 0):
        raise MorphregError(f"margin {margin.tolist()} mm must be >= 0", mask.name)
    m_vox = margin / grid.spacing
    start = np.floor(lo_i - m_vox + 1e-6).astype(int)
    stop = np.ceil(hi_i + m_vox - 1e-6).astype(int) + 1
    size = np.asarray(grid.size)
    start, stop = np.clip(start, 0, size), np.clip(stop, 0, size)
    if np.any(stop <= start):
        raise MorphregError("the mask does not overlap the image", mask.name)
    return start, stop


def crop_to_mask(image: Image, mask: Image, margin_mm=0.0) -> Image:
    """Crop ``image`` to the bounding box of ``mask``'s non-zero voxels plus ``margin_mm``.

    The mask may lie on another grid; its extent is mapped through world space.
    """
    start, stop = mask_bounds(mask, image.grid, margin_mm)
    return crop(image, start, stop)
