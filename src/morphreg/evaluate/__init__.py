"""Independent evaluation of registrations: overlap, surface distances, landmark TRE, transform
quality, intensity similarity (labelled as not independent) and statistics over cases.

Independence: nothing here imports the similarity metrics, regularisers, optimisers or the
registration engine; labels and points are warped with the saved transform. The names are imported
on first use (PEP 562): the engine reads its warnings from here without loading scipy's statistics
(0.9 s of every registration's start).
"""
from __future__ import annotations

import importlib

# Eager: these functions share their module's name, and importing the submodule (as evaluate.run does)
# would set the package attribute to the module, shadowing a lazy name.
from morphreg.evaluate.overlap import dice, jaccard, overlap
from morphreg.evaluate.surface import surface, surface_distances, surface_voxels

_LAZY = {
    "intensity_similarity": "morphreg.evaluate.intensity",
    "mse": "morphreg.evaluate.intensity",
    "ncc": "morphreg.evaluate.intensity",
    "nmi": "morphreg.evaluate.intensity",
    "ssim": "morphreg.evaluate.intensity",
    "label_masks": "morphreg.evaluate.labels",
    "to_reference": "morphreg.evaluate.labels",
    "PointSet": "morphreg.evaluate.landmarks",
    "label_centroids": "morphreg.evaluate.landmarks",
    "map_points": "morphreg.evaluate.landmarks",
    "read_landmarks": "morphreg.evaluate.landmarks",
    "tre": "morphreg.evaluate.landmarks",
    "write_landmarks_csv": "morphreg.evaluate.landmarks",
    "centroid_tre": "morphreg.evaluate.run",
    "evaluate_registration": "morphreg.evaluate.run",
    "write_metrics": "morphreg.evaluate.run",
    "compare": "morphreg.evaluate.stats",
    "comparison_markdown": "morphreg.evaluate.stats",
    "flatten": "morphreg.evaluate.stats",
    "load_cases": "morphreg.evaluate.stats",
    "markdown_table": "morphreg.evaluate.stats",
    "paired_wilcoxon": "morphreg.evaluate.stats",
    "summarize": "morphreg.evaluate.stats",
    "displacement_magnitude": "morphreg.evaluate.transform_quality",
    "inverse_consistency": "morphreg.evaluate.transform_quality",
    "jacobian_determinant": "morphreg.evaluate.transform_quality",
    "jacobian_stats": "morphreg.evaluate.transform_quality",
    "rigidity": "morphreg.evaluate.transform_quality",
    "transform_quality": "morphreg.evaluate.transform_quality",
}

__all__ = [
    "intensity_similarity", "mse", "ncc", "nmi", "ssim", "label_masks", "to_reference", "PointSet", "label_centroids",
    "map_points", "read_landmarks", "tre", "write_landmarks_csv", "dice", "jaccard", "overlap", "centroid_tre",
    "evaluate_registration", "write_metrics", "compare", "comparison_markdown", "flatten", "load_cases",
    "markdown_table", "paired_wilcoxon", "summarize", "surface", "surface_distances", "surface_voxels",
    "displacement_magnitude", "inverse_consistency", "jacobian_determinant", "jacobian_stats", "rigidity",
    "transform_quality",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'morphreg.evaluate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
