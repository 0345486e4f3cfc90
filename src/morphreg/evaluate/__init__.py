"""Independent evaluation of registrations: overlap, surface distances, landmark TRE, transform
quality, intensity similarity (labelled as not independent) and statistics over cases.

Independence: nothing here imports the similarity metrics, regularisers, optimisers or the
registration engine; labels and points are warped with the saved transform.
"""
from morphreg.evaluate.intensity import intensity_similarity, mse, ncc, nmi, ssim
from morphreg.evaluate.labels import label_masks, to_reference
from morphreg.evaluate.landmarks import PointSet, label_centroids, map_points, read_landmarks, tre, write_landmarks_csv
from morphreg.evaluate.overlap import dice, jaccard, overlap
from morphreg.evaluate.run import centroid_tre, evaluate_registration, write_metrics
from morphreg.evaluate.stats import compare, comparison_markdown, flatten, load_cases, markdown_table, paired_wilcoxon, summarize
from morphreg.evaluate.surface import surface, surface_distances, surface_voxels
from morphreg.evaluate.transform_quality import (
    displacement_magnitude,
    inverse_consistency,
    jacobian_determinant,
    jacobian_stats,
    rigidity,
    transform_quality,
)

__all__ = [
    "intensity_similarity", "mse", "ncc", "nmi", "ssim", "label_masks", "to_reference", "PointSet", "label_centroids",
    "map_points", "read_landmarks", "tre", "write_landmarks_csv", "dice", "jaccard", "overlap", "centroid_tre",
    "evaluate_registration", "write_metrics", "compare", "comparison_markdown", "flatten", "load_cases",
    "markdown_table", "paired_wilcoxon", "summarize", "surface", "surface_distances", "surface_voxels",
    "displacement_magnitude", "inverse_consistency", "jacobian_determinant", "jacobian_stats", "rigidity",
    "transform_quality",
]
