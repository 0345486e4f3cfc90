"""Similarity metrics (plain differentiable functions, 2D/3D, masks/weights everywhere).

Value functions return the natural value (NCC in [-1, 1], MI in nats, ...); ``SIMILARITIES`` is the
registry of losses (lower is better) with the signature ``loss(fixed, warped, mask=None, **params)`` and
whether each needs the grid (``add_similarity`` adds one; ``SIMILARITY_LOSSES`` is a name -> loss view).
"""
from morphreg.metrics.intensity import local_ncc, mse, ncc
from morphreg.metrics.losses import (
    SIMILARITIES,
    SIMILARITY_LOSSES,
    SimilarityEntry,
    SimilarityLoss,
    add_similarity,
    similarity_entry,
    similarity_loss,
    similarity_term,
)
from morphreg.metrics.mind import mind_loss, mind_ssc
from morphreg.metrics.mutual_information import joint_histogram, mutual_information, normalized_mutual_information
from morphreg.metrics.ngf import ngf
from morphreg.metrics.overlap import soft_dice, soft_dice_loss
from morphreg.metrics.points import landmark_loss
from morphreg.metrics.sampling import gather_voxels, index_points, sample_indices

__all__ = [
    "mse", "ncc", "local_ncc", "ngf", "joint_histogram", "mutual_information", "normalized_mutual_information",
    "mind_ssc", "mind_loss", "sample_indices", "gather_voxels", "index_points",
    "SIMILARITIES", "SIMILARITY_LOSSES", "SimilarityEntry", "SimilarityLoss", "add_similarity", "similarity_entry", "similarity_loss",
    "similarity_term", "soft_dice", "soft_dice_loss", "landmark_loss",
]
