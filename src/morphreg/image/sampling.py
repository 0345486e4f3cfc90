"""An image sampled at world points: the one place where interpolation modes and label handling live,
used by resampling (identity) and by every warp (points mapped by a transform, :mod:`morphreg.transforms.warp`)."""
from __future__ import annotations

import torch

from morphreg.core.grid import Grid
from morphreg.core.sampling import sample
from morphreg.errors import MorphregError
from morphreg.image.image import Image
from morphreg.image.labels import label_argmax

WARP_INTERPOLATIONS = ("nearest", "linear", "bspline", "label")


def sample_points(image: Image, points: torch.Tensor, interpolation: str = "linear", fill_value: float = 0.0) -> torch.Tensor:
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

    def score(value: int) -> torch.Tensor:
        onehot = (labels == value).to(points.dtype).unsqueeze(0)
        return sample(onehot, image.grid, points, "linear", fill_value=1.0 if value == background else 0.0)

    return label_argmax(values, score, labels.dtype)[0]


def sample_onto(image: Image, grid: Grid, points: torch.Tensor | None = None, interpolation: str | None = None,
                fill_value: float = 0.0, name: str | None = None) -> Image:
    """``image`` sampled at ``points`` (1, *grid.shape, dim) world mm (default: the points of ``grid``
    itself, i.e. resampling), as an Image on ``grid``. Interpolation defaults to linear, nearest for
    label maps; label maps keep their integer dtype."""
    if grid.dim != image.dim:
        raise MorphregError(f"cannot sample a {image.dim}D image onto a {grid.dim}D grid", image.name)
    interpolation = interpolation or ("nearest" if image.is_label else "linear")
    if points is None:
        dtype = torch.float64 if image.data.dtype == torch.float64 else torch.float32
        points = grid.points(device=image.data.device, dtype=dtype).unsqueeze(0)
    out = sample_points(image, points, interpolation, fill_value)
    return Image(out[0] if out.shape[0] == 1 else out, grid, name=image.name if name is None else name)
