"""Normalised gradient fields (Haber & Modersitzki 2006): edge alignment for multimodal pairs."""
from __future__ import annotations

import torch

from morphreg.core.differences import index_gradient, world_gradient
from morphreg.image.grid import Grid
from morphreg.metrics._common import as_weight, check_pair, weighted_mean


def _gradient(x: torch.Tensor, grid: Grid | None) -> torch.Tensor:
    """(N, C, *spatial) -> (N, C, dim, *spatial) in intensity/mm (or intensity/voxel without a grid)."""
    return index_gradient(x, x.dim() - 2) if grid is None else world_gradient(x, grid)


def _edge_parameter(sq_norm: torch.Tensor, w: torch.Tensor | None, eta: float) -> torch.Tensor:
    """Data-driven epsilon^2 per (n, c): (eta * RMS gradient magnitude)^2 over the mask, (N, C, 1...)."""
    dims = tuple(range(2, sq_norm.dim()))
    if w is None:
        ms = sq_norm.mean(dims, keepdim=True)
    else:
        ms = (sq_norm * w).sum(dims, keepdim=True) / w.expand(w.shape[0], 1, *sq_norm.shape[2:]).sum(dims, keepdim=True).clamp_min(1e-12)
    return eta**2 * ms + 1e-12


def ngf(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    mask: torch.Tensor | None = None,
    grid: Grid | None = None,
    epsilon: float | tuple[float, float] | None = None,
    eta: float = 0.1,
) -> torch.Tensor:
    """Mean squared cosine between edge-regularised gradients, in [0, 1] (1 = all edges parallel).

    n_I = grad I / sqrt(|grad I|^2 + eps^2); value = weighted mean over voxels of (n_F . n_M)^2.
    Squaring makes it insensitive to the edge polarity, hence to intensity inversion.

    Args:
        fixed, warped: (N, C, *spatial) images; channels are compared pairwise and averaged.
        mask: weights broadcastable to (N, 1, *spatial).
        grid: geometry of both images; gradients are then in intensity/mm (spacing and direction
            respected). Without it they are per voxel.
        epsilon: edge parameter in gradient units (intensity/mm with a grid): gradients much
            weaker than it count as noise. One value for both images or (eps_fixed, eps_warped).
            None: eta times the RMS gradient magnitude of each image over the mask (then the value
            is invariant to any linear intensity remap a * I + b, a != 0).
        eta: relative edge parameter used when ``epsilon`` is None.
    Returns:
        scalar in [0, 1].
    """
    check_pair(fixed, warped)
    w = as_weight(mask, fixed)
    gf, gm = _gradient(fixed, grid), _gradient(warped, grid)
    sf, sm = (gf * gf).sum(2), (gm * gm).sum(2)  # (N, C, *spatial)
    if epsilon is None:
        ef, em = _edge_parameter(sf, w, eta), _edge_parameter(sm, w, eta)
    else:
        eps_f, eps_m = epsilon if isinstance(epsilon, (tuple, list)) else (epsilon, epsilon)
        ef, em = eps_f**2, eps_m**2
    dot = (gf * gm).sum(2)
    cos2 = dot * dot / ((sf + ef) * (sm + em))
    return weighted_mean(cos2, w)
