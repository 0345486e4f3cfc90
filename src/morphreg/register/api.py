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

from morphreg.errors import MorphregError
from morphreg.evaluate.warnings import merge_warnings, quality_warnings, stage_warnings
from morphreg.image.image import Image
from morphreg.optim.models import LINEAR_MODELS, build_model
from morphreg.optim.multires import Level, StageInputs, run_stage
from morphreg.optim.optimizers import OptimizerConfig
from morphreg.register.guards import check_stage
from morphreg.register.initialize import initialize
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
from morphreg.register.modality import modality_evidence, same_outline
from morphreg.register.presets import apply_overrides, get_preset, stage_similarity
from morphreg.register.regions import field_of_view_region
from morphreg.register.result import Result, assess
from morphreg.register.solvers import SOLVER_MODELS, run_solver_stage
from morphreg.transforms import CompositeTransform, LinearTransform, ThinPlateSplineTransform, Transform
from morphreg.transforms.warp import warp


# ----- stages -----------------------------------------------------------------------------------------
def resolve_levels(levels, fixed: Image) -> list[Level]:
    """[[shrink, sigma, iterations], ...] -> Levels. sigma: mm, "<k>vox" (k fixed voxels, the finest
    spacing) or None (= shrink / 2 fixed voxels)."""
    out = []
    for entry in levels:
        shrink, sigma, its = (list(entry) + [None, 50])[:3] if not isinstance(entry, dict) else (
            entry["shrink"], entry.get("sigma_mm"), entry.get("iterations", 50))
        if sigma is None:
            sigma = 0.0 if shrink <= 1 else 0.5 * float(shrink) * float(fixed.grid.spacing.min())
        elif isinstance(sigma, str):
            number = sigma[:-3] if sigma.endswith("vox") else ""
            try:
                sigma = float(number) * float(fixed.grid.spacing.min())
            except ValueError:
                raise MorphregError(f"level sigma {sigma!r}: give mm, '<k>vox' or None") from None
        out.append(Level(float(shrink), float(sigma), int(its)))
    return out


def _compose(prior: Transform | None, stage: Transform) -> Transform:
    return stage if prior is None else CompositeTransform([prior, stage])


def _inverse(prior_inv: Transform | None, stage_inv: Transform | None, had_prior: bool) -> Transform | None:
    if stage_inv is None or (had_prior and prior_inv is None):
        return None
    return stage_inv if not had_prior else CompositeTransform([stage_inv, prior_inv])


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
            mono-modal pairs, "accurate" = the same with a stochastic full-resolution level (about
            twice the deformable time); for multimodal pairs both become "labels" when labels are
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
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise MorphregError(f"unknown device {device!r} (cpu or cuda)")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise MorphregError("device 'cuda' requested but no CUDA device is available")
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
    evidence = modality_evidence(fixed, moving) if modality == "auto" else None
    modality = evidence["modality"] if evidence is not None else modality

    if preset in ("default", "accurate") and modality == "multi":
        # Multimodal pairs: label-driven when labels are given (how MR-TRUS fusion is done); two contrasts
        # of the same anatomy: MI / MIND stages with independent checks; else (ultrasound vs MR) the
        # cautious image-only schedule (see presets.py).
        overlays = evidence["same_outline"] if evidence is not None else same_outline(fixed, moving)
        preset = "labels" if fl is not None else "multicontrast" if overlays else "multimodal"
    preset_name = preset if isinstance(preset, str) else "custom"
    stages = get_preset(preset) if isinstance(preset, str) else copy.deepcopy(list(preset))
    if metric is not None:
        overrides = {"similarity": metric, **overrides}
    stages = apply_overrides(stages, overrides)
    if initial is not None and not isinstance(initial, LinearTransform) and stages[0].get("model") in LINEAR_MODELS:
        raise MorphregError(f"the initial transform is deformable: a {stages[0]['model']} stage cannot follow it "
                            "(choose a deformable preset)", initial_transform if isinstance(initial_transform, (str, Path)) else None)
    inputs = StageInputs(fixed, moving, fmask, mmask, fl, ml, None if p is None else (p, q),
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
            result = _run(stages, inputs, modality, preset_name, label_weight, landmark_weight, seed, progress,
                          fixed_path, moving_path, t_io, t_start, initial)
        except MorphregError as exc:
            if exc.path is not None:
                raise
            # A problem found during the optimisation (e.g. no overlap left on a tiny image): say which pair.
            raise MorphregError(f"{exc.problem} (registering {moving_path} onto {fixed_path}, preset {preset_name!r})",
                                fixed_path) from None
    result.notes = notes + result.notes
    given = dict(fixed_mask=fixed_mask, moving_mask=moving_mask, fixed_labels=fixed_labels, moving_labels=moving_labels,
                 fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, rigidity_mask=rigidity_mask,
                 initial_transform=initial_transform)
    result.inputs = {k: str(v) for k, v in given.items() if isinstance(v, (str, Path))}
    return result


def _run(stages, inputs: StageInputs, modality, preset_name, label_weight, landmark_weight, seed, progress,
         fixed_path, moving_path, t_io, t_start, initial: Transform | None = None) -> Result:
    fixed, moving = inputs.fixed, inputs.moving
    transform: Transform | None = initial
    inverse: Transform | None = None
    if initial is not None:
        try:
            inverse = initial.inverse(grid=moving.grid)
        except (ValueError, MorphregError, NotImplementedError):
            inverse = None  # the result then has no inverse either
    report_stages = []
    bar = _progress() if progress else None
    if bar is not None:
        bar.start()
    try:
        for i, stage in enumerate(stages):
            t0 = time.perf_counter()
            kind = stage.get("model")
            record = {"index": i, **copy.deepcopy(stage)}
            if kind == "tps":
                transform, inverse = _tps_stage(stage, inputs, transform, inverse)
                record.update(seconds=[time.perf_counter() - t0], diverged=False)
                report_stages.append(record)
                continue
            levels = resolve_levels(stage.get("levels", [[1, 0, 50]]), fixed)
            record["levels"] = [[lv.shrink, lv.sigma_mm, lv.iterations] for lv in levels]
            if kind in SOLVER_MODELS:  # demons / convex: their own iterative solvers, same inputs and outputs
                out = run_solver_stage(kind, stage, inputs, transform, levels, modality, seed + i, bar, f"{i}:{kind}",
                                       float(stage.get("label_weight", label_weight)),
                                       float(stage.get("landmark_weight", landmark_weight)))
                record.update(out.record)
                report_stages.append(record)
                if not out.record.get("diverged"):
                    inverse = _inverse(inverse, out.inverse, transform is not None)
                    transform = _compose(transform, out.transform)
                continue
            if kind in LINEAR_MODELS and transform is None:
                init = stage.get("init") or "identity"
                params = dict(init[1]) if isinstance(init, (list, tuple)) else {}
                name = init[0] if isinstance(init, (list, tuple)) else init
                transform = _initialize(inputs, name, params)
                inverse = transform.inverse()
                record["initial_transform"] = transform.to_dict()
            prior = transform
            model = build_model(kind, stage.get("model_params", {}) or {}, prior, fixed.grid, len(levels))
            sim, sim_params = stage_similarity(stage, modality)
            record.update(similarity=sim, similarity_params=sim_params)
            opt = OptimizerConfig(**(stage.get("optimizer") or {}))
            outcome = run_stage(
                model, _stage_inputs(inputs, stage), levels, sim, sim_params, stage.get("penalties", []) or [], opt,
                label_weight=float(stage.get("label_weight", label_weight)),
                landmark_weight=float(stage.get("landmark_weight", landmark_weight)),
                similarity_weight=float(stage.get("similarity_weight", 1.0)),
                seed=seed + i, progress=bar, name=f"{i}:{kind} {sim}",
            )
            record.update(trace=outcome.trace, seconds=outcome.seconds, initial_objective=outcome.initial,
                          final_objective=outcome.final, terms=outcome.terms, diverged=outcome.diverged)
            report_stages.append(record)
            if outcome.diverged:
                continue  # keep the previous stages' transform
            stage_t = model.stage_transform()
            if model.prior is None:  # linear stage replacing a linear prior
                new_t, new_inv = stage_t, model.inverse_transform()
            else:
                new_t, new_inv = _compose(prior, stage_t), _inverse(inverse, model.inverse_transform(), True)
            if stage.get("guard"):
                record["guard"] = check_stage(stage["guard"], _stage_inputs(inputs, stage), prior, new_t, stage_t if model.prior is not None else None)
                if not record["guard"]["accepted"]:
                    record["diverged"] = True
                    continue  # an independent check says the stage went wrong: keep the previous transform
            transform, inverse = new_t, new_inv
    finally:
        if bar is not None:
            bar.stop()
    if transform is None:
        raise MorphregError("the preset has no stage")
    for prm in transform.parameters():
        prm.requires_grad_(False)
    t_warp = time.perf_counter()
    with torch.no_grad():
        warped = warp(moving, transform, fixed.grid, "linear")
        quality = assess(transform, inverse, fixed.grid, inputs.fixed_mask)
    warnings = merge_warnings(stage_warnings(report_stages),
                              quality_warnings(quality, float(np.max(fixed.grid.spacing))))
    summary_times = {"io_s": t_io, "stages_s": [sum(r.get("seconds", [0.0])) for r in report_stages],
                     "warp_s": time.perf_counter() - t_warp, "total_s": time.perf_counter() - t_start}
    final = next((r.get("final_objective") for r in reversed(report_stages) if not r.get("diverged") and "final_objective" in r), None)
    return Result(
        transform=transform, inverse=inverse, warped=warped, fixed=fixed, moving=moving,
        stages=report_stages, timings=summary_times, preset=preset_name, modality=modality,
        final_metric=final, fixed_path=fixed_path,
        moving_path=moving_path, quality=quality, warnings=warnings,
    )


def _initialize(inputs: StageInputs, name: str, params: dict) -> Transform:
    """The initial rigid transform; "labels" = centres of mass of the label maps (needs labels)."""
    if name == "labels":
        if inputs.fixed_labels is None:
            name = "geometry"  # label-driven presets still run (image-only) without labels
        else:
            fl, ml = inputs.fixed_labels, inputs.moving_labels
            return initialize(fl.with_data(fl.data.sum(0, keepdim=True)), ml.with_data(ml.data.sum(0, keepdim=True)),
                              "moments", **params)
    return initialize(inputs.fixed, inputs.moving, name, inputs.fixed_mask, inputs.moving_mask, **params)


def _stage_inputs(inputs: StageInputs, stage: dict) -> StageInputs:
    """The stage's inputs: the fixed field-of-view mask when ``fov_mask`` is set and no fixed mask was
    given; the one-hot labels Gaussian-smoothed by ``label_sigma_mm`` when set (a soft
    Dice on blurred masks has a wide capture range and pulls the whole outline, not just its edge)."""
    if stage.get("fov_mask") and inputs.fixed_mask is None:
        roi = stage["fov_mask"].get("roi") if isinstance(stage["fov_mask"], dict) else None
        inputs = dataclasses.replace(inputs, fixed_mask=field_of_view_region(inputs.fixed, roi))
    sigma = float(stage.get("label_sigma_mm") or 0.0)
    if not sigma or inputs.fixed_labels is None:
        return inputs
    from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox

    def blur(img: Image) -> Image:
        return img.with_data(gaussian_filter(img.data[None].float(), sigma_mm_to_vox(sigma, img.grid))[0])

    return dataclasses.replace(inputs, fixed_labels=blur(inputs.fixed_labels), moving_labels=blur(inputs.moving_labels))


def _tps_stage(stage, inputs: StageInputs, prior, prior_inv):
    if inputs.landmarks is None:
        raise MorphregError("the tps method needs fixed and moving landmarks")
    p, q = inputs.landmarks
    if prior is not None:
        if not isinstance(prior, LinearTransform):
            raise MorphregError("a tps stage can only follow linear stages")
        q = prior.inverse().points(q)  # the spline then maps fixed points to the linearly aligned space
    tps = ThinPlateSplineTransform(p.detach(), q.detach(), float((stage.get("model_params") or {}).get("smoothing", 0.0)),
                                   domain=inputs.fixed.grid)
    return _compose(prior, tps), None


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("objective {task.fields[metric]:.5g} (this level, lower is better)"), TimeElapsedColumn(),
                    transient=False)
