"""Stages with their own solver instead of the generic optimiser: ``demons`` and ``convex``.

A preset stage with ``"model": "demons"`` or ``"model": "convex"`` is dispatched here by the
driver (:func:`morphreg.register.api.register`). Each solver returns the stage's own transform
(fixed points -> the space of the previous stages' transform ``prior``), its inverse when it has
one, and a record for ``summary.json`` (trace, seconds per level, objective before/after,
whether it diverged - then the driver keeps the previous transform).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.transforms import Transform
from morphreg.image.sampling import sample_points


@dataclass
class SolverOutcome:
    """transform: the stage's own map (fixed -> prior space); inverse: its inverse or None;
    record: entries merged into the stage's summary record."""

    transform: Transform
    inverse: Transform | None
    record: dict = field(default_factory=dict)


def prior_points(prior: Transform | None, points: torch.Tensor) -> torch.Tensor:
    """prior(points) for (1, *shape, dim) world points (identity without a prior)."""
    return points if prior is None else prior.points(points)


def overlap_mask(moving: Image, points: torch.Tensor, moving_mask: Image | None,
                 fixed_mask: torch.Tensor | None) -> torch.Tensor:
    """(1, 1, *shape) {0, 1}: voxels whose mapped point lies inside the moving image (and masks)."""
    with torch.no_grad():
        w = sample_points(Image(torch.ones(1, *moving.grid.shape), moving.grid), points, "linear", 0.0)
        if moving_mask is not None:
            w = w * sample_points(moving_mask, points, "linear", 0.0)
        if fixed_mask is not None:
            w = w * fixed_mask
        return (w > 0.5).float()


def level_grid_points(grid: Grid) -> torch.Tensor:
    return grid.points(dtype=torch.float32).unsqueeze(0)


def run_solver_stage(kind: str, stage: dict, inputs, prior: Transform | None, levels, modality: str,
                     seed: int, progress, name: str, label_weight: float = 0.0,
                     landmark_weight: float = 0.0) -> SolverOutcome:
    """Run a ``demons`` or ``convex`` stage (see the module docstring). Label and landmark terms
    (weights as in the generic objective) drive the convex method's instance optimisation; demons
    use intensities (or MIND features) only."""
    if kind == "demons":
        from morphreg.register.demons import run_demons_stage

        return run_demons_stage(stage, inputs, prior, levels, modality, progress, name)
    from morphreg.register.convex import run_convex_stage

    return run_convex_stage(stage, inputs, prior, levels, modality, seed, progress, name, label_weight, landmark_weight)


SOLVER_MODELS = ("demons", "convex")
