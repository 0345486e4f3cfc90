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
from morphreg.image.image import Image
from morphreg.image.io import read_image
from morphreg.image.labels import shared_labels
from morphreg.optim.models import LINEAR_MODELS, build_model
from morphreg.optim.multires import Level, StageInputs, run_stage
from morphreg.optim.optimizers import OptimizerConfig
from morphreg.register.initialize import initialize
from morphreg.register.presets import STAGE_KEYS, get_preset, stage_similarity
from morphreg.evaluate.warnings import merge_warnings, quality_warnings, stage_warnings
from morphreg.register.result import Result, assess
from morphreg.register.solvers import SOLVER_MODELS, run_solver_stage
from morphreg.transforms import CompositeTransform, LinearTransform, ThinPlateSplineTransform, Transform
from morphreg.transforms.warp import warp

MERGED_KEYS = ("model_params", "similarity_params", "optimizer")


# ----- inputs -----------------------------------------------------------------------------------------
def _load(x, what: str, labels: bool) -> Image | None:
    """An Image from an Image or a path; ``labels``: the file is a label map or mask (else intensities)."""
    if x is None:
        return None
    if isinstance(x, (str, Path)):
        return read_image(x, labels=labels)
    if not isinstance(x, Image):
        raise MorphregError(f"{what} must be an Image or a path, got {type(x).__name__}")
    return x


def _check_intensity(image: Image, what: str) -> Image:
    if image.channels != 1:
        raise MorphregError(f"{what} image has {image.channels} channels (a 4D or vector image); registration needs "
                            "one scalar 2D or 3D image", image.name)
    image = image.float().check_finite()
    image = image.with_data(image.data.detach())
    if float(image.data.max() - image.data.min()) <= 0:
        raise MorphregError(f"{what} image is constant: nothing to register", image.name)
    return image


def _check_same_dim(a: Image, b: Image, what: str) -> None:
    if a.dim != b.dim:
        raise MorphregError(f"{what} is {a.dim}D but the image it goes with ({b.name}) is {b.dim}D", a.name)


def _on_image_grid(aux: Image, image: Image, what: str, notes: list[str]) -> Image:
    """``aux`` (a mask or label map, same dimension as ``image``) on ``image``'s grid: resampled by
    nearest neighbour in world coordinates, with a note, when it was saved on another grid."""
    _check_same_dim(aux, image, what)
    if aux.grid.same_as(image.grid):
        return aux
    notes.append(f"{what} {aux.name} lies on another grid than its image; resampled onto the image's grid "
                 "(nearest neighbour, world coordinates)")
    return warp(aux, None, image.grid, "nearest")


def _mask(mask, image: Image, what: str, notes: list[str]) -> Image | None:
    """A float {0, 1} mask on ``image``'s grid; non-zero voxels are inside."""
    mask = _load(mask, what, labels=True)
    if mask is None:
        return None
    mask = mask.check_finite()
    if mask.channels != 1:
        raise MorphregError(f"{what} has {mask.channels} channels; a mask has one", mask.name)
    if not bool((mask.data != 0).any()):
        raise MorphregError(f"{what} is empty (no non-zero voxel)", mask.name)
    on_grid = _on_image_grid(mask, image, what, notes)
    out = on_grid.with_data((on_grid.data != 0).float())
    if float(out.data.sum()) == 0:
        raise MorphregError(f"{what} does not overlap its image ({image.name}): no voxel inside on the image's grid",
                            mask.name)
    return out


def _selected(labels: Image, spec: str) -> Image:
    """The channels (one-hot stack) or label values (map) of ``labels`` that ``spec`` selects."""
    from morphreg.evaluate.labels import label_masks, select_structures

    keys = select_structures(list(label_masks(labels)), spec)
    if not keys:
        raise MorphregError(f"label channels {spec!r} select no structure", labels.name)
    if labels.channels > 1:
        return labels.with_data(labels.data[[int(k[2:]) for k in keys]])
    keep = torch.zeros_like(labels.data, dtype=torch.bool)
    for k in keys:
        keep |= labels.data == int(k)
    return labels.with_data(torch.where(keep, labels.data, torch.zeros_like(labels.data)))


def one_hot_labels(fixed_labels: Image, moving_labels: Image) -> tuple[Image, Image]:
    """Float one-hot stacks (K, *shape) of both label inputs, channels in correspondence.

    Integer maps: one channel per non-zero label present in both. Multi-channel inputs (4D one-hot
    stacks) are used channel by channel; both must have the same number of channels
    (:func:`morphreg.image.labels.shared_labels`).
    """
    values = shared_labels(fixed_labels, moving_labels)
    if values is None:
        return (fixed_labels.with_data((fixed_labels.data > 0.5).float()),
                moving_labels.with_data((moving_labels.data > 0.5).float()))
    return (fixed_labels.with_data(torch.stack([(fixed_labels.data[0] == v).float() for v in values])),
            moving_labels.with_data(torch.stack([(moving_labels.data[0] == v).float() for v in values])))


def read_landmarks(x, what: str) -> torch.Tensor | None:
    """(K, dim) world mm from an array, a CSV/TXT file (one point per row, x, y[, z] in LPS mm) or a
    label image (the centroid of each label, or of each channel of a one-hot stack)."""
    if x is None:
        return None
    if isinstance(x, (str, Path)) and Path(x).suffix.lower() in (".csv", ".txt"):
        path = Path(x)
        if not path.exists():
            raise MorphregError("file not found", path)
        try:
            arr = np.loadtxt(path, delimiter="," if path.suffix.lower() == ".csv" else None, ndmin=2)
        except ValueError as exc:
            raise MorphregError(f"cannot read landmarks: {exc}", path) from None
        return torch.as_tensor(arr, dtype=torch.float32)
    if isinstance(x, (str, Path, Image)):
        img = _load(x, what, labels=True)
        pts = img.grid.points(dtype=torch.float64).reshape(-1, img.dim)
        chans = ([img.data[c].reshape(-1) > 0.5 for c in range(img.channels)] if img.channels > 1
                 else [img.data[0].reshape(-1) == v for v in img.labels()])
        cents = [pts[m].mean(0) for m in chans if bool(m.any())]
        if len(cents) != len(chans):
            raise MorphregError(f"{what}: a landmark label/channel is empty", img.name)
        return torch.stack(cents).float()
    return torch.as_tensor(np.asarray(x, np.float64), dtype=torch.float32)


def detect_modality(fixed: Image, moving: Image) -> str:
    """"mono" when the two images look like the same kind of image, else "multi"
    (:func:`modality_evidence` says why)."""
    return modality_evidence(fixed, moving)["modality"]


# Thresholds of modality_evidence, measured (RESULTS.md, session 5). Foreground NCC after the coarse MI
# rigid alignment: same contrast 0.29..1.0 (brain T1 pair 0.84 both ways, phantoms 0.90..0.97, each head
# slice against itself moved 10 mm: 1.0, 15 mm + 15 deg: 0.43..0.45, 25 mm + 20 deg: 0.29..0.41, where
# the coarse alignment stops short); different contrast -0.30..0.07 (the T1 / T2 head pair of
# ct_head_2d both ways and moved as above). Contrast-inverted copies fail test 1 or 2 already; all 78
# prostate TRUS / MR pairs fail test 2.
QUANTILE_GAP_MAX = 0.1
OVERLAY_NCC_MIN = 0.5
ALIGNED_FOREGROUND_NCC_MIN = 0.2
DETECTION_VOXELS = 100_000


def modality_evidence(fixed: Image, moving: Image) -> dict:
    """Whether two images show the same contrast, from three tests that must all pass for "mono":

    1. the quantile functions of both images, each scaled to its 1st..99th percentile range, differ
       by less than 0.1 on average (intensity histograms alone cannot tell smoothed ultrasound from
       MR: prostate TRUS vs MR pairs differ by only 0.015..0.2 here);
    2. the images, smoothed (sigma = 2 coarsest voxels) and overlaid as they are, correlate: NCC >=
       0.5 (prostate pairs |NCC| <= 0.40 over 78 pairs; brain T1 pair 0.99, the head pair 0.90: the
       head outline dominates);
    3. after a coarse rigid alignment by mutual information, the
       images correlate inside both foregrounds (Otsu): NCC >= 0.2. Tissue contrast decides here,
       not the outline: a T1 / T2 pair fails (CSF dark in one, bright in the other).

    Tests 2 and 3 run on copies of at most ~1e5 voxels (about 1 s for the brain T1 pair in all).
    Returns the measured values, ``"modality"`` and ``"same_outline"`` (|NCC of test 2| >= 0.5: the
    same anatomy fills both images, e.g. two MR contrasts or an inverted contrast, as opposed to
    ultrasound vs MR).
    """
    q = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)

    def curve(img: Image) -> torch.Tensor:
        v = img.data[0].detach().reshape(-1).double()
        v = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:200000]]
        lo, hi = torch.quantile(v, 0.01), torch.quantile(v, 0.99)
        return (torch.quantile(v, q) - lo) / (hi - lo).clamp_min(1e-12)

    small_f, small_m = _small_copy(fixed), _small_copy(moving)  # brain T1: test 2 in 0.2 s instead of 1.7 s
    out: dict = {"quantile_gap": float((curve(fixed) - curve(moving)).abs().mean()),
                 "overlay_ncc": _overlay_ncc(small_f, small_m)}
    out["same_outline"] = abs(out["overlay_ncc"]) >= OVERLAY_NCC_MIN  # a contrast inversion overlays too
    if out["quantile_gap"] >= QUANTILE_GAP_MAX or out["overlay_ncc"] < OVERLAY_NCC_MIN:
        out["modality"] = "multi"
        return out
    out["aligned_foreground_ncc"] = _aligned_foreground_ncc(small_f, small_m)
    out["modality"] = "mono" if out["aligned_foreground_ncc"] >= ALIGNED_FOREGROUND_NCC_MIN else "multi"
    return out


def _small_copy(image: Image) -> Image:
    from morphreg.image.resample import resample_to_spacing

    factor = max(1.0, (image.data[0].numel() / DETECTION_VOXELS) ** (1.0 / image.dim))
    return image if factor <= 1.0 else resample_to_spacing(image, image.grid.spacing * factor)


def _foreground(image: Image) -> torch.Tensor:
    """Otsu foreground (1, *shape) of a small image."""
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(image.data[0].float().cpu().numpy())
    return torch.as_tensor(sitk.GetArrayFromImage(sitk.OtsuThreshold(itk, 0, 1)).astype(np.float32))[None]


def _aligned_foreground_ncc(small_f: Image, small_m: Image) -> float:
    """NCC inside both Otsu foregrounds after a coarse MI rigid alignment (of small copies)."""
    from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox
    from morphreg.metrics import ncc

    stage = {"model": "rigid", "init": "geometry", "similarity": "mi", "levels": [[2, None, 30], [1, 0.0, 20]],
             "optimizer": {"name": "adam", "lr": 0.5, "tolerance": 1e-5, "patience": 10}}
    aligned = register(small_f, small_m, [stage], modality="multi").transform
    sigma = float(small_f.grid.spacing.max())
    with torch.no_grad():
        fs = gaussian_filter(small_f.batch().float(), sigma_mm_to_vox(sigma, small_f.grid))
        ms = small_m.with_data(gaussian_filter(small_m.batch().float(), sigma_mm_to_vox(sigma, small_m.grid))[0])
        warped = warp(ms, aligned, small_f.grid, "linear").batch()
        inside = _foreground(small_f) * warp(small_m.with_data(_foreground(small_m)), aligned, small_f.grid, "nearest").data
        if float(inside.sum()) < 10:
            return 0.0
        return float(ncc(fs[:, :1], warped[:, :1], inside[None]))


def _overlay_ncc(fixed: Image, moving: Image) -> float:
    """NCC of the smoothed images overlaid in world space (moving resampled on the fixed grid)."""
    from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox
    from morphreg.metrics import ncc

    sigma = 2.0 * float(max(fixed.grid.spacing.max(), moving.grid.spacing.max()))
    with torch.no_grad():
        fs = gaussian_filter(fixed.batch().float(), sigma_mm_to_vox(sigma, fixed.grid))
        ms = moving.with_data(gaussian_filter(moving.batch().float(), sigma_mm_to_vox(sigma, moving.grid))[0])
        warped = warp(ms, None, fixed.grid, "linear").batch()
        inside = warp(moving.with_data(torch.ones_like(moving.data[:1])), None, fixed.grid, "linear").batch() > 0.5
        if float(inside.sum()) < 10:
            return 0.0
        return float(ncc(fs[:, :1], warped[:, :1], inside.float()))


def field_of_view_mask(image: Image, erode_mm: float = 3.0, min_share: float = 0.05) -> Image | None:
    """Mask of the acquired field of view (e.g. the ultrasound cone): voxels above the image minimum,
    small dark holes closed, eroded by ``erode_mm`` so that the cone's edge is not an image feature.
    None when under ``min_share`` of the image is at its minimum (no visible field of view) or the
    mask would keep under 20 % of the image."""
    import torch.nn.functional as F

    from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox

    data = image.data[:1].float()
    inside = (data > data.min()).float()
    if float(1 - inside.mean()) < min_share:
        return None
    # Smoothing then thresholding closes speckle-sized dark holes inside the cone.
    inside = (gaussian_filter(inside[None], sigma_mm_to_vox(1.5, image.grid))[0] > 0.5).float()
    radius = [max(int(round(erode_mm / float(s))), 0) for s in image.grid.spacing[::-1]]  # tensor axis order
    if any(radius):
        pool = F.max_pool3d if image.dim == 3 else F.max_pool2d
        k = [2 * r + 1 for r in radius]
        inside = 1 - pool((1 - inside)[None], k, stride=1, padding=radius)[0]
    if float(inside.sum()) < 0.2 * inside.numel():
        return None
    return image.with_data(inside)


# ----- stages -----------------------------------------------------------------------------------------
def apply_overrides(stages: list[dict], overrides: dict) -> list[dict]:
    """Override keys of every stage (``levels=...``) or of one stage (``{"2.levels": ...}`` or
    ``{"svf.levels": ...}``, by index or model name). Dict-valued keys are merged."""
    stages = copy.deepcopy(stages)
    for key, value in overrides.items():
        target, _, name = key.rpartition(".")
        if name not in STAGE_KEYS:
            raise MorphregError(f"unknown registration parameter {key!r} (stage keys: {', '.join(STAGE_KEYS)})")
        for i, stage in enumerate(stages):
            if target and target != str(i) and target != stage.get("model"):
                continue
            if isinstance(value, dict) and (name in MERGED_KEYS or isinstance(stage.get(name), dict)):
                stage[name] = deep_merge(stage.get(name) or {}, value)
            else:
                stage[name] = copy.deepcopy(value)
    return stages


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` updated by ``update``, nested dicts merged key by key (copies)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


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
    fixed = _check_intensity(_load(fixed, "fixed image", labels=False), "fixed")
    moving = _check_intensity(_load(moving, "moving image", labels=False), "moving")
    if fixed.dim != moving.dim:
        raise MorphregError(f"moving image is {moving.dim}D but the fixed image ({fixed.name}) is {fixed.dim}D", moving.name)
    notes: list[str] = []
    fmask, mmask = _mask(fixed_mask, fixed, "fixed mask", notes), _mask(moving_mask, moving, "moving mask", notes)
    rmask = _mask(rigidity_mask, fixed, "rigidity mask", notes)
    fl, ml = _load(fixed_labels, "fixed labels", labels=True), _load(moving_labels, "moving labels", labels=True)
    if (fl is None) != (ml is None):
        raise MorphregError("give both fixed and moving labels, or neither")
    if fl is not None:
        fl = _on_image_grid(fl, fixed, "fixed labels", notes)
        ml = _on_image_grid(ml, moving, "moving labels", notes)
        if label_channels is not None:
            fl, ml = _selected(fl, label_channels), _selected(ml, label_channels)
        fl, ml = one_hot_labels(fl, ml)
    p, q = read_landmarks(fixed_landmarks, "fixed landmarks"), read_landmarks(moving_landmarks, "moving landmarks")
    if (p is None) != (q is None):
        raise MorphregError("give both fixed and moving landmarks, or neither")
    if p is not None and (p.shape != q.shape or p.shape[-1] != fixed.dim):
        where = moving_landmarks if p.shape[-1] == fixed.dim else fixed_landmarks
        raise MorphregError(f"landmarks must be two (K, {fixed.dim}) sets of the same size; got {tuple(p.shape)} (fixed) "
                            f"and {tuple(q.shape)} (moving)", where if isinstance(where, (str, Path)) else None)
    initial = _initial_transform(initial_transform, fixed)
    if modality not in ("auto", "mono", "multi"):
        raise MorphregError(f"modality must be auto, mono or multi, not {modality!r}")
    evidence = modality_evidence(fixed, moving) if modality == "auto" else None
    modality = evidence["modality"] if evidence is not None else modality

    if preset in ("default", "accurate") and modality == "multi":
        # Multimodal pairs: label-driven when labels are given (how MR-TRUS fusion is done); two contrasts
        # of the same anatomy: MI / MIND stages with independent checks; else (ultrasound vs MR) the
        # cautious image-only schedule (see presets.py).
        same_outline = evidence["same_outline"] if evidence is not None else abs(_overlay_ncc(fixed, moving)) >= OVERLAY_NCC_MIN
        preset = "labels" if fl is not None else "multicontrast" if same_outline else "multimodal"
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
        final_metric=final, folding_percent=quality["jacobian"]["folding_percent"], fixed_path=fixed_path,
        moving_path=moving_path, quality=quality, warnings=warnings,
    )


def _initial_transform(given, fixed: Image) -> Transform | None:
    """The user's starting transform (a Transform or a file), checked against the fixed image."""
    if given is None:
        return None
    from morphreg.transforms.io import load_transform

    t = load_transform(given) if isinstance(given, (str, Path)) else given
    if not isinstance(t, Transform):
        raise MorphregError(f"initial transform must be a Transform or a file, got {type(t).__name__}")
    if t.dim != fixed.dim:
        raise MorphregError(f"initial transform is {t.dim}D but the fixed image ({fixed.name}) is {fixed.dim}D",
                            given if isinstance(given, (str, Path)) else None)
    for prm in t.parameters():
        prm.requires_grad_(False)
    return t if isinstance(t, LinearTransform) else _as_affine(t, fixed.grid) or t


def _as_affine(t: Transform, grid) -> Transform | None:
    """An AffineTransform equal to ``t`` (e.g. an ITK composite of rigid and affine parts) when ``t``
    is affine over ``grid`` (to 1e-4 mm), so that linear stages can refine it; else None."""
    from morphreg.transforms import AffineTransform

    with torch.no_grad():
        dim = grid.dim
        origin = torch.zeros(1, dim, dtype=torch.float64)
        b = t.points(origin.float()).double()[0]
        a = torch.stack([t.points(torch.eye(dim, dtype=torch.float32)[i:i + 1]).double()[0] - b for i in range(dim)], 1)
        probe = grid.downsample(4).points(dtype=torch.float64).reshape(-1, dim)
        err = (t.points(probe.float()).double() - (probe @ a.T + b)).norm(dim=-1).max()
    if float(err) > 1e-4 * max(1.0, float(probe.abs().max())):
        return None
    return AffineTransform(dim, matrix=a.numpy(), translation=b.numpy())


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


def central_region(grid, fraction: float) -> Image:
    """Ellipsoid mask about the grid centre with semi-axes ``fraction`` x the extent along each axis.
    Used where the target organ is centred in the field of view (e.g. TRUS volumes of the prostate):
    the similarity then looks at the organ, not at the structures around it."""
    pts = grid.points(dtype=torch.float32)
    c = torch.as_tensor(np.asarray(grid.center()), dtype=torch.float32)
    ext = torch.as_tensor(np.asarray(grid.extent), dtype=torch.float32).clamp_min(1e-6)
    inside = (((pts - c) / (fraction * ext)) ** 2).sum(-1) <= 1
    return Image(inside.float()[None], grid)


def field_of_view_region(fixed: Image, roi: float | None = None) -> Image | None:
    """Where a ``fov_mask`` stage compares the images: the fixed image's field of view (e.g. the
    ultrasound cone, whose border is an acquisition edge, not anatomy), with ``roi`` only its central
    region (:func:`central_region`); None when neither applies."""
    fov = field_of_view_mask(fixed)
    if not roi:
        return fov
    central = central_region(fixed.grid, float(roi))
    return central if fov is None else fov.with_data(fov.data * central.data)


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


def _guard_loss(inputs: StageInputs, transform: Transform | None, name: str, sigma_mm: float) -> float:
    """An image similarity (loss, lower = better) of the moving image mapped by ``transform`` onto the
    fixed grid, both smoothed by ``sigma_mm``, over the fixed mask and the moving image's support."""
    from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox
    from morphreg.metrics import SIMILARITY_LOSSES

    fixed, moving = inputs.fixed, inputs.moving
    fs = gaussian_filter(fixed.batch().float(), sigma_mm_to_vox(sigma_mm, fixed.grid))
    ms = moving.with_data(gaussian_filter(moving.batch().float(), sigma_mm_to_vox(sigma_mm, moving.grid))[0])
    warped = warp(ms, transform, fixed.grid, "linear").batch()
    support = moving.with_data(torch.ones_like(moving.data[:1]) if inputs.moving_mask is None else inputs.moving_mask.data)
    inside = (warp(support, transform, fixed.grid, "linear").batch() > 0.5).float()
    if inputs.fixed_mask is not None:
        inside = inside * (inputs.fixed_mask.batch() > 0.5).float()
    if float(inside.sum()) < 10:
        return float("inf")
    params = {"grid": fixed.grid} if name == "ngf" else {}
    return float(SIMILARITY_LOSSES[name](fs, warped, inside, **params))


def check_stage(guard: dict, inputs: StageInputs, before: Transform | None, after: Transform,
                stage_transform: Transform | None = None) -> dict:
    """Divergence check of a finished stage on things other than its own objective.

    ``guard`` keys (all optional):
        similarity: name of an independent similarity loss (e.g. "ngf" for a stage optimising MIND);
            the stage is rejected unless it improves by at least ``min_gain`` (share of |loss|).
        sigma_mm: smoothing of both images for that check (default 2 mm).
        max_move_mm: largest RMS distance, over the fixed mask (or image), between the points mapped
            before and after the stage.
        jacobian: (low, high) bounds on det J of the stage's own deformation (deformable stages).
    Returns a record with the measured values and ``accepted``.
    """
    out: dict = {"accepted": True}
    fixed = inputs.fixed
    with torch.no_grad():
        if guard.get("similarity"):
            name, sigma = guard["similarity"], float(guard.get("sigma_mm", 2.0))
            b, a = _guard_loss(inputs, before, name, sigma), _guard_loss(inputs, after, name, sigma)
            out.update(similarity=name, before=b, after=a)
            if not a < b - float(guard.get("min_gain", 0.0)) * abs(b):
                out["accepted"] = False
        if guard.get("max_move_mm") is not None:
            grid = fixed.grid.downsample(2)
            x = grid.points(dtype=torch.float32).reshape(-1, fixed.dim)
            xb = x if before is None else before.points(x)
            d = (after.points(x) - xb).norm(dim=-1)
            if inputs.fixed_mask is not None:
                m = warp(inputs.fixed_mask, None, grid, "linear").data.reshape(-1) > 0.5
                d = d[m] if bool(m.any()) else d
            out["move_mm"] = float(d.pow(2).mean().sqrt())
            if out["move_mm"] > float(guard["max_move_mm"]):
                out["accepted"] = False
        if guard.get("jacobian") is not None and stage_transform is not None:
            lo, hi = guard["jacobian"]
            det = stage_transform.jacobian_determinant(fixed.grid)
            out["det_j_range"] = [float(det.min()), float(det.max())]
            if not (lo <= out["det_j_range"][0] and out["det_j_range"][1] <= hi):
                out["accepted"] = False
    return out


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
