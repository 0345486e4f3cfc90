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


@dataclass
class SpinePair(PhantomPair):
    rigidity_mask: Image | None = None  # the bones of the fixed image (uint8), where true_transform is rigid


def _box_distance(points: torch.Tensor, center: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Distance (mm) of each point to an axis-aligned box (0 inside)."""
    return ((points - center).abs() - half).clamp_min(0).norm(dim=-1)


def spine_phantom_pair(dim: int = 2, size: int = 48, spacing: float = 2.0, seed: int = 0, bones: int = 3,
                       rotation_deg: float = 8.0, shift_mm: float = 4.0, magnitude_mm: float = 5.0,
                       margin_mm: float = 6.0) -> SpinePair:
    """A CT-like fixed and an MR-like moving image of a 'spine': ``bones`` vertebra boxes stacked along y
    inside a soft-tissue body, for the rigidity settings of learned registration (issue 13).

    The true fixed -> moving map moves each bone rigidly (its own random rotation and shift) and the soft
    tissue by a smooth random deformation, blended over ``margin_mm`` around each bone, so it is exactly
    rigid inside the bones and deforms elsewhere. Labels: 1 body, 2.. one per bone. Contrast differs by
    modality: CT bone bright (1.0) on 0.35 tissue, MR bone dark (0.15) on 0.6 tissue, each with its own
    texture; the moving image is drawn from the moving labels. ``rigidity_mask``: the fixed bones.
    """
    grid = Grid([size] * dim, [-(size - 1) * spacing / 2] * dim, spacing)
    x = grid.points(dtype=torch.float32)
    ext = torch.as_tensor(grid.extent, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    labels = (_ellipsoid(x, [0.0] * dim, 0.42 * ext) <= 1).to(torch.int16)
    height = 0.6 * float(ext[1]) / bones - margin_mm  # along y, with a disc of margin_mm between bones
    half = torch.tensor([0.12, height / 2 / float(ext[1]), 0.12][:dim]) * ext
    half[1] = height / 2
    centres = [torch.tensor([0.0, (b - (bones - 1) / 2) * (height + margin_mm), 0.0][:dim]) for b in range(bones)]
    with torch.no_grad():
        u_soft = smooth_deformation(grid, magnitude_mm, seed).displacement(grid)[0]  # (dim, *shape)
    u = torch.movedim(u_soft, 0, -1)
    weights = [(1 - _box_distance(x, c, half) / margin_mm).clamp(0, 1) for c in centres]
    for b, (c, w) in enumerate(zip(centres, weights)):
        labels[_box_distance(x, c, half) == 0] = 2 + b
        angles = np.deg2rad(rotation_deg) * rng.uniform(-1, 1, 1 if dim == 2 else 3)
        rigid = RigidTransform(dim, angles, rng.uniform(-1, 1, dim) * shift_mm, c.numpy().astype(np.float64))
        with torch.no_grad():
            u_bone = rigid.points(x.reshape(-1, dim)).reshape(x.shape) - x
        u = u + w.unsqueeze(-1) * (u_bone - torch.movedim(u_soft, 0, -1))
    from morphreg.transforms.dense import DisplacementFieldTransform

    true = DisplacementFieldTransform(torch.movedim(u, -1, 0).unsqueeze(0).contiguous(), grid).freeze()
    with torch.no_grad():
        fixed_labels = Image(labels[None], grid, "spine_fixed_labels")
        moving_labels = warp(fixed_labels, true.inverse(grid), grid, "label")
    gen = torch.Generator().manual_seed(seed)

    def draw(label_map: torch.Tensor, tissue: float, bone: float) -> torch.Tensor:
        phases = torch.rand(dim, generator=gen) * 6.28
        texture = sum(torch.sin(x[..., k] / (5.0 + 2 * k) + phases[k]) for k in range(dim)) / (5 * dim)
        image = torch.where(label_map >= 2, bone, torch.where(label_map == 1, tissue, 0.0))
        return torch.where(label_map > 0, image + texture, image)[None]

    fixed = Image(draw(labels, 0.35, 1.0), grid, "spine_ct")
    moving = Image(draw(moving_labels.data[0], 0.6, 0.15), grid, "spine_mr")
    mask = Image((labels >= 2).to(torch.uint8)[None], grid, "spine_bones")
    return SpinePair(fixed, moving, fixed_labels, moving_labels, true, mask)


def write_spine_dataset(folder, pairs: int = 10, val: int = 2, dim: int = 2, size: int = 48, seed: int = 0) -> dict:
    """Write ``pairs`` spine phantom pairs (:func:`spine_phantom_pair`, seeds seed..) as NIfTI files and
    ``train.csv`` (the first pairs - val) and ``val.csv`` (the last ``val``) with the columns fixed, moving,
    fixed_labels, moving_labels, rigidity_mask of learned registration. Returns {"train", "val"} paths."""
    import csv
    from pathlib import Path

    from morphreg.image.io import write_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(pairs):
        p = spine_phantom_pair(dim=dim, size=size, seed=seed + i)
        row = {"id": f"spine{seed + i:03d}"}
        for key, image in (("fixed", p.fixed), ("moving", p.moving), ("fixed_labels", p.fixed_labels),
                           ("moving_labels", p.moving_labels), ("rigidity_mask", p.rigidity_mask)):
            row[key] = f"{row['id']}_{key}.nii.gz"
            write_image(image, folder / row[key])
        rows.append(row)
    out = {}
    for name, part in (("train", rows[: pairs - val]), ("val", rows[pairs - val:])):
        out[name] = folder / f"{name}.csv"
        with open(out[name], "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(part)
    return out
