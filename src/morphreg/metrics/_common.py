"""Shared helpers of metrics and penalties: mask/weight handling and weighted means."""
from __future__ import annotations

import torch

from morphreg.errors import MorphregError

# Smallest denominator of a weighted mean: an all-zero mask yields 0, not NaN (callers validate masks).
TINY = 1e-12


def as_weight(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Mask or sample weights as a float tensor of rank ``like.dim()`` broadcastable to (N, 1, *spatial).

    Args:
        mask: None, or bool/int/float tensor broadcastable to (N, 1, *spatial) of ``like``, e.g.
            (*spatial), (1, 1, *spatial) or (N, 1, *spatial). Values are weights (0 = ignore).
        like: the (N, C, *spatial) tensor the weights apply to.
    """
    if mask is None:
        return None
    target = (like.shape[0], 1, *like.shape[2:])
    try:
        full = torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        full = None
    # The batch axis may broadcast either way (one mask for N images, or N masks for one image).
    if full is None or len(full) != len(target) or full[1] != 1 or tuple(full[2:]) != target[2:]:
        raise MorphregError(f"mask of shape {tuple(mask.shape)} does not broadcast to (N, 1, *spatial) = {target}")
    w = mask.to(dtype=like.dtype, device=like.device)
    return w.reshape((1,) * (len(target) - w.dim()) + tuple(w.shape))


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over batch and channels of the weighted spatial mean of ``values``.

    Args:
        values: (N, K, *spatial) per-voxel quantities.
        weight: None or (N | 1, 1, *spatial) non-negative weights (see :func:`as_weight`).
    Returns:
        scalar: mean_{n,k} sum_x w(x) v(x) / sum_x w(x).
    """
    if weight is None:
        return values.mean()
    dims = tuple(range(2, values.dim()))
    num = (values * weight).sum(dims)
    den = weight.expand(weight.shape[0], 1, *values.shape[2:]).sum(dims).clamp_min(TINY)
    return (num / den).mean()


def check_pair(fixed: torch.Tensor, warped: torch.Tensor) -> None:
    """Fixed and warped must agree on channels and spatial shape (batch may broadcast)."""
    if fixed.dim() != warped.dim() or fixed.shape[1:] != warped.shape[1:]:
        raise MorphregError(
            f"fixed {tuple(fixed.shape)} and warped {tuple(warped.shape)} must both be (N, C, *spatial) of one shape"
        )
