"""The one sampler: values of a gridded tensor at world points (backward mapping).

Everything that resamples (image warping, displacement-field lookup, scaling and squaring, label
warping, networks' spatial transformers) goes through :func:`sample`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from morphreg.core.bspline import bspline_prefilter, evaluate_bspline
from morphreg.errors import MorphregError
from morphreg.image.grid import Grid

INTERPOLATIONS = ("nearest", "linear", "bspline")


def affine_points(points: torch.Tensor, matrix) -> torch.Tensor:
    """Apply a homogeneous (dim+1, dim+1) matrix to points (..., dim)."""
    m = torch.as_tensor(matrix, dtype=points.dtype, device=points.device)
    dim = points.shape[-1]
    return points @ m[:dim, :dim].T + m[:dim, dim]


def sample(
    data: torch.Tensor,
    grid: Grid,
    points: torch.Tensor,
    interpolation: str = "linear",
    fill_value: float | None = 0.0,
    prefiltered: bool = False,
) -> torch.Tensor:
    """Sample ``data`` defined on ``grid`` at world points.

    Args:
        data: (N, C, *grid.shape) floating tensor.
        grid: geometry of ``data``.
        points: world points, mm, (N or 1, *out, dim); ``out`` is any shape (flattened internally).
        interpolation: "nearest", "linear" or "bspline" (cubic B-spline, mirror boundary).
        fill_value: value outside the image domain (continuous index outside [-0.5, n - 0.5], as in
            ITK); ``None`` extends the border values instead.
        prefiltered: ``data`` already holds B-spline coefficients (bspline only).
    Returns:
        (N, C, *out). Differentiable w.r.t. ``data`` and ``points``.
    """
    if interpolation not in INTERPOLATIONS:
        raise MorphregError(f"unknown interpolation {interpolation!r} (choose from {', '.join(INTERPOLATIONS)})")
    dim = grid.dim
    n_batch = max(data.shape[0], points.shape[0])
    out_shape = points.shape[1:-1]
    pts = points.reshape(points.shape[0], -1, dim)
    index = affine_points(pts, grid.world_to_index())
    if interpolation == "bspline":
        coef = data if prefiltered else bspline_prefilter(data, dim)
        values = evaluate_bspline(coef, index, boundary="mirror")
    else:
        norm = affine_points(index, grid.index_to_norm())
        view = (norm.shape[0], norm.shape[1]) + (1,) * (dim - 1) + (dim,)
        values = F.grid_sample(
            data.expand(n_batch, *data.shape[1:]) if data.shape[0] != n_batch else data,
            norm.reshape(view).expand(n_batch, *view[1:]),
            mode="bilinear" if interpolation == "linear" else "nearest",
            padding_mode="border",
            align_corners=True,
        ).reshape(n_batch, data.shape[1], -1)
    if fill_value is not None:
        size = torch.as_tensor(grid.size, dtype=index.dtype, device=index.device)
        inside = ((index >= -0.5) & (index <= size - 0.5)).all(dim=-1)  # (N, P)
        values = torch.where(inside[:, None, :], values, torch.as_tensor(fill_value, dtype=values.dtype, device=values.device))
    return values.reshape(values.shape[0], values.shape[1], *out_shape)
