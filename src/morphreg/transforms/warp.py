"""Backward warping: moving image sampled at T(x) for every point x of a reference grid."""
from __future__ import annotations

import torch

from morphreg.core.sampling import sample
from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.transforms.base import Transform

WARP_INTERPOLATIONS = ("nearest", "linear", "bspline", "label")


def warp_points(image: Image, points: torch.Tensor, interpolation: str = "linear", fill_value: float = 0.0) -> torch.Tensor:
    """Sample ``image`` at world points (N|1, *out, dim) -> (N, C, *out).

    ``label`` picks, per point, the label whose one-hot channel has the largest linearly
    interpolated value (smoother than nearest, never invents values); integer out.
    """
    if interpolation not in WARP_INTERPOLATIONS:
        raise MorphregError(f"unknown interpolation {interpolation!r} (choose from {', '.join(WARP_INTERPOLATIONS)})")
    data = image.data.unsqueeze(0)
    if interpolation == "label":
        return _warp_labels(image, points, int(fill_value))
    if image.is_label:
        if interpolation != "nearest":
            raise MorphregError(f"label maps are warped with 'nearest' or 'label', not {interpolation!r}", image.name)
        out = sample(data.to(points.dtype), image.grid, points, "nearest", fill_value)
        return out.round().to(image.data.dtype)
    return sample(data.to(points.dtype), image.grid, points, interpolation, fill_value)


def _warp_labels(image: Image, points: torch.Tensor, background: int) -> torch.Tensor:
    labels = image.data
    # The background competes too, even when absent from the image: it is what lies outside.
    values = sorted(set(torch.unique(labels).tolist()) | {background})
    best = None
    winner = None
    for value in values:  # one channel at a time keeps memory at two maps, whatever the label count
        onehot = (labels == value).to(points.dtype).unsqueeze(0)
        score = sample(onehot, image.grid, points, "linear", fill_value=1.0 if value == background else 0.0)
        if best is None:
            best, winner = score, torch.full_like(score, value, dtype=labels.dtype)
        else:
            better = score > best
            best = torch.where(better, score, best)
            winner = torch.where(better, torch.as_tensor(value, dtype=labels.dtype), winner)
    return winner


def warp(
    image: Image,
    transform: Transform | None,
    reference: Grid | Image | None = None,
    interpolation: str | None = None,
    fill_value: float = 0.0,
) -> Image:
    """Resample ``image`` onto ``reference`` through ``transform`` (fixed -> moving points).

    Args:
        image: the moving image (any channels; integer data = labels).
        transform: maps reference-grid world points to moving world points; None = identity.
        reference: grid (or image whose grid) to sample on; default: the image's own grid.
        interpolation: nearest | linear | bspline | label; default linear, or nearest for labels.
        fill_value: value outside the moving image (background label for labels).
    Returns:
        Image on ``reference`` with the moving image's dtype for labels. Differentiable w.r.t.
        the image data and the transform parameters.
    """
    grid = reference.grid if isinstance(reference, Image) else (reference or image.grid)
    if grid.dim != image.dim:
        raise MorphregError(f"cannot warp a {image.dim}D image onto a {grid.dim}D grid", image.name)
    if transform is not None and transform.dim != image.dim:
        raise MorphregError(f"a {transform.dim}D transform cannot warp a {image.dim}D image", image.name)
    interpolation = interpolation or ("nearest" if image.is_label else "linear")
    dtype = torch.float64 if image.data.dtype == torch.float64 else torch.float32
    if transform is None:
        points = grid.points(device=image.data.device, dtype=dtype).unsqueeze(0)
    else:
        points = transform.map_grid(grid, dtype=dtype, device=image.data.device)
    out = warp_points(image, points, interpolation, fill_value)
    return Image(out[0] if out.shape[0] == 1 else out, grid, name=f"{image.name} (warped)")
