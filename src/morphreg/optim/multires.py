"""Coarse-to-fine driver: one stage (one transform model) over a Gaussian pyramid.

Per level (shrink factor, smoothing sigma in mm, iterations): build the level's images and masks,
carry the transform over (B-spline refinement, dense fields resampled to the new grid), minimise the
objective, record the trace and the wall time. After the last level the stage is checked against
its starting point at the finest level: a stage that made the objective worse is reported as
diverged and the caller falls back to the previous transform.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.optim.models import StageModel, resample_field
from morphreg.optim.objective import LevelData, Objective, PenaltyTerm
from morphreg.optim.optimizers import OptimizerConfig, minimize
from morphreg.optim.progress import add_progress
from morphreg.transforms.warp import warp


@dataclass
class Level:
    """One pyramid level: shrink factor (voxels), Gaussian sigma (mm) and iteration budget."""

    shrink: float
    sigma_mm: float
    iterations: int


@dataclass
class StageInputs:
    """Full-resolution inputs shared by every stage."""

    fixed: Image
    moving: Image
    fixed_mask: Image | None = None  # float (1, *shape) in {0, 1}
    moving_mask: Image | None = None
    fixed_labels: Image | None = None  # one-hot float (K, *shape)
    moving_labels: Image | None = None
    landmarks: tuple[torch.Tensor, torch.Tensor] | None = None
    penalty_masks: dict[str, Image] = field(default_factory=dict)  # e.g. {"rigidity": mask on the fixed grid}


@dataclass
class StageOutcome:
    trace: list[list[float]]
    seconds: list[float]
    initial: float
    final: float
    diverged: bool
    terms: dict[str, float]


def pyramid(image: Image, levels: list[Level]) -> list[Image]:
    """Smoothed, shrunk copies of ``image``, one per level (the engine's pyramid is the shared one)."""
    from morphreg.image.pyramid import gaussian_pyramid

    return list(gaussian_pyramid(image.float(), [lv.shrink for lv in levels], [lv.sigma_mm for lv in levels]))


def _to_grid(image: Image | None, grid: Grid) -> torch.Tensor | None:
    """Float image resampled (linear, identity map) onto ``grid``: (1, C, *grid.shape)."""
    if image is None:
        return None
    return warp(image.float(), None, grid, "linear").batch()


def level_data(inputs: StageInputs, fixed_k: Image, moving_k: Image) -> LevelData:
    mask = _to_grid(inputs.fixed_mask, fixed_k.grid)
    return LevelData(
        fixed=fixed_k,
        moving=moving_k,
        fixed_mask=None if mask is None else (mask > 0.5).float(),
        moving_mask=inputs.moving_mask,
        fixed_labels=_to_grid(inputs.fixed_labels, fixed_k.grid),
        moving_labels=inputs.moving_labels,
        landmarks=inputs.landmarks,
    )


def penalty_terms(specs: list[dict], inputs: StageInputs, field_grid: Grid | None) -> list[PenaltyTerm]:
    """Penalties from preset entries {"name", "weight", "params", "mask": name in inputs.penalty_masks}."""
    terms = []
    for spec in specs:
        mask = None
        key = spec.get("mask")
        if key is not None:
            if key not in inputs.penalty_masks:
                raise MorphregError(f"penalty {spec['name']!r} needs the mask {key!r}, which was not given")
            if field_grid is not None:
                mask = (_to_grid(inputs.penalty_masks[key], field_grid) > 0.5).float()
        terms.append(PenaltyTerm(spec["name"], float(spec.get("weight", 1.0)), dict(spec.get("params", {})), mask))
    return terms


def _field_grid(model: StageModel, grid: Grid) -> Grid | None:
    return getattr(model, "grid", None) or (grid if hasattr(model, "transform") and not model.transform.linear else None)


def run_stage(
    model: StageModel,
    inputs: StageInputs,
    levels: list[Level],
    similarity: str,
    similarity_params: dict,
    penalties: list[dict],
    optimizer: OptimizerConfig,
    label_weight: float = 0.0,
    landmark_weight: float = 0.0,
    similarity_weight: float = 1.0,
    seed: int = 0,
    progress=None,
    name: str = "stage",
    check_divergence: bool = True,
) -> StageOutcome:
    """Optimise ``model`` level by level; see the module docstring. ``progress``: a rich Progress or None."""
    if not levels:
        raise MorphregError(f"stage {name!r} has no levels")
    fast = getattr(model, "run_fast", None)  # a model with its own solver (morphreg.optim.fastsyn)
    if fast is not None:
        outcome = fast(inputs, levels, similarity, similarity_params, penalties, optimizer, label_weight,
                       landmark_weight, similarity_weight, progress, name, seed)
        if outcome is not None:
            return outcome
    fixed_pyr = pyramid(inputs.fixed, levels)
    moving_pyr = pyramid(inputs.moving, levels)
    generator = torch.Generator().manual_seed(int(seed))

    def objective_at(k: int, with_penalties: bool) -> Objective:
        lv = level_data(inputs, fixed_pyr[k], moving_pyr[k])
        pens = penalty_terms(penalties, inputs, _field_grid(model, fixed_pyr[k].grid)) if with_penalties else []
        return Objective(lv, similarity, similarity_params, similarity_weight, pens, label_weight, landmark_weight)

    finest = len(levels) - 1
    # The starting value at the finest level, before any level runs (data terms only: penalties of an
    # untouched deformable model are zero, and the check must compare like with like).
    model.start_level(fixed_pyr[0].grid)
    initial = math.nan
    if check_divergence:
        with torch.no_grad():
            probe = objective_at(finest, False)
            initial = float(probe(model))
    traces, seconds = [], []
    for k, level in enumerate(levels):
        t0 = time.perf_counter()
        if k > 0:
            model.start_level(fixed_pyr[k].grid)
        objective = objective_at(k, True)
        callback = add_progress(progress, f"{name} level {k + 1}/{len(levels)}", level.iterations)
        fn = (lambda sample_fraction=None, generator=None: objective(model, sample_fraction, generator))
        trace = minimize(fn, model.parameters(), model.scales(), level.iterations, optimizer, callback, generator)
        callback(level.iterations, trace[-1] if trace else math.nan)  # early stops fill the bar
        traces.append(trace)
        seconds.append(time.perf_counter() - t0)
    final = math.nan
    terms: dict[str, float] = {}
    diverged = False
    with torch.no_grad():
        probe = objective_at(finest, False)
        final = float(probe(model))
        terms = dict(probe.last_terms)
    if check_divergence and not (final <= initial + 1e-6 * abs(initial)):
        diverged = True  # the caller discards the stage and keeps the previous transform
    return StageOutcome(traces, seconds, initial, final, diverged, terms)


__all__ = ["Level", "StageInputs", "StageOutcome", "run_stage", "pyramid", "resample_field"]
