"""Named methods as data: each preset is a list of stages run one after the other.

A stage is a plain dict (every key can be overridden through ``register(..., **overrides)``):

    model:            translation | rigid | similarity | affine | bspline | svf | displacement | tps
                      | demons | convex (solvers of their own: morphreg.register.methods.demons / .convex);
                      any name registered in morphreg.register.methods.METHODS
    model_params:     e.g. {"control_spacing_mm": 8} (bspline), {"symmetric": True, "smoothing_mm": 2}
    similarity:       a name of morphreg.metrics.SIMILARITIES, or {"mono": ..., "multi": ...}
                      chosen from the modality pair ("auto" detection or the ``modality`` override)
    similarity_params: keyword arguments of the similarity, per name: {"lncc": {"window": 5}}
    penalties:        [{"name": "bending", "weight": 1.0, "params": {}, "mask": None | "rigidity"}]
    optimizer:        {"name": "adam" | "gd" | "lbfgs" | "asgd", "lr": mm, "tolerance": ..., ...}
    levels:           [[shrink, sigma, iterations], ...]; sigma in mm, "<k>vox" (k voxels of the fixed
                      image) or None (= shrink / 2 voxels of the fixed image)
    init:             linear stages only: "identity" | "geometry" | "moments" | "principal_axes" | "fft"
    label_weight, landmark_weight: weights of the optional label (soft Dice) and landmark terms.
    similarity_weight: weight of the image similarity (0 = labels/landmarks only).
    label_sigma_mm:   Gaussian smoothing of the label maps for this stage (wider capture range).
    fov_mask:         True | {"roi": fraction}: without a user mask, evaluate the similarity in the fixed
                      image's field of view (non-background, eroded), optionally its central ellipsoid.
    guard:            independent divergence check after the stage (``morphreg.register.guards.check_stage``):
                      {"similarity": name, "sigma_mm", "min_gain", "max_move_mm", "jacobian": [lo, hi]}.

The transform of the whole run maps fixed points to moving points: CompositeTransform([linear, deformable]).
"""
from __future__ import annotations

import copy

from morphreg.errors import MorphregError

MERGED_KEYS = ("model_params", "similarity_params", "optimizer")  # dict-valued keys merged by overrides

LINEAR_LEVELS = [[4, None, 80], [2, None, 60], [1, 0.0, 40]]
DEFORMABLE_LEVELS = [[4, None, 80], [2, None, 60], [1, 0.0, 40]]

_MONO_MULTI_LINEAR = {"mono": "ncc", "multi": "mi"}
_LINEAR_OPT = {"name": "adam", "lr": 0.5, "tolerance": 1e-5, "patience": 15, "extra": {"final_lr_ratio": 0.05}}

RIGID = {
    "model": "rigid",
    "similarity": _MONO_MULTI_LINEAR,
    "optimizer": _LINEAR_OPT,
    "levels": LINEAR_LEVELS,
    "init": "geometry",
}
AFFINE = {**RIGID, "model": "affine", "init": None}
BSPLINE = {
    "model": "bspline",
    "model_params": {"control_spacing_mm": 8.0},
    "similarity": {"mono": "ncc", "multi": "mi"},
    "penalties": [{"name": "bending", "weight": 0.5}],
    "optimizer": {"name": "adam", "lr": 0.3, "tolerance": 1e-5, "patience": 15, "extra": {"final_lr_ratio": 0.1}},
    "levels": DEFORMABLE_LEVELS,
}
# SyN class (morphreg.register.methods.dense, "solver": "fast"): symmetric stationary velocity on a 4x coarser grid (Gaussian
# smoothed, diffusion penalty), LNCC (window 5 voxels of each level) half way, Adam at 1/4 and 1/2
# resolution; like ANTs' default SyN the full-resolution level gets no iterations. Pyramid smoothing is
# half the usual (1 voxel at 1/4, none at 1/2: resampling at 1/2 already averages 2^d voxels): brain T1
# Dice 0.612 -> 0.623 (b->a) and 0.616 -> 0.626 (a->b), same time. Used by "default"
# for mono-modal pairs; "syn" keeps the generic driver (its synthetic-recovery tests need finer fields).
# Iterations 40 + 12 (ANTs' default SyN runs 40 + 20) instead of 60 + 30, session 6: chosen on b->a among
# 60+30 / 40+20 / 60+15 / 30+15 / 40+12 / 40+8 (Dice 0.6233 / 0.6234 / 0.6217 / 0.6225 / 0.6254 / 0.6235;
# the level-2 iteration costs 3x a level-4 one), then checked on a->b: 0.6257 -> 0.6266, deformable stage
# 20.2 -> 11.5 s, no folded voxel (min det J 0.063 -> 0.057). Adam's rate decays over each level's budget.
FAST_SYN = {
    "model": "svf",
    "model_params": {"solver": "fast", "symmetric": True, "smoothing_mm": 2.0, "steps": 7, "field_shrink": 4,
                     "exp_shrink": 2},
    "similarity": {"mono": "lncc", "multi": "mind"},
    "similarity_params": {"lncc": {"window": 7}},
    "penalties": [{"name": "diffusion", "weight": 0.05}],
    "optimizer": {"name": "adam", "lr": 2.0, "tolerance": 1e-4, "patience": 10, "extra": {"final_lr_ratio": 0.2}},
    "levels": [[4, "1vox", 40], [2, 0.0, 12]],
}
# LNCC window 7 (was 5), session 19, once the stages saw the images in the engine's intensity units (LNCC's eps
# then means the same on every image): chosen on brain b->a among eps 1e-3..1e-6, window 5 / 7 / 9, velocity
# smoothing 2 / 2.25 / 2.5 mm, diffusion 0.05 / 0.1 and 60 + 20 iterations, checked on a->b (RESULTS.md, session 19).
# "accurate": FAST_SYN with a finer velocity (2 mm grid instead of 4 mm), three whole-image full-resolution
# iterations and exp(v) integrated at full resolution (exp_shrink 1). Session 20 (brain T1, in-process register(),
# tuned on b->a; benchmarks/RESULTS.md): the previous accurate (4 mm velocity, 160 iterations of 8 random 32^3
# cubes at full resolution, window 9, smoothing 3 mm) 0.6456 with a 82 s deformable stage; with a 2 mm velocity
# 0.6499 at 229 s (the cubes then exponentiate the finer field 160 times); default + 2 mm velocity 0.6497,
# + exp_shrink 1 0.6527, + 5 whole-image level-1 iterations 0.6598 (a->b, not tuned on: 0.6568), 3 of them
# 0.6587 (deformable 62 s); no folded voxel in any of these. The random-cube level ("patches") stays available.
FAST_SYN_ACCURATE = {
    **FAST_SYN,
    "model_params": {**FAST_SYN["model_params"], "field_shrink": 2, "exp_shrink": 1},
    "levels": [[4, "1vox", 40], [2, 0.0, 12], [1, 0.0, 3]],
}
SYN = {
    "model": "svf",
    "model_params": {"symmetric": True, "smoothing_mm": 1.5, "steps": 7, "field_shrink": 2},
    "similarity": {"mono": "lncc", "multi": "mind"},
    "penalties": [{"name": "diffusion", "weight": 0.5}],
    "optimizer": {"name": "adam", "lr": 0.3, "tolerance": 1e-5, "patience": 15, "extra": {"final_lr_ratio": 0.1}},
    "levels": DEFORMABLE_LEVELS,
}
# Mono-modal linear stages of "default": cheap on near-aligned inputs (coarse levels, early stop).
MONO_RIGID = {**RIGID, "levels": [[4, None, 30]], "optimizer": {**_LINEAR_OPT, "tolerance": 1e-4, "patience": 8}}
MONO_AFFINE = {**MONO_RIGID, "model": "affine", "init": None, "levels": [[4, None, 30], [2, None, 15]]}
# Classical demons (morphreg.register.methods.demons, its own iterative solver): symmetric log-domain
# diffeomorphic demons by default; variant "thirion" (additive) or "compositive" (diffeomorphic
# demons). Intensity differences for mono-modal pairs, MIND-SSC channels for multimodal ones.
DEMONS = {
    "model": "demons",
    "model_params": {"variant": "diffeomorphic", "force": "symmetric", "fluid_sigma_vox": 1.0,
                     "diffusion_sigma_vox": 1.0, "max_step_vox": 2.0},
    "levels": [[4, None, 80], [2, None, 60], [1, 0.0, 40]],
}
# ConvexAdam (morphreg.register.methods.convex): MIND-SSC cost volume over a displacement search on a coarse
# grid, coupled convex optimisation, then Adam instance optimisation of a dense field (diffusion).
CONVEX = {
    "model": "convex",
    "model_params": {"grid_shrink": 3, "search_steps": 4, "smoothing_mm": None, "field_shrink": 2},
    "similarity": {"mono": "mind", "multi": "mind"},
    "penalties": [{"name": "diffusion", "weight": 0.1}],
    "optimizer": {"name": "adam", "lr": 0.5, "tolerance": 1e-5, "patience": 15, "extra": {"final_lr_ratio": 0.1}},
    "levels": [[2, None, 60], [1, 0.0, 20]],
}
TPS = {"model": "tps", "model_params": {"smoothing": 0.0}}

# Multimodal pairs, images only (the default for "multi"; e.g. MR -> TRUS). Generic metrics barely tell
# the right alignment from the wrong one there (measured on prostate MR-TRUS: MI, NMI, NGF and MIND
# favour the true pose over the image-centre one in only ~50 % of pairs over the whole field of view),
# so the schedule is cautious: one rigid stage, MIND-SSC over the fixed field of view restricted to its
# central region (the organ the probe is aimed at), small steps, coarse levels only; and an independent
# check: the stage is kept only if local NCC (not optimised) improves by >= 15 % in the same region and
# the region moved by <= 15 mm RMS; otherwise the initial (image-centre) alignment is returned.
# Thresholds from the 78 prostate pairs with the stage always accepted (in-sample, so optimistic): of
# the candidate checks only the local-NCC gain correlated with the TRE change (r = 0.53; NGF, MI, NMI,
# MIND gains: |r| <= 0.09). Always accepting made 46 pairs worse; 5 % / 20 mm: 35 accepted, 16 worse;
# 15 % / 15 mm: 22 accepted, 7 worse, mean TRE change of the accepted -2.3 mm, same median TRE.
MULTIMODAL_RIGID = {
    "model": "rigid",
    "init": "geometry",
    "similarity": "mind",
    "fov_mask": {"roi": 0.3},
    "optimizer": {"name": "adam", "lr": 0.3, "tolerance": 1e-5, "patience": 15, "extra": {"final_lr_ratio": 0.05}},
    "levels": [[4, None, 60], [2, None, 40]],
    "guard": {"similarity": "lncc", "sigma_mm": 1.5, "max_move_mm": 15.0, "min_gain": 0.15},
}
# Different contrasts of the same anatomy (the images' outlines overlay: e.g. MR T1 / T2, CT / MR of the
# head; modality_evidence test 2 passes, test 3 fails): mutual information for the linear stages, MIND-SSC
# for the fast SyN stage. Each stage has an independent check that tells "worse" from "not better": NGF
# (gradient alignment, optimised by none of the stages) may not get worse by more than 2 %, and the
# deformable stage's det J must stay within 0.1..10; a stage that fails is discarded (with a warning).
_NGF_GUARD = {"similarity": "ngf", "sigma_mm": 1.0, "min_gain": -0.02}
MULTICONTRAST_RIGID = {"model": "rigid", "init": "geometry", "similarity": "mi", "optimizer": _LINEAR_OPT,
                       "levels": [[4, None, 60], [2, None, 40]], "guard": _NGF_GUARD}
MULTICONTRAST_AFFINE = {**MULTICONTRAST_RIGID, "model": "affine", "init": None, "levels": [[4, None, 40], [2, None, 30]]}
# Velocity smoothing 3 mm (FAST_SYN: 2 mm): on the T1 / T2 head pair (ct_head_2d) 2 mm reached det J 0.094
# and was discarded; 3 mm: det J 0.12..5.9, head-mask Dice 0.979 -> 0.986 (affine alone 0.980), HD95
# 4.5 -> 3.6 mm. One pair only, so a cautious default rather than a tuned one.
MULTICONTRAST_SYN = {**FAST_SYN, "model_params": {**FAST_SYN["model_params"], "smoothing_mm": 3.0},
                     "similarity": "mind", "guard": {**_NGF_GUARD, "jacobian": [0.1, 10.0]},
                     "levels": [[4, "1vox", 60], [2, 0.0, 30]]}  # as measured (FAST_SYN's shorter schedule was not)

# Label-driven (the default when label maps of both images are given for a multimodal pair): affine
# fitted by soft Dice on Gaussian-smoothed (3 mm) label maps, from the labels' centres of mass, images
# not used. A following deformable stage driven by the labels raised gland Dice (0.94 -> 0.97-0.98) but
# made the landmark error worse (5.1 -> 5.9-6.9 mm median on obs000-009), so it is left out.
LABEL_AFFINE = {
    "model": "affine",
    "init": "labels",
    "similarity": "ncc",
    "similarity_weight": 0.0,
    "label_sigma_mm": 3.0,
    "optimizer": {"name": "adam", "lr": 0.5, "tolerance": 1e-5, "patience": 15, "extra": {"final_lr_ratio": 0.05}},
    "levels": [[2, None, 80], [1, 0.0, 60]],
}

PRESETS: dict[str, list[dict]] = {
    "rigid": [RIGID],
    "affine": [RIGID, AFFINE],
    "bspline": [RIGID, AFFINE, BSPLINE],
    "syn": [RIGID, AFFINE, SYN],
    "demons": [RIGID, AFFINE, DEMONS],
    "convex": [RIGID, AFFINE, CONVEX],
    "tps": [TPS],
    # Any deformable preset plus the rigidity penalty (Staring et al.) inside the "rigidity" mask.
    "rigidity": [RIGID, AFFINE, {**BSPLINE, "penalties": BSPLINE["penalties"] + [
        {"name": "rigidity", "weight": 5.0, "mask": "rigidity"}]}],
    "default": [MONO_RIGID, MONO_AFFINE, FAST_SYN],
    "accurate": [MONO_RIGID, MONO_AFFINE, FAST_SYN_ACCURATE],  # slower, finer "default"
    # What "default" and "accurate" become for a multimodal pair (see register()): images only, or with labels.
    "multimodal": [MULTIMODAL_RIGID],
    "multicontrast": [MULTICONTRAST_RIGID, MULTICONTRAST_AFFINE, MULTICONTRAST_SYN],
    "labels": [LABEL_AFFINE],
}


def get_preset(name: str) -> list[dict]:
    """A deep copy of the named preset's stages (safe to modify)."""
    if name not in PRESETS:
        raise MorphregError(f"unknown preset {name!r} (choose from {', '.join(sorted(PRESETS))})")
    return copy.deepcopy(PRESETS[name])


STAGE_KEYS = ("model", "model_params", "similarity", "similarity_params", "penalties", "optimizer", "levels",
              "init", "label_weight", "landmark_weight", "similarity_weight", "label_sigma_mm", "guard", "fov_mask")


def parse_override(item: str) -> dict:
    """One command-line override ``KEY=VALUE`` as a ``register(**overrides)`` entry.

    KEY is ``[STAGE.]key[.subkey...]``: STAGE a stage index or model name (every stage when absent),
    key one of :data:`STAGE_KEYS`, subkeys inside a dict-valued key. VALUE is YAML (``null``, numbers,
    lists, ``{name: diffusion, weight: 0.1}``). ``2.levels=[[4,1vox,60],[2,0,30]]`` ->
    ``{"2.levels": [[4, "1vox", 60], [2, 0, 30]]}``; ``bspline.model_params.control_spacing_mm=15`` ->
    ``{"bspline.model_params": {"control_spacing_mm": 15}}``.
    """
    import yaml
    from morphreg.core.yaml_values import load_yaml

    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    where = next((i for i, p in enumerate(parts) if p in STAGE_KEYS), None)
    if not sep or where is None:
        raise MorphregError(f"--set {item!r}: expected [STAGE.]KEY[.SUBKEY]=VALUE with KEY one of {', '.join(STAGE_KEYS)}")
    try:
        value = load_yaml(text)
    except yaml.YAMLError as exc:
        raise MorphregError(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    for sub in reversed(parts[where + 1:]):
        value = {sub: value}
    return {".".join(parts[: where + 1]): value}


def parse_overrides(items) -> dict:
    """Repeated ``--set`` items as one overrides dict; items on one dict key (``optimizer.lr``,
    ``optimizer.name``) add up."""
    overrides: dict = {}
    for item in items or []:
        overrides = deep_merge(overrides, parse_override(item))
    return overrides


def load_preset_file(path) -> list[dict]:
    """Stages from a YAML file with the schema of the built-in presets (``morphreg presets show NAME``):
    a list of stage dicts, or ``{"stages": [...]}``."""
    from pathlib import Path

    import yaml
    from morphreg.core.yaml_values import load_yaml

    path = Path(path)
    if not path.is_file():
        raise MorphregError("preset file not found", path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MorphregError(f"not valid YAML: {str(exc).splitlines()[0]}", path) from None
    stages = data.get("stages") if isinstance(data, dict) else data
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) and "model" in s for s in stages):
        raise MorphregError("a preset file holds a list of stages, each a mapping with a 'model' key", path)
    for i, stage in enumerate(stages):
        unknown = sorted(set(stage) - set(STAGE_KEYS))
        if unknown:
            raise MorphregError(f"stage {i}: unknown key(s) {', '.join(unknown)} (stage keys: {', '.join(STAGE_KEYS)})", path)
    return stages


def preset_yaml(name: str) -> str:
    """The named preset as YAML, loadable with ``--preset-file``."""
    import yaml

    class NoAliases(yaml.SafeDumper):  # stages share dicts in the source; spell each one out
        def ignore_aliases(self, data):
            return True

    return yaml.dump({"stages": get_preset(name)}, Dumper=NoAliases, sort_keys=False, default_flow_style=None)


def stage_similarity(stage: dict, modality: str) -> tuple[str, dict]:
    """The similarity name and its parameters of a stage for a "mono" or "multi" pair."""
    sim = stage.get("similarity", "ncc")
    if isinstance(sim, dict):
        sim = sim[modality]
    params = stage.get("similarity_params", {}) or {}
    if sim in params and isinstance(params[sim], dict):
        params = params[sim]  # per-similarity parameters
    elif any(isinstance(v, dict) for v in params.values()):
        params = {}
    return sim, dict(params)


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
