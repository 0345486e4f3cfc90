"""``register(fixed, moving, preset, **overrides) -> Result``: runs the stages of a preset.

Each stage optimises one transform model coarse to fine (:func:`morphreg.optim.run_stage`) on top of
the previous stages' transform; linear stages replace a linear prior (affine starts from rigid),
deformable stages compose with it: T = CompositeTransform([linear, deformable]) maps fixed points to
moving points. A stage that ends worse than it started (its objective at the finest level) is
discarded and the previous transform is kept.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from morphreg.core.devices import checked_device
from morphreg.errors import MorphregError
from morphreg.evaluate.warnings import merge_warnings, quality_warnings, stage_warnings
from morphreg.image.image import Image
from morphreg.image.intensity import to_unit_range, unit_range
from morphreg.optim.multires import StageInputs
from morphreg.register.guards import check_stage
from morphreg.register.ranges import check_stage_numbers
from morphreg.register.inputs import (
    initial_transform_for,
    intensity_image,
    load_image,
    mask_on_grid,
    on_image_grid,
    one_hot_labels,
    read_landmarks,
    select_label_channels,
)
from morphreg.register.methods import get_method, is_linear
from morphreg.register.methods.base import Prior, StageContext, stage_inputs
from morphreg.register.modality import modality_evidence, same_outline
from morphreg.register.presets import apply_overrides, get_preset
from morphreg.register.result import Result, assess
from morphreg.transforms import LinearTransform, Transform
from morphreg.transforms.warp import warp


# ----- the driver -------------------------------------------------------------------------------------
def register(
    fixed: Image | str | Path,
    moving: Image | str | Path,
    preset: str | list[dict] = "default",
    *,
    fixed_mask=None,
    moving_mask=None,
    fixed_labels=None,
    moving_labels=None,
    label_weight: float = 1.0,
    fixed_landmarks=None,
    moving_landmarks=None,
    landmark_weight: float = 1.0,
    rigidity_mask=None,
    label_channels: str | None = None,
    initial_transform=None,
    metric: str | None = None,
    modality: str = "auto",
    device: str = "cpu",
    seed: int = 0,
    progress: bool = False,
    **overrides,
) -> Result:
    """Register ``moving`` to ``fixed``.

    Args:
        fixed, moving: Images or paths (2D or 3D, same dimension).
        preset: a name of ``morphreg.register.presets.PRESETS`` ("rigid", "affine", "bspline", "syn",
            "demons", "tps", "rigidity", "multimodal", "labels", "default" = affine then SyN for
            mono-modal pairs, "accurate" = the same with a 2 mm velocity grid and a
            full-resolution level (brain T1: about 2.3x default's time); for multimodal pairs both become "labels" when labels are
            given, else "multimodal")
            or a list of stage dicts.
        fixed_mask, moving_mask: where the similarity is evaluated (non-zero = inside).
        fixed_labels, moving_labels: integer maps or one-hot stacks; they add
            ``label_weight * (1 - soft Dice)`` to every stage.
        label_channels: which of them drive the registration, e.g. "0" (the gland channel of the
            prostate stacks) or "1-": channel indices of stacks, label values of maps.
        fixed_landmarks, moving_landmarks: corresponding points (K, dim) mm, CSV files or label
            images; they add ``landmark_weight * mean |T(p) - q|^2 / (10 mm)^2`` (and drive "tps").
        rigidity_mask: fixed-grid mask used by penalties with ``"mask": "rigidity"``.
        initial_transform: a fixed -> moving Transform or transform file (ANTs'
            ``--initial-moving-transform``, elastix' ``-t0``) the first stage starts from, instead of
            its own initialisation; a linear one is refined by linear stages, a deformable one can only
            be followed by deformable stages.
        metric: similarity for every stage (overrides the preset and the modality choice).
        modality: "auto" (from the intensity distributions), "mono" or "multi".
        device: "cpu" or "cuda".
        seed: seed of every random choice (stochastic optimisers).
        progress: show a rich progress bar with the metric per level.
        **overrides: stage keys (``levels``, ``optimizer``, ``penalties``, ...), for every stage or
            ``{"<index or model>.<key>": value}`` for one (see :func:`apply_overrides`).
    Returns:
        :class:`Result` with the fixed -> moving transform, its inverse when available, the warped
        moving image, the metric trace and time per level, and the resolved parameters.
    """
    t_start = time.perf_counter()
    checked_device(device, "device")
    fixed_path = str(fixed) if isinstance(fixed, (str, Path)) else getattr(fixed, "name", None)
    moving_path = str(moving) if isinstance(moving, (str, Path)) else getattr(moving, "name", None)
    fixed = intensity_image(load_image(fixed, "fixed image", labels=False), "fixed")
    moving = intensity_image(load_image(moving, "moving image", labels=False), "moving")
    if fixed.dim != moving.dim:
        raise MorphregError(f"moving image is {moving.dim}D but the fixed image ({fixed.name}) is {fixed.dim}D", moving.name)
    notes: list[str] = []
    fmask, mmask = mask_on_grid(fixed_mask, fixed, "fixed mask", notes), mask_on_grid(moving_mask, moving, "moving mask", notes)
    rmask = mask_on_grid(rigidity_mask, fixed, "rigidity mask", notes)
    fl, ml = load_image(fixed_labels, "fixed labels", labels=True), load_image(moving_labels, "moving labels", labels=True)
    if (fl is None) != (ml is None):
        raise MorphregError("give both fixed and moving labels, or neither")
    if fl is not None:
        fl = on_image_grid(fl, fixed, "fixed labels", notes)
        ml = on_image_grid(ml, moving, "moving labels", notes)
        if label_channels is not None:
            fl, ml = select_label_channels(fl, label_channels), select_label_channels(ml, label_channels)
        fl, ml = one_hot_labels(fl, ml)
    p, q = read_landmarks(fixed_landmarks, "fixed landmarks"), read_landmarks(moving_landmarks, "moving landmarks")
    if (p is None) != (q is None):
        raise MorphregError("give both fixed and moving landmarks, or neither")
    if p is not None and (p.shape != q.shape or p.shape[-1] != fixed.dim):
        where = moving_landmarks if p.shape[-1] == fixed.dim else fixed_landmarks
        raise MorphregError(f"landmarks must be two (K, {fixed.dim}) sets of the same size; got {tuple(p.shape)} (fixed) "
                            f"and {tuple(q.shape)} (moving)", where if isinstance(where, (str, Path)) else None)
    initial = initial_transform_for(initial_transform, fixed)
    if modality not in ("auto", "mono", "multi"):
        raise MorphregError(f"modality must be auto, mono or multi, not {modality!r}")
    # Modality detection is invariant to a positive affine intensity change of either image by construction
    # (quantile curves scaled to their range, NCC without an additive constant, MI, Otsu). The stages see the
    # images in the engine's intensity units (to_unit_range): one map per image, except a mono-modal pair,
    # which gets one map from both (pooled percentiles) so that intensity differences (demons, MSE) keep their
    # meaning (two maps from percentiles 1-2 % apart took the demons test's error from 0.59 to 1.35 mm).
    # The result warps the originals.
    evidence = modality_evidence(fixed, moving) if modality == "auto" else None
    modality = evidence["modality"] if evidence is not None else modality
    if modality == "mono" and fixed.channels == moving.channels:
        units = dict.fromkeys(("fixed", "moving"), unit_range(fixed, moving))
    else:
        units = {"fixed": unit_range(fixed), "moving": unit_range(moving)}
    fixed_units, moving_units = to_unit_range(fixed, units["fixed"]), to_unit_range(moving, units["moving"])

    if preset in ("default", "accurate") and modality == "multi":
        # Multimodal pairs: label-driven when labels are given (how MR-TRUS fusion is done); two contrasts
        # of the same anatomy: MI / MIND stages with independent checks; else (ultrasound vs MR) the
        # cautious image-only schedule (see presets.py).
        overlays = evidence["same_outline"] if evidence is not None else same_outline(fixed, moving)
        preset = "labels" if fl is not None else "multicontrast" if overlays else "multimodal"
    preset_name = preset if isinstance(preset, str) else "custom"
    if metric is not None:
        overrides = {"similarity": metric, **overrides}
    stages = resolve_stages(preset, overrides)
    if initial is not None and not isinstance(initial, LinearTransform) and is_linear(stages[0].get("model")):
        raise MorphregError(f"the initial transform is deformable: a {stages[0]['model']} stage cannot follow it "
                            "(choose a deformable preset)", initial_transform if isinstance(initial_transform, (str, Path)) else None)
    inputs = StageInputs(fixed_units, moving_units, fmask, mmask, fl, ml, None if p is None else (p, q),
                         {"rigidity": rmask} if rmask is not None else {})
    t_io = time.perf_counter() - t_start

    # A default-device context only where needed: it costs a dispatch on every CPU operation.
    # Every random draw follows ``seed`` (explicit generators, and the global one for the rest), without
    # changing the caller's random state.
    rng_devices = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    with (torch.device(device) if device != "cpu" else contextlib.nullcontext()), \
            torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(int(seed))
        try:
            run = _Run(inputs, (fixed, moving), modality, preset_name, float(label_weight), float(landmark_weight),
                       int(seed), progress, fixed_path, moving_path, t_io, t_start)
            result = run(stages, initial)
        except MorphregError as exc:
            if exc.path is not None:
                raise
            # A problem found during the optimisation (e.g. no overlap left on a tiny image): say which pair.
            raise MorphregError(f"{exc.problem} (registering {moving_path} onto {fixed_path}, preset {preset_name!r})",
                                fixed_path) from None
    result.notes = notes + result.notes
    result.intensity_units = {**{k: [{"lo": lo, "hi": hi} for lo, hi in v] for k, v in units.items()},
                              "shared": units["fixed"] is units["moving"]}
    given = dict(fixed_mask=fixed_mask, moving_mask=moving_mask, fixed_labels=fixed_labels, moving_labels=moving_labels,
                 fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, rigidity_mask=rigidity_mask,
                 initial_transform=initial_transform)
    result.inputs = {k: str(v) for k, v in given.items() if isinstance(v, (str, Path))}
    return result


def resolve_stages(preset: str | list[dict], overrides: dict | None = None) -> list[dict]:
    """The stages of a preset name (or stage list) with ``overrides`` applied, every stage checked
    (unknown method, key, similarity, penalty or optimiser: a one-line MorphregError). Population
    commands call it before starting any work."""
    stages = get_preset(preset) if isinstance(preset, str) else copy.deepcopy(list(preset))
    stages = apply_overrides(stages, overrides or {})
    for i, stage in enumerate(stages):
        get_method(stage.get("model")).check(stage)
        check_stage_numbers(stage, f"stage {i} ({stage.get('model')})")
    return stages


@dataclasses.dataclass
class _Run:
    """One run's settings; calling it runs the stages (each through its registered method)."""

    inputs: StageInputs
    images: tuple[Image, Image]  # fixed and moving in their own units (the inputs' are the engine's)
    modality: str
    preset_name: str
    label_weight: float
    landmark_weight: float
    seed: int
    progress: bool
    fixed_path: str | None
    moving_path: str | None
    t_io: float
    t_start: float

    def __call__(self, stages: list[dict], initial: Transform | None) -> Result:
        prior = Prior(initial, _inverse_of(initial, self.inputs.moving.grid))
        records = []
        bar = _progress() if self.progress else None
        if bar is not None:
            bar.start()
        try:
            for i, stage in enumerate(stages):
                context = StageContext(self.inputs, self.modality, i, self.seed + i, bar, self.label_weight,
                                       self.landmark_weight)
                outcome = get_method(stage.get("model")).run(stage, context, prior)
                record, start = outcome.record, outcome.start or prior
                if not record.diverged and stage.get("guard"):
                    record.guard = check_stage(stage["guard"], stage_inputs(self.inputs, stage), start.transform,
                                               outcome.transform, outcome.stage_transform)
                    record.diverged = not record.guard["accepted"]  # an independent check says it went wrong
                records.append(record)
                prior = start if record.diverged else Prior(outcome.transform, outcome.inverse)
        finally:
            if bar is not None:
                bar.stop()
        return self.result(prior, records)

    def result(self, prior: Prior, records: list) -> Result:
        if prior.transform is None:
            raise MorphregError("the preset has no stage")
        return build_result(prior.transform, prior.inverse, *self.images, records,
                            self.preset_name, self.modality, fixed_mask=self.inputs.fixed_mask,
                            fixed_path=self.fixed_path, moving_path=self.moving_path, t_io=self.t_io,
                            t_start=self.t_start)


def build_result(transform: Transform, inverse: Transform | None, fixed: Image, moving: Image, records: list,
                 preset: str, modality: str, *, fixed_mask: Image | None = None, fixed_path: str | None = None,
                 moving_path: str | None = None, t_io: float = 0.0, t_start: float | None = None) -> Result:
    """The :class:`Result` of a fixed -> moving transform, however it was found (stages of the registry,
    a network): freezes it, warps the moving image, assesses det J / largest displacement / inverse
    consistency, and computes the saved displacement field, all from one float64 mapping of the fixed grid."""
    t_start = time.perf_counter() if t_start is None else t_start
    transform.freeze()
    if inverse is not None:
        inverse.freeze()
    t_warp = time.perf_counter()
    with torch.no_grad():  # T's points of the fixed grid, once: the warp, the checks and the saved field
        mapped = transform.map_grid(fixed.grid, dtype=torch.float64, device=moving.data.device)
        warped = warp(moving, transform, fixed.grid, "linear", mapped=mapped)
        quality = assess(transform, inverse, fixed.grid, fixed_mask, mapped)
        displacement = torch.movedim(mapped - fixed.grid.points(dtype=torch.float64, device=mapped.device), -1, 1)
        displacement = displacement.float().cpu()  # what the file stores: half the memory, off the GPU
        del mapped
    warnings = merge_warnings(stage_warnings(records), quality_warnings(quality, float(np.max(fixed.grid.spacing))))
    times = {"io_s": t_io, "stages_s": [sum(r.seconds or [0.0]) for r in records],
             "warp_s": time.perf_counter() - t_warp, "total_s": time.perf_counter() - t_start}
    final = next((r.final_objective for r in reversed(records) if not r.diverged and r.final_objective is not None), None)
    return Result(transform=transform, inverse=inverse, warped=warped, fixed=fixed, moving=moving, stages=records,
                  timings=times, preset=preset, modality=modality, final_metric=final, fixed_path=fixed_path,
                  moving_path=moving_path, quality=quality, warnings=warnings, displacement=displacement)


def _inverse_of(transform: Transform | None, grid) -> Transform | None:
    """The inverse of an initial transform, None when it has none (the result then has no inverse either)."""
    if transform is None:
        return None
    try:
        return transform.inverse(grid=grid)
    except (ValueError, MorphregError, NotImplementedError):
        return None


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("objective {task.fields[metric]:.5g} (this level, lower is better)"), TimeElapsedColumn(),
                    transient=False)
