"""Surface distances in mm between two binary masks on one grid.

Surface voxels are mask voxels with at least one face neighbour outside the mask (the image border
counts as outside). Distances are Euclidean between voxel centres in world mm, exact: each surface
voxel's nearest surface voxel of the other mask by a k-d tree of the surface points in mm (index x
spacing; the direction matrix is a rotation and does not change distances). The tree costs the
surfaces' size, not the image's (a distance transform of the whole grid gives the same values).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.evaluate.labels import label_masks, to_reference, union_keys
from morphreg.evaluate.overlap import nanmean

SURFACE_METRICS = ("hausdorff_mm", "hd95_mm", "hd99_mm", "assd_mm")


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary of a bool mask (face connectivity): mask minus its erosion."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def _surface_points_mm(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """(n, ndim) positions in mm (tensor axis order, origin at index 0) of the surface voxels of ``mask``."""
    return np.argwhere(surface_voxels(mask)) * np.asarray(grid.spacing[::-1], dtype=np.float64)


def _nearest_mm(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return cKDTree(targets).query(points, workers=-1)[0]


def directed_surface_distances(a: np.ndarray, b: np.ndarray, grid: Grid) -> np.ndarray:
    """Distance (mm) from every surface voxel of ``a`` to the nearest surface voxel of ``b``."""
    return _nearest_mm(_surface_points_mm(a, grid), _surface_points_mm(b, grid))


def _around(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their joint bounding box plus one voxel (so that a surface on the box
    edge stays a surface): erosions then cost the structure's box, not the image."""
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
    pa, pb = _surface_points_mm(a, grid), _surface_points_mm(b, grid)
    d_ab, d_ba = _nearest_mm(pa, pb), _nearest_mm(pb, pa)
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
    out = surface_of_masks(label_masks(reference_labels), label_masks(labels), reference_labels.grid, keys)
    out["notes"] = notes + out["notes"]
    return out


def surface_of_masks(ref_masks: dict[str, np.ndarray], masks: dict[str, np.ndarray], grid: Grid,
                     keys: list[str] | None = None, on_structure=None) -> dict:
    """:func:`surface` of masks already made by :func:`label_masks` (both on ``grid``);
    ``on_structure()`` is called after each structure (progress)."""
    notes: list[str] = []
    keys = keys or union_keys(ref_masks, masks)
    empty = np.zeros(grid.shape, dtype=bool)
    out = {}
    for key in keys:
        a, b = ref_masks.get(key, empty), masks.get(key, empty)
        if not a.any() or not b.any():
            notes.append(f"label {key} is empty in {'both maps' if not (a.any() or b.any()) else 'one map'}"
                          ": surface distances reported as NaN")
        out[key] = surface_distances(a, b, grid)
        if on_structure is not None:
            on_structure()
    mean = {m: nanmean(v[m] for v in out.values()) for m in SURFACE_METRICS}
    return {"labels": out, "mean": mean, "notes": notes}
