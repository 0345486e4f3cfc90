"""Random cubes of a level grid: the stochastic samples of full-resolution levels.

Each iteration compares the images on a few random cubes inside the fixed image's foreground
(stochastic gradient, as elastix's random samplers, but cubes so that LNCC keeps its windows).
"""
from __future__ import annotations

import torch

from morphreg.core.grid import Grid


class PatchSampler:
    """Random cubes of a grid whose centres lie in a foreground.

    Args:
        grid: the level's grid; ``foreground``: (1, 1, *grid.shape) bool, where cube centres may lie.
        count: cubes per draw; ``size``: cube edge in voxels (clipped to the grid).
        seed: the draws are reproducible.
    """

    def __init__(self, grid: Grid, foreground: torch.Tensor, count: int, size: int, seed: int = 0):
        self.grid, self.count = grid, int(count)
        shape = torch.tensor(grid.shape)
        self.size = torch.clamp(torch.full_like(shape, int(size)), max=shape)
        self.max_start = shape - self.size
        self.centres = foreground[0, 0].nonzero()
        if len(self.centres) == 0:  # no foreground: anywhere
            self.centres = torch.ones(grid.shape, dtype=torch.bool).nonzero()
        axes = [torch.arange(int(n)) for n in self.size]
        self.offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*size, dim), tensor axis order
        m = torch.as_tensor(grid.index_to_world(), dtype=torch.float32)
        self.matrix, self.origin = m[: grid.dim, : grid.dim], m[: grid.dim, grid.dim]
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """World points of ``count`` cubes, mm, (1, count, *size, dim) (x, y, z last)."""
        # CPU generators draw on the CPU (under a CUDA default device too), then move to the centres' device.
        pick = torch.randint(len(self.centres), (self.count,), generator=generator or self.generator, device="cpu")
        pick = pick.to(self.centres.device)
        start = torch.minimum(torch.clamp(self.centres[pick] - self.size // 2, min=0), self.max_start)
        index = (start.view(self.count, *[1] * len(self.size), -1) + self.offsets).flip(-1).float()
        return (index @ self.matrix.T + self.origin).unsqueeze(0)


def foreground(image: torch.Tensor, mask: torch.Tensor | None = None, fraction: float = 0.01) -> torch.Tensor:
    """Where the fixed image is not background: ``mask`` when given, else above min + fraction of its range."""
    if mask is not None:
        return mask > 0
    lo, hi = image.min(), image.max()
    return image > lo + fraction * (hi - lo)
