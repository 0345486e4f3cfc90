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


def centroid_distance(fixed_labels: torch.Tensor, warped_labels: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Mean distance (mm) between the centroids of corresponding label channels: the TRE of point-like
    labels (landmarks drawn as small blobs), differentiable through the warped labels.

    fixed_labels, warped_labels: (N, K, *spatial) in [0, 1]; points: their world positions (1, *spatial, dim).
    Channels empty in either map are left out (0 when none is left)."""
    flat = points.reshape(1, 1, -1, points.shape[-1])
    a, b = fixed_labels.flatten(2).unsqueeze(-1), warped_labels.flatten(2).unsqueeze(-1)
    mass_a, mass_b = a.sum(2), b.sum(2)  # (N, K, 1)
    centre_a = (a * flat).sum(2) / mass_a.clamp_min(1e-6)
    centre_b = (b * flat).sum(2) / mass_b.clamp_min(1e-6)
    present = ((mass_a > 1e-3) & (mass_b > 1e-3)).squeeze(-1)
    distance = (centre_a - centre_b).norm(dim=-1)
    return distance[present].mean() if present.any() else distance.sum() * 0


def box_distance(fixed_labels: torch.Tensor, warped_labels: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Mean distance (mm) between the bounding boxes of corresponding label channels, differentiable: per
    world axis, the box is centroid +- sqrt(3) x standard deviation (exact for a solid box), and the term
    is the mean over channels and axes of |low_f - low_w| + |high_f - high_w|, halved (a shift of d mm
    gives d). Shapes as :func:`centroid_distance`; empty channels are left out (0 when none is left)."""
    flat = points.reshape(1, 1, -1, points.shape[-1])
    half_widths, centres, present = [], [], None
    for labels in (fixed_labels, warped_labels):
        w = labels.flatten(2).unsqueeze(-1)  # (N, K, P, 1)
        mass = w.sum(2)
        centre = (w * flat).sum(2) / mass.clamp_min(1e-6)  # (N, K, dim)
        variance = (w * (flat - centre.unsqueeze(2)) ** 2).sum(2) / mass.clamp_min(1e-6)
        centres.append(centre)
        half_widths.append(3 ** 0.5 * (variance + 1e-6).sqrt())
        ok = (mass > 1e-3).squeeze(-1)
        present = ok if present is None else present & ok
    low = [c - h for c, h in zip(centres, half_widths)]
    high = [c + h for c, h in zip(centres, half_widths)]
    distance = ((low[0] - low[1]).abs() + (high[0] - high[1]).abs()).mean(-1) / 2  # (N, K)
    return distance[present].mean() if present.any() else distance.sum() * 0
