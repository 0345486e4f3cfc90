"""The registration objective on one pyramid level.

J(T) = w_sim * D(F_k, M_k o T)  [masked]
     + w_label * (1 - soft Dice(F_labels, M_labels o T))
     + w_landmark * mean |T(p_i) - q_i|^2 / s^2
     + sum_i alpha_i * R_i(field of T)

D comes from ``morphreg.metrics.SIMILARITY_LOSSES`` and R_i from ``morphreg.regularizers.PENALTIES``.
Every image (intensities, masks, one-hot labels) is sampled through the one warp path
(:func:`morphreg.image.sampling.sample_points`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.metrics.losses import similarity_loss
from morphreg.optim.models import Mapping, StageModel
from morphreg.regularizers import penalty_function
from morphreg.image.sampling import sample_points


# Similarities whose value depends on the geometry (gradients in mm) get the level grid.
GRID_AWARE = ("ngf",)


@dataclass
class PenaltyTerm:
    name: str
    weight: float
    params: dict = field(default_factory=dict)
    mask: torch.Tensor | None = None  # (1, 1, *level shape) on the level grid, e.g. the rigidity mask

    def __call__(self, f: torch.Tensor, grid: Grid) -> torch.Tensor:
        fn = penalty_function(self.name)
        mask = self.mask
        if mask is not None and tuple(mask.shape[2:]) != tuple(f.shape[2:]):
            raise MorphregError(f"penalty {self.name!r} mask does not match the field grid")
        return self.weight * fn(f, grid, mask=mask, **self.params)


@dataclass
class LevelData:
    """Images of one pyramid level. Masks are float (1, 1, *shape) on the fixed level grid, or Images
    sampled through the transform (moving side)."""

    fixed: Image
    moving: Image
    fixed_mask: torch.Tensor | None = None
    moving_mask: Image | None = None
    fixed_labels: torch.Tensor | None = None  # (1, K, *shape) one-hot float on the fixed level grid
    moving_labels: Image | None = None  # (K, *shape) one-hot float on the moving grid
    landmarks: tuple[torch.Tensor, torch.Tensor] | None = None  # fixed (K, dim), moving (K, dim), mm


class Objective:
    """Callable J(model) on one level; see the module docstring."""

    def __init__(self, level: LevelData, similarity: str, similarity_params: dict | None = None,
                 similarity_weight: float = 1.0, penalties: list[PenaltyTerm] | None = None,
                 label_weight: float = 0.0, landmark_weight: float = 0.0, landmark_scale_mm: float = 10.0):
        self.level = level
        self.grid = level.fixed.grid
        self.sim_name = similarity
        self.sim = similarity_loss(similarity) if similarity_weight else None
        self.sim_params = dict(similarity_params or {})
        if self.sim is not None and similarity in GRID_AWARE and "grid" not in self.sim_params:
            self.sim_params["grid"] = self.grid
        self.sim_weight = similarity_weight
        self.penalties = penalties or []
        self.label_weight = label_weight if level.fixed_labels is not None else 0.0
        self.landmark_weight = landmark_weight if level.landmarks is not None else 0.0
        self.landmark_scale = landmark_scale_mm
        self.fixed_batch = level.fixed.batch().float()
        self.last_terms: dict[str, float] = {}

    def mask(self, m: Mapping) -> torch.Tensor:
        """Weights of the voxels that take part: fixed mask x inside the moving image x moving mask
        (and inside the fixed image for symmetric models). Detached: the overlap must not be a force."""
        lv = self.level
        with torch.no_grad():
            ones = Image(torch.ones(1, *lv.moving.grid.shape), lv.moving.grid)
            w = sample_points(ones, m.moving_points, "linear", 0.0)
            if lv.moving_mask is not None:
                w = w * sample_points(lv.moving_mask, m.moving_points, "linear", 0.0)
            if m.fixed_points is not None:
                w = w * sample_points(Image(torch.ones(1, *self.grid.shape), self.grid), m.fixed_points, "linear", 0.0)
            if lv.fixed_mask is not None:
                w = w * lv.fixed_mask
            return (w > 0.5).float() if w.numel() else w

    def __call__(self, model: StageModel, sample_fraction: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        m = model.evaluate(self.grid)
        lv = self.level
        total = torch.zeros((), dtype=torch.float32)
        terms: dict[str, float] = {}
        if self.sim is not None:
            warped = sample_points(lv.moving.float(), m.moving_points, "linear", 0.0)
            fixed = self.fixed_batch if m.fixed_points is None else sample_points(lv.fixed.float(), m.fixed_points, "linear", 0.0)
            mask = self.mask(m)
            if sample_fraction is not None and sample_fraction < 1:
                keep = torch.rand(mask.shape, generator=generator) < sample_fraction
                mask = mask * keep
            if float(mask.sum()) < 1:
                raise MorphregError("the images do not overlap (or the masks are empty) under the current transform")
            d = self.sim_weight * self.sim(fixed, warped, mask=mask, **self.sim_params)
            terms["similarity"] = float(d.detach())
            total = total + d
        if self.label_weight:
            warped_labels = sample_points(lv.moving_labels, m.moving_points, "linear", 0.0)
            fl = lv.fixed_labels if m.fixed_points is None else sample_points(
                Image(lv.fixed_labels[0], self.grid), m.fixed_points, "linear", 0.0)
            loss = self.label_weight * (1 - soft_dice(fl, warped_labels))
            terms["labels"] = float(loss.detach())
            total = total + loss
        if self.landmark_weight:
            p, q = lv.landmarks
            err = ((model.map_points(p) - q) ** 2).sum(-1).mean() / self.landmark_scale**2
            terms["landmarks"] = float(err.detach())
            total = total + self.landmark_weight * err
        if m.field is not None:
            for pen in self.penalties:
                value = pen(m.field, m.field_grid)
                terms[pen.name] = float(value.detach())
                total = total + value
        self.last_terms = terms
        return total


def soft_dice(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean soft Dice over channels of two (N, K, *spatial) maps in [0, 1]."""
    dims = tuple(range(2, a.dim()))
    inter = (a * b).sum(dims)
    return (2 * inter / (a.sum(dims) + b.sum(dims) + eps)).mean()
