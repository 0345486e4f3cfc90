"""The registration objective on one pyramid level, in two evaluations of the same loss terms.

:class:`Objective` is the general one: every model is evaluated in world coordinates at the level
grid's points (prior included), images, masks and one-hot labels are sampled through the one warp
path (:func:`morphreg.image.sampling.sample_points`), and only voxels whose mapped point lies inside
the moving image (and masks) count.

:class:`SameGridObjective` is the fast one for image-only dense stages (the SyN class): the moving
image was resampled once through the prior onto the fixed grid, so both images live on one grid; the
model's displacements are upsampled from the field grid (exact for ``Grid.downsample`` copies of one
grid) and the images are sampled with their border values extended; full-resolution levels may draw
random cubes instead of the whole grid (:mod:`morphreg.optim.cubes`).

Both return the total of :func:`morphreg.optim.terms.loss_terms` and keep the terms by name
(``last_terms``); ``probe(model)`` gives the data terms at fixed points, for the divergence check.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from morphreg.core.grid import Grid
from morphreg.core.sampling import sample
from morphreg.errors import MorphregError
from morphreg.image.image import Image
from morphreg.image.sampling import sample_points
from morphreg.optim.cubes import PatchSampler
from morphreg.optim.models import DenseModel, StageModel, upsample_field
from morphreg.optim.terms import DATA_TERMS, PenaltyTerm, StageLoss, loss_terms, total


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


def _floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}


def _data_value(terms: dict[str, torch.Tensor]) -> float:
    return float(total({k: v for k, v in terms.items() if k in DATA_TERMS}))


class Objective:
    """J(model) on one level, general evaluation; see the module docstring."""

    def __init__(self, level: LevelData, loss: StageLoss, penalties: list[PenaltyTerm] | None = None):
        self.level, self.loss = level, loss
        self.grid = level.fixed.grid
        self.penalties = penalties or []
        self.fixed_batch = level.fixed.batch().float()
        self.last_terms: dict[str, float] = {}

    def mask(self, moving_points: torch.Tensor, fixed_points: torch.Tensor | None) -> torch.Tensor:
        """Weights of the voxels that take part: fixed mask x inside the moving image x moving mask
        (and inside the fixed image for symmetric models). Detached: the overlap must not be a force."""
        lv = self.level
        with torch.no_grad():
            ones = Image(torch.ones(1, *lv.moving.grid.shape), lv.moving.grid)
            w = sample_points(ones, moving_points, "linear", 0.0)
            if lv.moving_mask is not None:
                w = w * sample_points(lv.moving_mask, moving_points, "linear", 0.0)
            if fixed_points is not None:
                w = w * sample_points(Image(torch.ones(1, *self.grid.shape), self.grid), fixed_points, "linear", 0.0)
            if lv.fixed_mask is not None:
                w = w * lv.fixed_mask
            return (w > 0.5).float() if w.numel() else w

    def terms(self, model: StageModel, sample_fraction: float | None = None,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        m = model.evaluate(self.grid)
        lv, loss = self.level, self.loss
        images = {}
        if loss.similarity is not None and loss.similarity_weight:
            warped = sample_points(lv.moving.float(), m.moving_points, "linear", 0.0)
            fixed = self.fixed_batch if m.fixed_points is None else sample_points(lv.fixed.float(), m.fixed_points, "linear", 0.0)
            mask = self.mask(m.moving_points, m.fixed_points)
            if sample_fraction is not None and sample_fraction < 1:
                keep = torch.rand(mask.shape, generator=generator, device="cpu" if generator is None else generator.device)
                mask = mask * (keep.to(mask.device) < sample_fraction)
            if float(mask.sum()) < 1:
                raise MorphregError("the images do not overlap (or the masks are empty) under the current transform")
            images = dict(fixed=fixed, warped=warped, mask=mask, grid=self.grid)
        labels = {}
        if lv.fixed_labels is not None and loss.label_weight:
            fl = lv.fixed_labels if m.fixed_points is None else sample_points(
                Image(lv.fixed_labels[0], self.grid), m.fixed_points, "linear", 0.0)
            labels = dict(fixed_labels=fl, warped_labels=sample_points(lv.moving_labels, m.moving_points, "linear", 0.0))
        points = {}
        if lv.landmarks is not None and loss.landmark_weight:
            p, q = lv.landmarks
            points = dict(mapped_points=model.map_points(p), target_points=q)
        return loss_terms(loss, **images, **labels, **points, field=m.field, field_grid=m.field_grid,
                          penalties=self.penalties)

    def __call__(self, model: StageModel, sample_fraction: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        terms = self.terms(model, sample_fraction, generator)
        self.last_terms = _floats(terms)
        return total(terms)

    def probe(self, model: StageModel) -> float:
        """The data terms (no penalties) on the whole level grid, without gradients."""
        with torch.no_grad():
            terms = self.terms(model)
        self.last_terms = _floats(terms)
        return _data_value(terms)


class SameGridObjective:
    """J(model) on one level, both images on one grid; see the module docstring.

    Args:
        fixed, moving: (1, C, *grid.shape) level images (the moving one already through the prior).
        mask: (1, 1, *grid.shape) fixed-side weights or None.
        sampler: random cubes per call (stochastic level) or None (the whole grid).
        probe_seed: seed of the fixed cubes :meth:`probe` compares on (4 draws).
    """

    # Penalties measured with this evaluation (on the brain and the synthetic recovery tests); a stage
    # with another one keeps the general evaluation, as before the loop was one.
    PENALTIES = ("diffusion", "bending", "elastic")

    @classmethod
    def unsupported(cls, loss: StageLoss, labels: bool, landmarks: bool, moving_mask: bool) -> str | None:
        """Why a stage needs the general evaluation (None: this one covers everything it minimises).
        labels, landmarks, moving_mask: whether the stage has them."""
        if labels and loss.label_weight:
            return "label term"
        if landmarks and loss.landmark_weight:
            return "landmark term"
        if moving_mask:
            return "moving mask"
        if loss.similarity is None or not loss.similarity_weight:
            return "no image similarity"
        odd = [p["name"] for p in loss.penalties if p.get("mask") is not None or p["name"] not in cls.PENALTIES]
        return f"penalty {odd[0]!r} (masked, or not measured with the same-grid evaluation)" if odd else None

    def __init__(self, fixed: torch.Tensor, moving: torch.Tensor, grid: Grid, loss: StageLoss,
                 penalties: list[PenaltyTerm] | None = None, mask: torch.Tensor | None = None,
                 sampler: PatchSampler | None = None, probe_seed: int = 0):
        self.fixed, self.moving, self.grid, self.loss = fixed, moving, grid, loss
        self.penalties, self.mask, self.sampler = penalties or [], mask, sampler
        if sampler is None:
            self.points = self.probe_points = grid.points(dtype=torch.float32).unsqueeze(0)
        else:
            draws = torch.Generator().manual_seed(probe_seed)
            self.probe_points = torch.cat([sampler.draw(draws) for _ in range(4)], 1)
        self.last_terms: dict[str, float] = {}

    def terms(self, model: DenseModel, pts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms at world points ``pts`` (1, *out, dim) of the level grid."""
        g, f, m = self.grid, self.fixed, self.moving
        v = model.field()
        u = model.displacements(v)
        if self.sampler is None:  # whole grid: upsampling the field is much faster than sampling it
            moved = pts + torch.movedim(upsample_field(u, model.grid, g), 1, -1)
        else:
            moved = pts + torch.movedim(sample(u, model.grid, pts, "linear", fill_value=None), 1, -1)
        # unbind, not slicing: a slice's backward fills a zero tensor of the whole batch per half
        halves = [h.unsqueeze(0) for h in moved.unbind(0)]
        warped = sample(m, g, halves[0], "linear", fill_value=None)
        if model.symmetric:
            ref = sample(f, g, halves[1], "linear", fill_value=None)
        else:
            ref = f if self.sampler is None else sample(f, g, pts, "linear", fill_value=None)
        w = self.mask
        if self.sampler is not None:  # (1, C, cubes, *size) -> (cubes, C, *size)
            warped, ref = (torch.movedim(t, 2, 0).squeeze(1) for t in (warped, ref))
            if w is not None:
                w = torch.movedim(sample(w, g, pts, "nearest"), 2, 0).squeeze(1)
        return loss_terms(self.loss, fixed=ref, warped=warped, mask=w, grid=g, field=v, field_grid=model.grid,
                          penalties=self.penalties)

    def __call__(self, model: DenseModel, sample_fraction: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        terms = self.terms(model, self.points if self.sampler is None else self.sampler.draw())
        self.last_terms = _floats(terms)
        return total(terms)

    def probe(self, model: DenseModel) -> float:
        """The data terms at the whole grid or the fixed cubes, without gradients."""
        with torch.no_grad():
            terms = self.terms(model, self.probe_points)
        self.last_terms = _floats(terms)
        return _data_value(terms)
