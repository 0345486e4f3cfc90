"""Loss terms as pure functions: named, weighted terms of batched tensors.

One registration objective, written once and shared by the classical levels (``objective.py``) and,
next, by network training:

    J = w_sim * D(F, M o T)                         "similarity"   (N, C, *spatial) images, mask
      + w_label * (1 - soft Dice(F_lab, M_lab o T))  "labels"       (N, K, *spatial) one-hot / soft
                                                     (mean over Gaussian scales when label_scales_mm is set)
      + w_landmark * mean |T(p) - q|^2 / (10 mm)^2   "landmarks"    (..., K, dim) mm
      + w_endpoint * mean |T(x) - S(x)| / 1 mm       "endpoint"     (N, *shape, dim) mm, S known (training)
      + w_centroid * mean |c(F_lab) - c(M_lab o T)| / 10 mm   "centroids"  label centroids (landmark blobs)
      + w_box * mean box distance(F_lab, M_lab o T) / 10 mm   "boxes"      label bounding boxes (moments)
      + sum_i alpha_i * R_i(field of T)              penalty names  (N, dim, *field grid) mm

D is a registered similarity (``morphreg.metrics.SIMILARITIES``; the registry says which need the
grid), R_i a registered penalty (``morphreg.regularizers.PENALTIES``). Every term is returned
already weighted, under its own name, so traces and training logs show them term by term.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from morphreg.core.grid import Grid
from morphreg.errors import MorphregError
from morphreg.metrics.losses import similarity_term
from morphreg.metrics.overlap import multiscale_soft_dice_loss, soft_dice_loss
from morphreg.metrics.points import box_distance, centroid_distance, endpoint_error, landmark_loss
from morphreg.regularizers.penalties import penalty_function


@dataclass
class PenaltyTerm:
    """alpha * R(field) with optional weights on the field's grid (e.g. the rigidity mask)."""

    name: str
    weight: float
    params: dict = field(default_factory=dict)
    mask: torch.Tensor | None = None  # (1 | N, 1, *field grid shape)
    mask_name: str | None = None  # which input mask it takes when the caller resolves masks per batch (training)

    def __call__(self, f: torch.Tensor, grid: Grid) -> torch.Tensor:
        fn = penalty_function(self.name)
        if self.mask is not None and tuple(self.mask.shape[2:]) != tuple(f.shape[2:]):
            raise MorphregError(f"penalty {self.name!r} mask does not match the field grid")
        return self.weight * fn(f, grid, mask=self.mask, **self.params)


@dataclass
class StageLoss:
    """What a stage minimises (weights of the terms of the module docstring).

    similarity: registered name, or None for label/landmark-only stages; penalties: preset entries
    ``{"name", "weight", "params", "mask"}`` (the mask is resolved per level by the loop).
    """

    similarity: str | None
    similarity_params: dict = field(default_factory=dict)
    similarity_weight: float = 1.0
    penalties: list[dict] = field(default_factory=list)
    label_weight: float = 0.0
    landmark_weight: float = 0.0
    landmark_scale_mm: float = 10.0
    endpoint_weight: float = 0.0
    centroid_weight: float = 0.0
    box_weight: float = 0.0
    label_scales_mm: tuple[float, ...] = ()  # multi-scale Dice: Gaussian sigmas in mm (0 = unsmoothed); () = plain


def loss_terms(loss: StageLoss, *, fixed=None, warped=None, mask=None, grid: Grid | None = None,
               fixed_labels=None, warped_labels=None, mapped_points=None, target_points=None,
               field=None, field_grid: Grid | None = None, penalties: list[PenaltyTerm] = (),
               mapped_grid=None, target_grid=None) -> dict[str, torch.Tensor]:
    """The weighted terms of ``loss`` for what is given (a term whose inputs are None is left out).

    fixed, warped: (N, C, *spatial) on ``grid``; mask broadcastable to (N, 1, *spatial);
    fixed_labels, warped_labels: (N, K, *spatial) in [0, 1]; mapped_points, target_points: T(p), q
    (..., K, dim) mm; field: (N, dim, *field_grid.shape) mm, what ``penalties`` act on;
    mapped_grid, target_grid: T(x) and the true S(x) on a grid, (N, *shape, dim) mm.
    Returns: {"similarity", "labels", "landmarks", "endpoint", <penalty name>...}: scalar tensors.
    """
    terms: dict[str, torch.Tensor] = {}
    if loss.similarity is not None and loss.similarity_weight and fixed is not None:
        d = similarity_term(loss.similarity, fixed, warped, mask, grid, **loss.similarity_params)
        terms["similarity"] = loss.similarity_weight * d
    if loss.label_weight and fixed_labels is not None:
        if loss.label_scales_mm:
            sigmas = [(float(s) / grid.spacing).tolist() for s in loss.label_scales_mm]
            terms["labels"] = loss.label_weight * multiscale_soft_dice_loss(fixed_labels, warped_labels, sigmas)
        else:
            terms["labels"] = loss.label_weight * soft_dice_loss(fixed_labels, warped_labels)
    if loss.centroid_weight and fixed_labels is not None:
        points = grid.points(device=fixed_labels.device, dtype=fixed_labels.dtype).unsqueeze(0)
        terms["centroids"] = loss.centroid_weight * centroid_distance(fixed_labels, warped_labels, points) / 10.0
    if loss.box_weight and fixed_labels is not None:
        points = grid.points(device=fixed_labels.device, dtype=fixed_labels.dtype).unsqueeze(0)
        terms["boxes"] = loss.box_weight * box_distance(fixed_labels, warped_labels, points) / 10.0
    if loss.landmark_weight and mapped_points is not None:
        terms["landmarks"] = loss.landmark_weight * landmark_loss(mapped_points, target_points, loss.landmark_scale_mm)
    if loss.endpoint_weight and target_grid is not None:
        terms["endpoint"] = loss.endpoint_weight * endpoint_error(mapped_grid, target_grid)
    if field is not None:
        for pen in penalties:  # the same penalty twice (e.g. everywhere and masked) adds up under its name
            value = pen(field, field_grid)
            terms[pen.name] = terms[pen.name] + value if pen.name in terms else value
    return terms


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the terms (0 when there are none)."""
    out = torch.zeros((), dtype=torch.float32)
    for value in terms.values():
        out = out + value
    return out


DATA_TERMS = ("similarity", "labels", "landmarks", "endpoint", "centroids", "boxes")
