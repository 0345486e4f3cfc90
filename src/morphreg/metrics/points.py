"""Distances between corresponding points (world mm): the landmark term of registration and training."""
from __future__ import annotations

import torch


def landmark_loss(mapped: torch.Tensor, target: torch.Tensor, scale_mm: float = 10.0) -> torch.Tensor:
    """mean |T(p_i) - q_i|^2 / scale_mm^2 over points (and batch): scalar, dimensionless.

    mapped, target: (..., K, dim) mm, T(p) and q. The scale makes 10 mm of error weigh as much as a
    similarity loss of order 1 (the default ``landmark_weight`` of 1 then balances the two).
    """
    return ((mapped - target) ** 2).sum(-1).mean() / scale_mm**2


def endpoint_error(mapped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean |T(x) - S(x)| (mm) over points (and batch): the supervised term when the true map S is known.

    mapped, target: (N, *shape, dim) mm. Not squared: in mm, as users read it (EPE)."""
    return (mapped - target).norm(dim=-1).mean()
