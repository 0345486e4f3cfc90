"""Finite differences on grids: the one implementation used by Jacobians and regularisers."""
from __future__ import annotations

import torch

from morphreg.image.grid import Grid


def index_gradient(field: torch.Tensor, dim: int) -> torch.Tensor:
    """Derivatives along each index axis (voxel units), central inside and one-sided at the borders.

    Args:
        field: (N, C, *spatial) with ``dim`` spatial axes.
    Returns:
        (N, C, dim, *spatial); entry k is d/d i_k with k in ITK order (x first).
    """
    grads = []
    for k in range(dim):
        axis = field.dim() - 1 - k
        n = field.shape[axis]
        if n == 1:
            grads.append(torch.zeros_like(field))
            continue
        fwd = field.narrow(axis, 1, n - 1) - field.narrow(axis, 0, n - 1)  # n-1 forward differences
        first = fwd.narrow(axis, 0, 1)
        last = fwd.narrow(axis, n - 2, 1)
        inner = (fwd.narrow(axis, 1, n - 2) + fwd.narrow(axis, 0, n - 2)) / 2 if n > 2 else fwd.narrow(axis, 0, 0)
        grads.append(torch.cat([first, inner, last], dim=axis))
    return torch.stack(grads, dim=2)


def world_gradient(field: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Spatial gradient w.r.t. world coordinates (mm): (N, C, *spatial) -> (N, C, dim, *spatial).

    Uses d/dx = (dI/dx)^T d/dI with dI/dx = S^-1 D^T, so oblique grids are handled.
    """
    dim = grid.dim
    g_idx = index_gradient(field, dim)
    m = torch.as_tensor(grid.world_to_index()[:dim, :dim], dtype=field.dtype, device=field.device)  # di/dx
    # d/dx_j = sum_k (di_k/dx_j) d/di_k
    return torch.einsum("kj,nck...->ncj...", m, g_idx)
