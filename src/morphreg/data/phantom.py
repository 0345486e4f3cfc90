"""Synthetic phantoms with a known smooth deformation (the built-in example; no downloads)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.transforms.base import Transform
from morphreg.transforms.composite import CompositeTransform
from morphreg.transforms.dense import StationaryVelocityFieldTransform
from morphreg.transforms.linear import RigidTransform
from morphreg.transforms.bspline import BSplineTransform
from morphreg.transforms.warp import warp


@dataclass
class PhantomPair:
    fixed: Image
    moving: Image
    fixed_labels: Image
    moving_labels: Image
    true_transform: Transform  # fixed -> moving points, so warp(moving, true_transform) ~ fixed


def _ellipsoid(points: torch.Tensor, center, radii) -> torch.Tensor:
    q = (points - torch.as_tensor(center, dtype=points.dtype)) / torch.as_tensor(radii, dtype=points.dtype)
    return (q * q).sum(-1)


def phantom_image(grid: Grid, seed: int = 0) -> tuple[Image, Image]:
    """A body-like phantom: intensity image in [0, 1] and its integer label map (0..4)."""
    x = grid.points(dtype=torch.float32)
    c = torch.as_tensor(grid.center(), dtype=torch.float32)
    ext = torch.as_tensor(grid.extent, dtype=torch.float32)
    dim = grid.dim
    labels = torch.zeros(grid.shape, dtype=torch.int16)
    image = torch.zeros(grid.shape)
    structures = [  # (label, centre offset as share of extent, radii as share of extent, intensity)
        (1, [0.0] * dim, [0.40, 0.33, 0.36][:dim], 0.35),
        (2, [-0.15, 0.05, 0.05][:dim], [0.12, 0.16, 0.14][:dim], 0.80),
        (3, [0.17, -0.05, 0.0][:dim], [0.10, 0.10, 0.18][:dim], 0.60),
        (4, [0.02, 0.16, -0.10][:dim], [0.07, 0.07, 0.07][:dim], 0.10),
    ]
    for label, off, radii, value in structures:
        inside = _ellipsoid(x, c + torch.tensor(off) * ext, torch.tensor(radii) * ext) <= 1
        labels[inside] = label
        image[inside] = value
    # Smooth texture so that intensity-based registration has something to grip inside structures.
    gen = torch.Generator().manual_seed(seed)
    phases = torch.rand(3, dim, generator=gen) * 6.28
    texture = sum(torch.sin(x[..., k] / (6.0 + 3 * k) + phases[k, k]) for k in range(dim)) / (4 * dim)
    image = torch.where(labels > 0, image + texture, image)
    return Image(image[None], grid, "phantom"), Image(labels[None], grid, "phantom_labels")


def smooth_deformation(grid: Grid, magnitude_mm: float = 4.0, seed: int = 0) -> StationaryVelocityFieldTransform:
    """A random smooth diffeomorphism exp(v): v is a coarse cubic B-spline field, max |v| = magnitude."""
    gen = torch.Generator().manual_seed(seed)
    coarse = BSplineTransform.for_grid(grid, float(grid.extent.max()) / 3)
    with torch.no_grad():
        coarse.coefficients.copy_(torch.randn(coarse.coefficients.shape, generator=gen))
        v = coarse.displacement(grid)
        v = v * (magnitude_mm / v.norm(dim=1).max())
    return StationaryVelocityFieldTransform(v, grid, steps=7)


def make_phantom_pair(dim: int = 3, size: int = 64, spacing: float = 1.5, seed: int = 0,
                      magnitude_mm: float = 4.0, rotation_deg: float = 4.0, shift_mm: float = 3.0) -> PhantomPair:
    """Fixed phantom plus a moving copy deformed by a known rigid + smooth transform.

    The moving image is the fixed one resampled through the inverse of ``true_transform``, so
    warping the moving image with ``true_transform`` recovers the fixed image.
    """
    origin = [-(size - 1) * spacing / 2 + 10.0 * k for k in range(dim)]
    grid = Grid([size] * dim, origin, spacing)
    fixed, fixed_labels = phantom_image(grid, seed)
    rng = np.random.default_rng(seed)
    angles = np.deg2rad(rotation_deg) * rng.uniform(-1, 1, 1 if dim == 2 else 3)
    rigid = RigidTransform(dim, angles, rng.uniform(-1, 1, dim) * shift_mm, grid.center())
    smooth = smooth_deformation(grid, magnitude_mm, seed)
    true = CompositeTransform([rigid, smooth])
    with torch.no_grad():
        inverse = true.inverse()
        moving = warp(fixed, inverse, grid, "linear")
        moving_labels = warp(fixed_labels, inverse, grid, "label")
    moving.name, moving_labels.name = "phantom_moving", "phantom_moving_labels"
    return PhantomPair(fixed, moving, fixed_labels, moving_labels, true)
