"""Label maps as named binary masks, and putting two label maps on one grid (never silently).

A label map is either an integer image with one channel (each non-zero value is a structure) or a
multi-channel "one-hot" image (4D NIfTI; each channel is a structure, voxels != 0 are inside).
Masks are numpy bool arrays in tensor order (D, H, W) / (H, W).
"""
from __future__ import annotations

import numpy as np
import torch

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.transforms.warp import warp


def label_masks(image: Image, labels: list[str] | None = None) -> dict[str, np.ndarray]:
    """Binary mask per structure.

    Keys are ``"ch<k>"`` for multi-channel (one-hot) maps and ``str(value)`` for integer maps
    (background 0 excluded). ``labels`` restricts/extends the keys (a requested key that is
    absent gets an all-false mask, so it is reported as missing rather than dropped).
    """
    data = image.data.detach().cpu().numpy()
    if image.channels > 1:
        masks = {f"ch{k}": data[k] != 0 for k in range(image.channels)}
    else:
        values = np.unique(data[0])
        masks = {str(int(v)): data[0] == v for v in values if v != 0}
    if labels is not None:
        empty = np.zeros(image.grid.shape, dtype=bool)
        masks = {k: masks.get(k, empty) for k in labels}
    return masks


def structure_keys(image: Image) -> list[str]:
    """The keys :func:`label_masks` gives ``image`` (``"ch<k>"`` per channel, or each non-zero value), without the masks."""
    if image.channels > 1:
        return [f"ch{k}" for k in range(image.channels)]
    return [str(int(v)) for v in torch.unique(image.data[0]).tolist() if v != 0]


def structure_crops(images: list[Image], keys: list[str]) -> list[dict[str, np.ndarray]]:
    """Per image, the mask of each structure in ``keys`` cropped to the structure's joint bounding box
    over all ``images`` (one grid) plus one voxel: what overlap and surface distances need, at the
    cost of the structures' boxes instead of whole images (integer maps: scipy's ``find_objects``)."""
    arrays = [image.data.detach().cpu().numpy() for image in images]
    shape = images[0].grid.shape
    boxes: dict[str, list] = {k: [] for k in keys}
    for image, data in zip(images, arrays):
        for key, box in _boxes(image, data, keys).items():
            boxes[key].append(box)
    crops: list[dict[str, np.ndarray]] = [{} for _ in images]
    for key in keys:
        found = [b for b in boxes[key] if b is not None]
        box = tuple(slice(max(min(b[i].start for b in found) - 1, 0), min(max(b[i].stop for b in found) + 1, shape[i]))
                    for i in range(len(shape))) if found else (slice(0, 1),) * len(shape)
        for crop, image, data in zip(crops, images, arrays):
            crop[key] = _structure_mask(image, data, key, box)
    return crops


def _structure_mask(image: Image, data: np.ndarray, key: str, box: tuple) -> np.ndarray:
    if image.channels > 1:
        c = int(key[2:]) if key.startswith("ch") and key[2:].isdigit() else -1
        return data[c][box] != 0 if 0 <= c < image.channels else np.zeros(data.shape[1:], bool)[box]
    return data[0][box] == int(key) if key.lstrip("-").isdigit() else np.zeros(data.shape[1:], bool)[box]


def _boxes(image: Image, data: np.ndarray, keys: list[str]) -> dict[str, tuple | None]:
    """Bounding box (tuple of slices, tensor order) of each structure of ``keys`` in ``image``, None if absent."""
    from scipy import ndimage

    if image.channels == 1 and data.dtype.kind in "iub" and data.size and data.min() >= 0:
        found = ndimage.find_objects(data[0].astype(np.int64, copy=False))
        return {k: found[int(k) - 1] if k.isdigit() and 0 < int(k) <= len(found) else None for k in keys}
    return {k: _box(_structure_mask(image, data, k, (slice(None),) * (data.ndim - 1))) for k in keys}


def _box(mask: np.ndarray) -> tuple | None:
    if not mask.any():
        return None
    spans = [np.flatnonzero(np.any(mask, axis=tuple(j for j in range(mask.ndim) if j != i))) for i in range(mask.ndim)]
    return tuple(slice(int(v[0]), int(v[-1]) + 1) for v in spans)


def union_keys(*maps: dict[str, np.ndarray]) -> list[str]:
    """Structure keys present in any of the maps, channels/values in natural order."""
    keys = {k for m in maps for k in m}

    def order(k: str):
        return (0, int(k[2:])) if k.startswith("ch") and k[2:].isdigit() else (1, int(k)) if k.lstrip("-").isdigit() else (2, k)

    return sorted(keys, key=order)


def parse_selection(spec: str) -> list[tuple[int, int | None]]:
    """"1-" / "0" / "1,3" / "2-4" / "0,2-" as inclusive ranges (start, end or None = open)."""
    ranges = []
    for part in str(spec).replace(" ", "").split(","):
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                ranges.append((int(lo), int(hi) if hi else None))
            elif part:
                ranges.append((int(part), int(part)))
        except ValueError:
            raise MorphregError(f"channel selection {spec!r}: use numbers and ranges such as '1-', '0', '1,3', '2-4'") from None
    if not ranges:
        raise MorphregError(f"channel selection {spec!r} selects nothing")
    return ranges


def select_structures(keys: list[str], spec: str) -> list[str]:
    """The structure keys (``"ch<k>"`` of a one-hot stack, label values of a map) that ``spec``
    selects: channel indices for stacks, label values for maps (:func:`parse_selection`)."""
    ranges = parse_selection(spec)

    def number(k: str) -> int:
        return int(k[2:]) if k.startswith("ch") else int(k)

    return [k for k in keys if any(lo <= number(k) and (hi is None or number(k) <= hi) for lo, hi in ranges)]


def to_reference(image: Image, reference: Grid, resample: bool, notes: list[str], what: str) -> Image:
    """``image`` on ``reference``: returned unchanged if the grids match; otherwise resampled by
    nearest neighbour (identity transform, world coordinates) with a note, or refused.

    Comparing two label maps voxel by voxel is only meaningful on one grid, so a mismatch is never
    ignored.
    """
    if image.dim != reference.dim:
        raise MorphregError(f"{what} is {image.dim}D but the reference grid is {reference.dim}D", image.name)
    if image.grid.same_as(reference):
        return image
    if not resample:
        raise MorphregError(
            f"{what} lies on a different grid than the reference ({image.grid!r} vs {reference!r}); "
            "resample it first or allow resampling", image.name)
    notes.append(f"{what} was on a different grid and was resampled onto the reference grid (nearest neighbour, world coordinates)")
    return warp(image, None, reference, "nearest")


def voxel_volume(grid: Grid) -> float:
    """Volume (mm^3, or area mm^2 in 2D) of one voxel."""
    return float(np.prod(grid.spacing))
