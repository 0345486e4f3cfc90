"""One call that evaluates a registration result independently of the method that produced it.

The moving labels and landmarks are warped/mapped here with the saved transform (never taken from
the method's own warped output), and nothing from the similarity metrics, regularisers, optimisers
or the registration engine is used.
"""
from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

from morphreg.core.files import atomic_path
from morphreg.errors import MorphregError
from morphreg.image.labels import shared_labels
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.transforms.base import Transform
from morphreg.transforms.warp import warp
from morphreg.evaluate.labels import label_masks, select_structures, structure_crops, structure_keys, to_reference, union_keys
from morphreg.evaluate.landmarks import PointSet, label_centroids, tre
from morphreg.evaluate.overlap import overlap_of_masks
from morphreg.evaluate.surface import surface_of_masks
from morphreg.evaluate.transform_quality import mask_array, transform_quality
from morphreg.evaluate.intensity import intensity_similarity

METRICS_VERSION = 2  # 2: reference_grid keys as Grid.to_dict (origin, spacing); centroid TRE = |T(p) - q|


def centroid_tre(fixed_labels: Image, moving_labels: Image, transform: Transform | None,
                 keys: list[str] | None = None) -> dict:
    """TRE between structure centroids, mm: |T(p) - q| with p the centroid of a fixed structure and q
    that of the same moving structure, each computed on its own grid (defined for every structure,
    also one outside the other image's field of view; initial: |p - q|). ``keys`` restricts the
    structures (default: every channel / label value of either map)."""
    keys = keys or union_keys(label_masks(fixed_labels), label_masks(moving_labels))
    out = tre(label_centroids(fixed_labels, keys), label_centroids(moving_labels, keys), transform)
    out["notes"] = [f"structure {p['name']} is empty in one map: no centroid" for p in out["points"]
                    if not np.isfinite(p["final_mm"])]
    return out


def evaluate_registration(
    transform: Transform,
    fixed_labels: Image | None = None,
    moving_labels: Image | None = None,
    reference: Grid | Image | None = None,
    fixed_landmarks: PointSet | None = None,
    moving_landmarks: PointSet | None = None,
    mask: Image | None = None,
    inverse: Transform | None = None,
    fixed: Image | None = None,
    moving: Image | None = None,
    resample: bool = True,
    interpolation: str = "nearest",
    centroid_landmarks: bool = True,
    landmark_channels: str | None = None,
    structures: str | None = None,
    progress: Callable[[str, int], Callable[[], None]] | None = None,
) -> dict:
    """Every independent measure that the inputs allow, as one JSON-ready dict.

    Args:
        transform: fixed -> moving world mapping (as saved by the method).
        fixed_labels / moving_labels: label maps (integer or one-hot channels); the moving one is
            warped here with ``interpolation`` (nearest | label).
        reference: grid to evaluate on (default: the fixed labels', else the fixed image's grid).
            The fixed labels are resampled onto it with a note if needed (or refused when
            ``resample`` is false).
        fixed_landmarks / moving_landmarks: corresponding world points -> TRE.
        mask: region for folding statistics and rigidity.
        inverse: moving -> fixed transform -> inverse consistency.
        fixed / moving: intensity images -> intensity similarity (labelled as not independent).
        centroid_landmarks: also report TRE between label centroids (one per channel/label).
        landmark_channels: which structures are point landmarks ("1-": channels 1 on of a one-hot
            stack, label values of a map; see :func:`morphreg.evaluate.labels.parse_selection`):
            they get the centroid TRE only, the others Dice and surface distances only.
        structures: which structures are evaluated at all (same syntax, e.g. "0"; default all).
        progress: ``progress(step, parts)`` is called as each step starts (its name and how many parts
            it has) and returns a function called as each part ends (e.g. a progress bar's advance).
    """
    step = progress or _silent
    notes: list[str] = []
    candidates = [("the reference", reference.grid if isinstance(reference, Image) else reference),
                  ("the fixed labels", None if fixed_labels is None else fixed_labels.grid),
                  ("the fixed image", None if fixed is None else fixed.grid),
                  ("the transform's own grid", transform.domain())]
    source, ref = next(((name, g) for name, g in candidates if g is not None), (None, None))
    if ref is None:
        raise MorphregError("no reference grid: give fixed labels, a fixed image or --reference")
    if source == "the transform's own grid":
        notes.append("no reference, fixed labels or fixed image given: measured on the grid stored with the transform "
                     f"({' x '.join(map(str, ref.size))} at {', '.join(f'{v:.3g}' for v in ref.spacing)} mm), which may "
                     "differ from the fixed image's; give --reference for the fixed grid")
    out: dict = {"morphreg_metrics": METRICS_VERSION, "reference_grid": {**ref.to_dict(), "source": source}}
    if fixed_labels is not None and moving_labels is not None:
        shared_labels(fixed_labels, moving_labels)  # a map against a stack, or unequal stacks: refused, not scored 0
        fl = to_reference(fixed_labels, ref, resample, notes, "the fixed label map")
        step("warping the moving labels", 1)
        with torch.no_grad():
            warped = warp(moving_labels, transform, ref, interpolation)
            before = warp(moving_labels, None, ref, "nearest")
        keys = union_keys(dict.fromkeys(structure_keys(fl)), dict.fromkeys(structure_keys(before)))
        if structures is not None:
            keys = select_structures(keys, structures)
            if not keys:
                raise MorphregError(f"label channels {structures!r} select no structure of the label maps")
        landmark_keys = select_structures(keys, landmark_channels) if landmark_channels is not None else keys
        if landmark_channels is not None:
            keys = [k for k in keys if k not in landmark_keys]
            out["structures"] = {"overlap": keys, "landmarks": landmark_keys}
        if keys:
            done = step(f"overlap, surface distances: {len(keys)} structures", 2 * len(keys))
            fixed_masks, warped_masks, before_masks = structure_crops([fl, warped, before], keys)
            ov, sd = overlap_of_masks(fixed_masks, warped_masks, ref, keys), surface_of_masks(fixed_masks, warped_masks, ref, keys, done)
            notes += ov.pop("notes") + sd.pop("notes")
            out["overlap"], out["surface"] = ov, sd
            ov0, sd0 = overlap_of_masks(fixed_masks, before_masks, ref, keys), surface_of_masks(fixed_masks, before_masks, ref, keys, done)
            ov0.pop("notes"), sd0.pop("notes")
            out["initial"] = {"overlap": ov0, "surface": sd0}
        if centroid_landmarks and landmark_keys:
            step(f"centroid TRE of {len(landmark_keys)} structures", 1)
            ct = centroid_tre(fixed_labels, moving_labels, transform, landmark_keys)
            notes += ct.pop("notes")
            out["centroid_tre"] = ct
    elif (fixed_labels is None) != (moving_labels is None):
        notes.append("only one label map was given: no overlap measures")
    if fixed_landmarks is not None and moving_landmarks is not None:
        t = tre(fixed_landmarks, moving_landmarks, transform)
        notes += t.pop("notes")
        out["tre"] = t
    step("det J, folding and displacement" + (" and inverse consistency" if inverse is not None else ""), 1)
    q = transform_quality(transform, ref, mask=mask, inverse=inverse)
    notes += q.pop("notes")
    out["transform"] = q
    if fixed is not None and moving is not None:
        step("intensity similarity", 1)
        fx = to_reference(fixed, ref, True, notes, "the fixed image") if not fixed.is_label else fixed
        with torch.no_grad():
            wm = warp(moving.float(), transform, ref, "linear")
            bm = warp(moving.float(), None, ref, "linear")
        out["intensity"] = intensity_similarity(fx.float(), wm, mask_array(mask, ref))
        out["intensity_initial"] = intensity_similarity(fx.float(), bm, mask_array(mask, ref))
    out["notes"] = notes
    return out


def _silent(step: str, parts: int) -> Callable[[], None]:
    return lambda: None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)  # JSON has no NaN; null = not available
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_metrics(metrics: dict, path: str | Path) -> Path:
    """Write metrics as JSON atomically (NaN -> null)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(metrics), indent=2), encoding="utf-8")
    return path
