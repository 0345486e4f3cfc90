"""Random spatial and intensity changes of training batches, on the canonical model grid (centred on the
origin, so rotations and scalings turn about the image centre), 2D and 3D.

A random spatial map is S(x) = A (x + u(x)) + t with u the displacement of exp(v), v a smooth random
velocity (coarse noise at ``control_mm`` spacing, interpolated, largest |v| drawn up to
``deformation_mm``), A a random rotation and scaling, t a random shift. Its exact inverse is
S^-1(y) = z + u_-(z), z = A^-1 (y - t), u_- the displacement of exp(-v). Everything is drawn from the
generator given, so a step's changes depend on (seed, step) only and ``--resume`` repeats them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from morphreg.core.grid import Grid
from morphreg.core.sampling import batch_affine_points, sample
from morphreg.transforms.dense import sample_field, scaling_and_squaring


@dataclass
class RandomMap:
    """A batch of random spatial maps (see the module docstring)."""

    grid: Grid  # the grid of the velocity: coarser than the model grid (see random_map)
    matrix: torch.Tensor  # (N, dim, dim)
    shift: torch.Tensor  # (N, dim) mm
    velocity: torch.Tensor  # (N, dim, *grid shape) mm

    def displacement(self, x: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
        """The displacement of exp(sign * v) at points (N, *shape, dim) mm (zero without a deformation)."""
        if not self.velocity.any():
            return torch.zeros_like(x)
        return sample_field(scaling_and_squaring(sign * self.velocity, self.grid), self.grid, x, fill_value=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """S(x) for points (N|1, *shape, dim) on the grid's domain."""
        x = x.expand(len(self.matrix), *x.shape[1:])
        return batch_affine_points(x + self.displacement(x), self.matrix, self.shift)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """S^-1(y) for points (N|1, *shape, dim)."""
        inverse = torch.linalg.inv(self.matrix)
        z = batch_affine_points(y, inverse, -(inverse @ self.shift.unsqueeze(-1)).squeeze(-1))  # A^-1 (y - t)
        return z + self.displacement(z, -1.0)


def rotation(angles: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, dim, dim) rotation matrices: 2D one angle, 3D Euler angles about x, y, z (radians)."""
    c, s = angles.cos(), angles.sin()
    if dim == 2:
        return torch.stack([torch.stack([c[:, 0], -s[:, 0]], -1), torch.stack([s[:, 0], c[:, 0]], -1)], 1)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, c[:, 0], -s[:, 0]], -1),
                      torch.stack([zero, s[:, 0], c[:, 0]], -1)], 1)
    ry = torch.stack([torch.stack([c[:, 1], zero, s[:, 1]], -1), torch.stack([zero, one, zero], -1),
                      torch.stack([-s[:, 1], zero, c[:, 1]], -1)], 1)
    rz = torch.stack([torch.stack([c[:, 2], -s[:, 2], zero], -1), torch.stack([s[:, 2], c[:, 2], zero], -1),
                      torch.stack([zero, zero, one], -1)], 1)
    return rz @ ry @ rx


def smooth_noise(grid: Grid, n: int, channels: int, control_mm: float, gen: torch.Generator) -> torch.Tensor:
    """(N, channels, *shape) smooth random values in about [-1, 1]: noise on a coarse lattice of
    ``control_mm`` spacing, interpolated (cubic in 2D, linear in 3D) onto the grid."""
    coarse = [max(2, math.ceil(e / control_mm) + 1) for e in reversed(grid.extent.tolist())]
    noise = torch.rand((n, channels, *coarse), generator=gen) * 2 - 1
    mode = "bicubic" if grid.dim == 2 else "trilinear"
    return F.interpolate(noise, size=grid.shape, mode=mode, align_corners=True)


def random_map(grid: Grid, n: int, gen: torch.Generator, rotation_deg: float = 0.0, scale: float = 0.0,
               shift_mm: float = 0.0, deformation_mm: float = 0.0, control_mm: float = 20.0, mirror=()) -> RandomMap:
    dim = grid.dim
    angles = (torch.rand((n, 1 if dim == 2 else 3), generator=gen) * 2 - 1) * math.radians(rotation_deg)
    scales = 1 + (torch.rand((n, dim), generator=gen) * 2 - 1) * scale
    if mirror:  # drawn only when asked, so the random stream of a config without it is unchanged
        flips = torch.rand((n, dim), generator=gen) < 0.5
        mirrored = torch.zeros(dim, dtype=torch.bool)
        mirrored[list(mirror)] = True
        scales = torch.where(flips & mirrored, -scales, scales)
    matrix = rotation(angles, dim) @ torch.diag_embed(scales)
    shift = (torch.rand((n, dim), generator=gen) * 2 - 1) * shift_mm
    # The velocity is smooth on the scale of control_mm: integrating it on a grid of ~control_mm / 4 spacing
    # is as exact as on the model grid and (3D, 1.5 mm points, 25 mm control) 64 times less work.
    factor = np.maximum(1, np.floor(control_mm / 4 / grid.spacing)).astype(int)  # per axis: anisotropic grids
    grid = grid.downsample(factor) if (factor > 1).any() else grid
    velocity = torch.zeros((n, dim, *grid.shape))
    if deformation_mm > 0:
        v = smooth_noise(grid, n, dim, control_mm, gen)
        largest = v.flatten(2).norm(dim=1).amax(-1).clamp_min(1e-6).view(n, 1, *[1] * dim)
        velocity = v / largest * deformation_mm * torch.rand((n, 1, *[1] * dim), generator=gen)
    return RandomMap(grid, matrix, shift, velocity)


def change_intensity(x: torch.Tensor, grid: Grid, gen: torch.Generator, noise: float = 0.0, bias: float = 0.0,
                     gamma: float = 0.0, contrast: float = 0.0) -> torch.Tensor:
    """(N, 1, *shape) intensities in about [0, 1]: random gamma, smooth multiplicative bias field,
    contrast / brightness, Gaussian noise (each off when its amplitude is 0)."""
    n = x.shape[0]
    view = (n, 1, *[1] * grid.dim)
    if gamma:
        x = x.clamp_min(0) ** torch.exp(torch.randn(view, generator=gen) * gamma)
    if bias:
        x = x * torch.exp(smooth_noise(grid, n, 1, float(grid.extent.max()) / 2, gen) * bias)
    if contrast:
        a = 1 + (torch.rand(view, generator=gen) * 2 - 1) * contrast
        c = (torch.rand(view, generator=gen) * 2 - 1) * contrast / 2
        x = a * x + c
    if noise:
        x = x + torch.randn(x.shape, generator=gen) * noise
    return x


def warp_batch(batch: dict, keys: tuple[str, ...], grid: Grid, points: torch.Tensor) -> dict:
    """The entries ``keys`` of a batch sampled at points (N, *shape, dim) (labels and masks linearly)."""
    return {**batch, **{k: sample(batch[k], grid, points) for k in keys if k in batch}}


def synthesised_image(labels: torch.Tensor, grid: Grid, gen: torch.Generator, blur_mm: float = 1.0,
                      noise: float = 0.05) -> torch.Tensor:
    """An image made from a one-hot label stack (K, *shape) alone (the SynthMorph idea, Hoffmann et al.,
    IEEE TMI 2022): every label and the background get a random intensity in [0, 1], then per-voxel
    noise and a Gaussian blur of up to ``blur_mm``; (1, *shape). A network trained on such images never
    sees a real contrast, so it cannot learn one."""
    from morphreg.image.filters import gaussian_filter

    k = labels.shape[0]
    background = (1 - labels.sum(0, keepdim=True)).clamp(0, 1)
    stack = torch.cat([background, labels.float()])
    intensity = torch.rand((k + 1,), generator=gen).view(-1, *[1] * grid.dim)
    image = (stack * intensity).sum(0, keepdim=True)
    image = image + torch.randn(image.shape, generator=gen) * noise * float(torch.rand((), generator=gen))
    sigma_mm = blur_mm * float(torch.rand((), generator=gen))
    sigmas = [sigma_mm / s for s in grid.spacing]
    return gaussian_filter(image.unsqueeze(0), sigmas)[0] if sigma_mm > 0 else image


def synthesised_pair(pair: dict, grid: Grid, gen: torch.Generator, blur_mm: float = 1.0) -> dict:
    """``pair`` with its fixed and moving images replaced by images synthesised from its labels, each side
    with its own random contrast."""
    return {**pair, "fixed": synthesised_image(pair["fixed_labels"], grid, gen, blur_mm),
            "moving": synthesised_image(pair["moving_labels"], grid, gen, blur_mm)}
