"""Surface distances in mm between two binary masks on one grid.

Surface voxels are mask voxels with at least one face neighbour outside the mask (the image border
counts as outside). Distances are Euclidean between voxel centres in world mm: the exact Euclidean
distance transform (scipy) with ``sampling = spacing``; the direction matrix is a rotation and does
not change distances.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.evaluate.labels import label_masks, to_reference, union_keys
from morphreg.evaluate.overlap import nanmean

SURFACE_METRICS = ("hausdorff_mm", "hd95_mm", "hd99_mm", "assd_mm")


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary of a bool mask (face connectivity): mask minus its erosion."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def _spacing_tensor_order(grid: Grid) -> tuple[float, ...]:
    return tuple(float(s) for s in grid.spacing[::-1])  # tensor axes are (z, y, x)


def directed_surface_distances(a: np.ndarray, b: np.ndarray, grid: Grid) -> np.ndarray:
    """Distance (mm) from every surface voxel of ``a`` to the nearest surface voxel of ``b``."""
    sa, sb = surface_voxels(a), surface_voxels(b)
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=_spacing_tensor_order(grid))
    return dist_to_b[sa]


def _around(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their joint bounding box plus one voxel: every surface voxel of either lies
    inside, and so does its nearest one of the other, so the distances are exact; the distance
    transforms then cost a small box instead of the whole image (45 brain labels: see RESULTS.md)."""
    either, box = a | b, []
    for axis in range(a.ndim):
        idx = np.flatnonzero(np.any(either, axis=tuple(i for i in range(a.ndim) if i != axis)))
        box.append(slice(max(int(idx[0]) - 1, 0), int(idx[-1]) + 2))
    return a[tuple(box)], b[tuple(box)]


def surface_distances(a: np.ndarray, b: np.ndarray, grid: Grid) -> dict[str, float]:
    """Hausdorff (max), HD95, HD99 and ASSD (mm) between masks ``a`` and ``b`` on ``grid``.

    HDp is the larger of the two directed p-th percentiles (the MONAI convention); ASSD is the mean
    of all distances of both directions pooled. Any empty mask gives NaN for every value.
    """
    if not a.any() or not b.any():
        return {k: math.nan for k in SURFACE_METRICS}
    a, b = _around(a, b)
    d_ab = directed_surface_distances(a, b, grid)
    d_ba = directed_surface_distances(b, a, grid)
    return {
        "hausdorff_mm": float(max(d_ab.max(), d_ba.max())),
        "hd95_mm": float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))),
        "hd99_mm": float(max(np.percentile(d_ab, 99), np.percentile(d_ba, 99))),
        "assd_mm": float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)),
    }


def surface(reference_labels: Image, labels: Image, resample: bool = True, keys: list[str] | None = None) -> dict:
    """Surface distances per structure (see :func:`surface_distances`) and their means.

    Returns ``{"labels": {key: {hausdorff_mm, hd95_mm, hd99_mm, assd_mm}}, "mean": {...}, "notes": [...]}``;
    grids and missing structures are handled as in :func:`morphreg.evaluate.overlap.overlap`.
    """
    notes: list[str] = []
    labels = to_reference(labels, reference_labels.grid, resample, notes, "the evaluated label map")
    ref_masks, masks = label_masks(reference_labels), label_masks(labels)
    keys = keys or union_keys(ref_masks, masks)
    empty = np.zeros(reference_labels.grid.shape, dtype=bool)
    out = {}
    for key in keys:
        a, b = ref_masks.get(key, empty), masks.get(key, empty)
        if not a.any() or not b.any():
            notes.append(f"label {key} is empty in {'both maps' if not (a.any() or b.any()) else 'one map'}: surface distances reported as NaN")
        out[key] = surface_distances(a, b, reference_labels.grid)
    mean = {m: nanmean(v[m] for v in out.values()) for m in SURFACE_METRICS}
    return {"labels": out, "mean": mean, "notes": notes}
