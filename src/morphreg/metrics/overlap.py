"""Overlap of soft label maps (differentiable): the label term of registration and training losses."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from morphreg.image.filters import gaussian_filter


def soft_dice(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice per sample, mean over channels: (N,) in [0, 1] for two (N, K, *spatial) maps in [0, 1]
    (one-hot or probabilities; K labels without the background)."""
    dims = tuple(range(2, a.dim()))
    inter = (a * b).sum(dims)
    return (2 * inter / (a.sum(dims) + b.sum(dims) + eps)).mean(1)


def soft_dice_loss(fixed_labels: torch.Tensor, warped_labels: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice, mean over the batch: scalar in [0, 1] (0 = perfect overlap)."""
    return 1 - soft_dice(fixed_labels, warped_labels).mean()


def multiscale_soft_dice_loss(fixed_labels: torch.Tensor, warped_labels: torch.Tensor,
                              sigmas_vox: Sequence[Sequence[float]]) -> torch.Tensor:
    """Mean over scales of 1 - soft Dice after smoothing both (N, K, *spatial) maps with a Gaussian of
    each sigma (voxels per index axis x, y[, z]; all 0 = the maps as they are): scalar in [0, 1].

    Why: a small structure (a landmark blob a few mm across) that does not overlap its partner gives
    plain Dice no gradient; blurred copies overlap from further away and pull it in (DeepReg's
    multi-scale Dice, Hu et al. 2018). Each blurred map is divided by its peak, so a blurred blob is a
    soft ball reaching 1 rather than a faint cloud whose Dice stays near 0 even when centred.
    """
    dims = tuple(range(2, fixed_labels.dim()))

    def blurred(x, sigma):
        x = gaussian_filter(x, sigma, boundary="zeros")
        return x / x.amax(dims, keepdim=True).clamp_min(1e-6)

    losses = []
    for sigma in sigmas_vox:
        if any(s > 0 for s in sigma):
            f, w = blurred(fixed_labels, sigma), blurred(warped_labels, sigma)
        else:
            f, w = fixed_labels, warped_labels
        losses.append(soft_dice_loss(f, w))
    return torch.stack(losses).mean()
