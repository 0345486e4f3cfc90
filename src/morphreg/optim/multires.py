"""The one optimisation loop: one stage (one transform model) coarse to fine over a Gaussian pyramid.

Per level (shrink factor, smoothing sigma in mm, iterations): build the level's objective, carry the
model over (``model.start_level``: B-spline refinement, dense fields resampled to the new grid),
minimise with :func:`morphreg.optim.optimizers.minimize`, record the trace and the wall time. Before
the first and after the last level the data terms are measured at the finest level: a stage that made
them worse is reported as diverged and the caller keeps the previous transform.

What makes the SyN class fast is a set of options of this loop (:class:`LoopOptions`), not a second
engine: same-grid evaluation (:class:`morphreg.optim.objective.SameGridObjective`), stochastic cubes on
full-resolution levels, a step that shrinks with the level's voxels, and intra-op threads per level.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.optim.cubes import PatchSampler, foreground
from morphreg.optim.models import StageModel, resample_field
from morphreg.optim.objective import LevelData, Objective, SameGridObjective
from morphreg.optim.optimizers import OptimizerConfig, minimize
from morphreg.optim.progress import add_progress
from morphreg.optim.terms import PenaltyTerm, StageLoss
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
class LoopOptions:
    """How the loop evaluates and steps (defaults: the general path).

    same_grid: compare the images on one grid (the moving image resampled once through the model's
        prior); dense models only, image-only stages (see :class:`SameGridObjective`).
    patches: (count, size): full-resolution levels of a same-grid stage compare ``count`` random cubes
        of ``size`` voxels per iteration (new cubes every iteration; the optimiser keeps its last iterate).
    cube_field_shrink: field shrink factor on cube levels (None = the model's). Brain T1 b->a
        (`accurate`): 2 instead of 4 gave Dice 0.651 -> 0.656 for 2.1x the level's time, so presets leave it.
    level_step_scale: the optimiser's step in mm shrinks with the level's voxels (ANTs' gradient step
        is in voxels of each level).
    threads: intra-op threads of a same-grid stage. None: 1 on whole-grid levels, the caller's on cube
        levels: per level the tensors are small and the loop runs thousands of short ops, so on a shared
        machine threads mostly wait on each other (measured up to 10x slower with 2 threads under
        load); cube levels work on larger batches and do gain (brain, 8 cubes of 32^3: 0.23 -> 0.14 s
        per iteration with 2 threads).
    """

    same_grid: bool = False
    patches: tuple[int, int] | None = None
    cube_field_shrink: float | None = None
    level_step_scale: bool = False
    threads: int | None = None


@dataclass
class LoopOutcome:
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


def _fixed_mask_on(inputs: StageInputs, grid: Grid) -> torch.Tensor | None:
    """The fixed mask on a level grid, {0, 1} (1, 1, *grid.shape), or None."""
    mask = _to_grid(inputs.fixed_mask, grid)
    return None if mask is None else (mask > 0.5).float()


def level_data(inputs: StageInputs, fixed_k: Image, moving_k: Image) -> LevelData:
    return LevelData(
        fixed=fixed_k,
        moving=moving_k,
        fixed_mask=_fixed_mask_on(inputs, fixed_k.grid),
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


class _Levels:
    """Builds each level's objective (general or same-grid) from the full-resolution inputs."""

    def __init__(self, model: StageModel, inputs: StageInputs, levels: list[Level], loss: StageLoss,
                 options: LoopOptions, seed: int):
        self.model, self.inputs, self.loss, self.options, self.seed = model, inputs, loss, options, seed
        moving = inputs.moving
        if options.same_grid:  # the moving image on the fixed grid through the prior, once
            with torch.no_grad():
                moving = warp(inputs.moving.float(), model.prior, inputs.fixed.grid, "linear")
        self.fixed_pyr, self.moving_pyr = pyramid(inputs.fixed, levels), pyramid(moving, levels)

    def cubes(self, k: int) -> bool:
        return bool(self.options.same_grid and self.options.patches) and self.fixed_pyr[k].grid.same_as(self.inputs.fixed.grid)

    def objective(self, k: int, with_penalties: bool):
        grid = self.fixed_pyr[k].grid
        pens = penalty_terms(self.loss.penalties, self.inputs, _field_grid(self.model, grid)) if with_penalties else []
        if not self.options.same_grid:
            return Objective(level_data(self.inputs, self.fixed_pyr[k], self.moving_pyr[k]), self.loss, pens)
        mask = _fixed_mask_on(self.inputs, grid)
        f, m = self.fixed_pyr[k].batch(), self.moving_pyr[k].batch()
        sampler = PatchSampler(grid, foreground(f, mask), *self.options.patches, seed=self.seed + k) if self.cubes(k) else None
        return SameGridObjective(f, m, grid, self.loss, pens, mask, sampler, probe_seed=self.seed + 1000 + k)


def run_stage(
    model: StageModel,
    inputs: StageInputs,
    levels: list[Level],
    loss: StageLoss,
    optimizer: OptimizerConfig,
    options: LoopOptions | None = None,
    *,
    seed: int = 0,
    progress=None,
    name: str = "stage",
    check_divergence: bool = True,
) -> LoopOutcome:
    """Optimise ``model`` level by level; see the module docstring. ``progress``: a rich Progress or None."""
    if not levels:
        raise MorphregError(f"stage {name!r} has no levels")
    options = options or LoopOptions()
    if options.same_grid:
        why = SameGridObjective.unsupported(loss, inputs.fixed_labels is not None, inputs.landmarks is not None,
                                            inputs.moving_mask is not None)
        if why:
            raise MorphregError(f"stage {name!r}: the same-grid evaluation does not cover its {why}")
    build = _Levels(model, inputs, levels, loss, options, seed)  # the pyramids with the caller's threads
    caller_threads = torch.get_num_threads()
    try:
        if options.same_grid:
            torch.set_num_threads(options.threads or 1)
        return _run_levels(build, model, levels, optimizer, options, seed, progress, name, check_divergence,
                           caller_threads)
    finally:
        torch.set_num_threads(caller_threads)


def _run_levels(build, model, levels, optimizer, options, seed, progress, name, check_divergence,
                caller_threads) -> LoopOutcome:
    generator = torch.Generator().manual_seed(int(seed))
    finest = len(levels) - 1
    # The starting value at the finest level, before any level runs (data terms only: penalties of an
    # untouched deformable model are zero, and the check must compare like with like).
    model.start_level(build.fixed_pyr[0].grid, **_field_shrink(build, options, 0))
    initial = build.objective(finest, False).probe(model) if check_divergence else math.nan
    traces, seconds = [], []
    for k, level in enumerate(levels):
        t0 = time.perf_counter()
        if k > 0:
            model.start_level(build.fixed_pyr[k].grid, **_field_shrink(build, options, k))
        objective = build.objective(k, True)
        stochastic = build.cubes(k)
        if options.same_grid:
            torch.set_num_threads(options.threads or (caller_threads if stochastic else 1))
        config = optimizer
        if options.level_step_scale:
            config = dataclasses.replace(optimizer, lr=optimizer.lr * level.shrink / max(levels[0].shrink, 1e-6))
        callback = add_progress(progress, f"{name} level {k + 1}/{len(levels)}", level.iterations)
        fn = (lambda sample_fraction=None, generator=None: objective(model, sample_fraction, generator))
        trace = minimize(fn, model.parameters(), model.scales(), level.iterations, config, callback, generator,
                         stochastic=stochastic)
        callback(level.iterations, trace[-1] if trace else math.nan)  # early stops fill the bar
        traces.append(trace)
        seconds.append(time.perf_counter() - t0)
    probe = build.objective(finest, True)
    final = probe.probe(model)
    diverged = check_divergence and not (final <= initial + 1e-6 * abs(initial))
    return LoopOutcome(traces, seconds, initial, final, diverged, dict(probe.last_terms))


def _field_shrink(build: _Levels, options: LoopOptions, k: int) -> dict:
    """The field shrink of a cube level, when the options give one."""
    return {"field_shrink": options.cube_field_shrink} if build.cubes(k) and options.cube_field_shrink else {}


__all__ = ["Level", "LoopOptions", "StageInputs", "LoopOutcome", "run_stage", "pyramid", "resample_field"]
