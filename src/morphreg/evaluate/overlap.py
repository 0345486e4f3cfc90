"""Label overlap: Dice and Jaccard per structure and their mean (voxel counts on one grid)."""
from __future__ import annotations

import math

import numpy as np

from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.evaluate.labels import label_masks, to_reference, union_keys, voxel_volume


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A n B| / (|A| + |B|) of two bool masks; NaN when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return math.nan if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A n B| / |A u B| of two bool masks; NaN when both are empty."""
    union = int(np.logical_or(a, b).sum())
    return math.nan if union == 0 else int(np.logical_and(a, b).sum()) / union


def nanmean(values) -> float:
    vals = np.asarray([v for v in values if v is not None], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else math.nan


def overlap(reference_labels: Image, labels: Image, resample: bool = True, keys: list[str] | None = None) -> dict:
    """Dice and Jaccard of each structure of ``labels`` against ``reference_labels``.

    Args:
        reference_labels: the fixed (ground-truth) label map; its grid is the comparison grid.
        labels: e.g. the warped moving label map. On another grid it is resampled (nearest, with a
            note) when ``resample`` is true, else a MorphregError is raised.
        keys: structures to report (default: every structure found in either map).
    Returns:
        ``{"labels": {key: {dice, jaccard, reference_volume_mm3, volume_mm3}}, "mean": {dice, jaccard},
        "notes": [...]}``. A structure missing from one map gets Dice 0 and a note; missing from
        both, NaN and a note. Means skip NaN.
    """
    notes: list[str] = []
    labels = to_reference(labels, reference_labels.grid, resample, notes, "the evaluated label map")
    out = overlap_of_masks(label_masks(reference_labels), label_masks(labels), reference_labels.grid, keys)
    out["notes"] = notes + out["notes"]
    return out


def overlap_of_masks(ref_masks: dict[str, np.ndarray], masks: dict[str, np.ndarray], grid: Grid,
                     keys: list[str] | None = None) -> dict:
    """:func:`overlap` of masks already made by :func:`label_masks` (both on ``grid``)."""
    notes: list[str] = []
    keys = keys or union_keys(ref_masks, masks)
    vox = voxel_volume(grid)
    empty = np.zeros(grid.shape, dtype=bool)
    out: dict[str, dict] = {}
    for key in keys:
        a, b = ref_masks.get(key, empty), masks.get(key, empty)
        if not a.any() and not b.any():
            notes.append(f"label {key} is empty in both maps: Dice/Jaccard reported as NaN")
        elif not a.any() or not b.any():
            notes.append(f"label {key} is missing from the {'reference' if not a.any() else 'evaluated'} map")
        out[key] = {"dice": dice(a, b), "jaccard": jaccard(a, b),
                    "reference_volume_mm3": float(a.sum()) * vox, "volume_mm3": float(b.sum()) * vox}
    mean = {m: nanmean(v[m] for v in out.values()) for m in ("dice", "jaccard")}
    return {"labels": out, "mean": mean, "notes": notes}
