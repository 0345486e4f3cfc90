"""Random voxel subsets for stochastic optimisation (as elastix's "Random" samplers / ASGD).

Typical use: draw indices once per iteration, warp the moving image only at those points, and
evaluate a pointwise metric (:func:`~morphreg.metrics.mse`, :func:`~morphreg.metrics.ncc`,
:func:`~morphreg.metrics.mutual_information`, :func:`~morphreg.metrics.normalized_mutual_information`)
on the (N, C, P) sample values::

    idx = sample_indices(fixed_mask, 4096, generator)
    pts = index_points(fixed.grid, idx)                      # (P, dim) world mm
    f = gather_voxels(fixed.batch(), idx)                    # (1, C, P)
    m = sample(moving.batch(), moving.grid, transform.points(pts)[None])  # (1, C, P)
    loss = SIMILARITY_LOSSES["mi"](f, m)

Neighbourhood metrics (local NCC, NGF, MIND) need whole images and have no sampled variant.
"""
from __future__ import annotations

import numpy as np
import torch

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid


def sample_indices(
    mask_or_shape: torch.Tensor | tuple[int, ...],
    n: int,
    generator: torch.Generator | None = None,
    replacement: bool = False,
) -> torch.Tensor:
    """Flat indices (P,) of ``n`` random voxels, uniform over the mask's non-zero voxels.

    Args:
        mask_or_shape: a mask (*spatial) or (1, 1, *spatial) (non-zero = eligible), or a spatial
            shape (tensor order) meaning every voxel.
        n: number of samples; without replacement it is capped at the number of eligible voxels.
        generator: torch.Generator for reproducible draws (on the mask's device).
    Returns:
        LongTensor (P,) of indices into the flattened spatial axes (row-major, tensor order).
    """
    if isinstance(mask_or_shape, torch.Tensor):
        # Leading singleton (batch, channel) axes do not change the flat spatial index.
        eligible = torch.nonzero(mask_or_shape.reshape(-1) != 0, as_tuple=False)[:, 0]
        device = mask_or_shape.device
    else:
        eligible = None
        total = int(np.prod(mask_or_shape))
        device = None
    count = eligible.numel() if eligible is not None else total
    if count == 0:
        raise MorphregError("cannot draw samples: the mask is empty")
    if replacement:
        pick = torch.randint(count, (n,), generator=generator, device=device)
    else:
        pick = torch.randperm(count, generator=generator, device=device)[: min(n, count)]
    return pick if eligible is None else eligible[pick]


def gather_voxels(data: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Values of (N, C, *spatial) at flat spatial indices (P,): (N, C, P). Differentiable."""
    return data.flatten(2)[:, :, indices.to(data.device)]


def index_points(grid: Grid, indices: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """World coordinates (P, dim) mm (x, y, z order) of flat spatial indices on ``grid``."""
    idx = indices.detach().cpu().numpy()
    # Unravel in tensor order (z, y, x), then reverse to ITK index order (x, y, z).
    ijk = np.stack(np.unravel_index(idx, grid.shape), axis=-1)[:, ::-1].astype(np.float64)
    return torch.as_tensor(grid.index_to_world_points(ijk), dtype=dtype, device=indices.device)
