"""Named methods as data: each preset is a list of stages run one after the other.

A stage is a plain dict (every key can be overridden through ``register(..., **overrides)``):

    model:            translation | rigid | similarity | affine | bspline | svf | displacement | tps
    model_params:     e.g. {"control_spacing_mm": 8} (bspline), {"symmetric": True, "smoothing_mm": 2}
    similarity:       a name of morphreg.metrics.SIMILARITY_LOSSES, or {"mono": ..., "multi": ...}
                      chosen from the modality pair ("auto" detection or the ``modality`` override)
    similarity_params: keyword arguments of the similarity, per name: {"lncc": {"window": 5}}
    penalties:        [{"name": "bending", "weight": 1.0, "params": {}, "mask": None | "rigidity"}]
    optimizer:        {"name": "adam" | "gd" | "lbfgs" | "asgd", "lr": mm, "tolerance": ..., ...}
    levels:           [[shrink, sigma_mm or None (= shrink / 2 voxels of the fixed image), iterations], ...]
    init:             linear stages only: "identity" | "geometry" | "moments" | "principal_axes" | "fft"
    label_weight, landmark_weight: weights of the optional label (soft Dice) and landmark terms.

The transform of the whole run maps fixed points to moving points: CompositeTransform([linear, deformable]).
"""
from __future__ import annotations

import copy

from morphreg.errors import MorphregError

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
SYN = {
    "model": "svf",
    "model_params": {"symmetric": True, "smoothing_mm": 1.5, "steps": 7, "field_shrink": 2},
    "similarity": {"mono": "lncc", "multi": "mind"},
    "penalties": [{"name": "diffusion", "weight": 0.5}],
    "optimizer": {"name": "adam", "lr": 0.3, "tolerance": 1e-5, "patience": 15, "extra": {"final_lr_ratio": 0.1}},
    "levels": DEFORMABLE_LEVELS,
}
# Diffeomorphic log-demons: a velocity field, intensity differences with symmetric forces (both images
# warped half way), Gaussian regularisation of the field (diffusion-like) in every evaluation.
DEMONS = {
    "model": "svf",
    "model_params": {"symmetric": True, "smoothing_mm": 2.0, "steps": 7, "field_shrink": 2},
    "similarity": {"mono": "mse", "multi": "mind"},
    "penalties": [],
    "optimizer": {"name": "adam", "lr": 0.3, "tolerance": 1e-5, "patience": 15, "extra": {"final_lr_ratio": 0.1}},
    "levels": DEFORMABLE_LEVELS,
}
TPS = {"model": "tps", "model_params": {"smoothing": 0.0}}

PRESETS: dict[str, list[dict]] = {
    "rigid": [RIGID],
    "affine": [RIGID, AFFINE],
    "bspline": [RIGID, AFFINE, BSPLINE],
    "syn": [RIGID, AFFINE, SYN],
    "demons": [RIGID, AFFINE, DEMONS],
    "tps": [TPS],
    # Any deformable preset plus the rigidity penalty (Staring et al.) inside the "rigidity" mask.
    "rigidity": [RIGID, AFFINE, {**BSPLINE, "penalties": BSPLINE["penalties"] + [
        {"name": "rigidity", "weight": 5.0, "mask": "rigidity"}]}],
    "default": [RIGID, AFFINE, SYN],
}


def get_preset(name: str) -> list[dict]:
    """A deep copy of the named preset's stages (safe to modify)."""
    if name not in PRESETS:
        raise MorphregError(f"unknown preset {name!r} (choose from {', '.join(sorted(PRESETS))})")
    return copy.deepcopy(PRESETS[name])


STAGE_KEYS = ("model", "model_params", "similarity", "similarity_params", "penalties", "optimizer", "levels",
              "init", "label_weight", "landmark_weight", "similarity_weight")
