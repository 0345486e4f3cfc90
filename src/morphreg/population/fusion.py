"""Label fusion for multi-atlas segmentation: several atlas label maps, warped onto one target grid,
become one label map and a per-voxel confidence.

- ``majority``: each atlas votes for its label at every voxel; the most voted label wins.
- ``weighted``: locally weighted voting (Artaechevarria et al., IEEE TMI 2009): an atlas' vote at x
  counts ``max(LNCC(x), 0)^power + floor``, the local normalised cross-correlation between the
  warped atlas image and the target in a window of ``window_mm`` around x, so atlases that match the
  target *there* decide.
- ``staple``: SimpleITK's multi-label STAPLE (Warfield et al. 2004; Rohlfing et al. 2004), which
  estimates each atlas' per-label reliability by EM; voxels STAPLE leaves undecided take the
  majority vote.

Confidence is the share of the (weighted) votes that went to the chosen label, in [0, 1]; for STAPLE
the share of atlases that agree with it. Ties go to the smaller label value. Label maps are
(*shape) integer tensors on the target grid; memory stays at a few maps whatever the label count.
"""
from __future__ import annotations

import numpy as np
import torch

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.labels import label_argmax

FUSIONS = ("majority", "weighted", "staple")
WEIGHT_WINDOW_MM = 9.0  # the LNCC window's side: ~6 voxels of the 1.5 mm prostate MR, a gland-wall scale
WEIGHT_POWER = 2.0  # fixed a priori (not tuned on the evaluation pairs)
WEIGHT_FLOOR = 1e-3  # an atlas with no local correlation still breaks ties


def label_map(labels: Image, channels: str | None = None) -> Image:
    """An integer label map (1, *shape) of ``labels``: a map keeps its values (those ``channels``
    selects); a one-hot stack gives channel k the value k + 1 (a later channel wins where two overlap)."""
    from morphreg.register.inputs import select_label_channels, selected_structures

    if not labels.is_label:
        raise MorphregError("atlas labels must be an integer label map or a one-hot stack, not a float image",
                            labels.name)
    if labels.channels == 1:
        kept = select_label_channels(labels, channels) if channels is not None else labels
        return kept.with_data(kept.data.to(torch.int16))
    chosen = selected_structures(labels, channels) if channels is not None else None
    out = torch.zeros(labels.grid.shape, dtype=torch.int16)
    for k in range(labels.channels):
        if chosen is None or f"ch{k}" in chosen:
            out[labels.data[k] != 0] = k + 1
    return Image(out, labels.grid, name=labels.name)


def local_weights(target: Image, warped: Image, window_mm: float = WEIGHT_WINDOW_MM,
                  power: float = WEIGHT_POWER) -> torch.Tensor:
    """Vote weights (*shape) float32 of one warped atlas image against the target, same grid:
    ``max(LNCC, 0)^power + floor`` with LNCC over a box of ``window_mm`` (odd voxel count per axis)."""
    from morphreg.metrics.intensity import local_moments

    window = [max(1, int(round(window_mm / s)) // 2 * 2 + 1) for s in target.grid.spacing]
    f, m = target.data[:1].unsqueeze(0).float(), warped.data[:1].unsqueeze(0).float()
    _, _, var_f, var_m, cov = local_moments(f, m, None, window)
    # The variances are relative to the image contrast: eps scaled to it keeps flat windows at ~0.
    eps = 1e-6 * float(f.var() * m.var()) + 1e-12
    cc = cov / torch.sqrt((var_f * var_m).clamp_min(0) + eps)
    return cc[0, 0].clamp_min(0).pow(power) + WEIGHT_FLOOR


def vote(maps: list[torch.Tensor], weights: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Weighted) vote of label maps (*shape): the winning label and its share of the votes."""
    if not maps:
        raise MorphregError("no atlas label map to fuse")
    values = sorted(set().union(*(torch.unique(m).tolist() for m in maps)))
    total = torch.zeros(maps[0].shape, dtype=torch.float32)
    for i in range(len(maps)):
        total += 1.0 if weights is None else weights[i]
    def score(value: int) -> torch.Tensor:
        out = torch.zeros(maps[0].shape, dtype=torch.float32)
        for i, m in enumerate(maps):
            hit = (m == value).float()
            out += hit if weights is None else hit * weights[i]
        return out

    winner, best = label_argmax(values, score, maps[0].dtype)
    return winner, best / total


def staple(maps: list[torch.Tensor], grid: Grid) -> torch.Tensor:
    """SimpleITK's multi-label STAPLE of label maps (*shape) on ``grid``; undecided voxels -> majority."""
    import SimpleITK as sitk

    from morphreg.image.io import to_sitk

    values = sorted(set().union(*(torch.unique(m).tolist() for m in maps)))
    if min(values) < 0:
        raise MorphregError("STAPLE needs label values >= 0")
    undecided = max(values) + 1
    images = [sitk.Cast(to_sitk(Image(m.to(torch.int32), grid)), sitk.sitkUInt16) for m in maps]
    f = sitk.MultiLabelSTAPLEImageFilter()
    f.SetLabelForUndecidedPixels(undecided)
    # SimpleITK's array order (z, y, x) is morphreg's tensor order: no axis change.
    fused = torch.from_numpy(sitk.GetArrayFromImage(f.Execute(images)).astype(np.int64)).to(maps[0].dtype)
    majority, _ = vote(maps)
    return torch.where(fused == undecided, majority, fused)


def fuse(maps: list[torch.Tensor], grid: Grid, method: str = "majority",
         weights: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused label map and confidence (*shape) of ``maps`` on ``grid`` by ``method`` (see the module doc)."""
    if method not in FUSIONS:
        raise MorphregError(f"unknown fusion {method!r} (choose from {', '.join(FUSIONS)})")
    if method == "weighted":
        if weights is None or len(weights) != len(maps):
            raise MorphregError("weighted fusion needs one weight map per atlas")
        return vote(maps, weights)
    if method == "staple":
        fused = staple(maps, grid)
        agree = torch.stack([(m == fused).float() for m in maps]).mean(0)
        return fused, agree
    return vote(maps)
