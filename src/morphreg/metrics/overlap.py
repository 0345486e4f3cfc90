"""Overlap of soft label maps (differentiable): the label term of registration and training losses."""
from __future__ import annotations

import torch


def soft_dice(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice per sample, mean over channels: (N,) in [0, 1] for two (N, K, *spatial) maps in [0, 1]
    (one-hot or probabilities; K labels without the background)."""
    dims = tuple(range(2, a.dim()))
    inter = (a * b).sum(dims)
    return (2 * inter / (a.sum(dims) + b.sum(dims) + eps)).mean(1)


def soft_dice_loss(fixed_labels: torch.Tensor, warped_labels: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice, mean over the batch: scalar in [0, 1] (0 = perfect overlap)."""
    return 1 - soft_dice(fixed_labels, warped_labels).mean()
