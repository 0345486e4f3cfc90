"""The inputs of a registration, checked before any work: images, masks, label maps, landmarks and an
initial transform, each read with its role (intensity or labels), on its image's grid, named in every
error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from morphreg.errors import MorphregError
from morphreg.image.image import Image
from morphreg.image.io import read_image
from morphreg.image.labels import shared_labels
from morphreg.transforms import LinearTransform, Transform
from morphreg.transforms.warp import warp


def load_image(x, what: str, labels: bool) -> Image | None:
    """An Image from an Image or a path; ``labels``: the file is a label map or mask (else intensities)."""
    if x is None:
        return None
    if isinstance(x, (str, Path)):
        return read_image(x, labels=labels)
    if not isinstance(x, Image):
        raise MorphregError(f"{what} must be an Image or a path, got {type(x).__name__}")
    return x


def intensity_image(image: Image, what: str) -> Image:
    if image.channels != 1:
        raise MorphregError(f"{what} image has {image.channels} channels (a 4D or vector image); registration needs "
                            "one scalar 2D or 3D image", image.name)
    image = image.float().check_finite()
    image = image.with_data(image.data.detach())
    if float(image.data.max() - image.data.min()) <= 0:
        raise MorphregError(f"{what} image is constant: nothing to register", image.name)
    return image


def check_same_dim(a: Image, b: Image, what: str) -> None:
    if a.dim != b.dim:
        raise MorphregError(f"{what} is {a.dim}D but the image it goes with ({b.name}) is {b.dim}D", a.name)


def on_image_grid(aux: Image, image: Image, what: str, notes: list[str]) -> Image:
    """``aux`` (a mask or label map, same dimension as ``image``) on ``image``'s grid: resampled by
    nearest neighbour in world coordinates, with a note, when it was saved on another grid."""
    check_same_dim(aux, image, what)
    if aux.grid.same_as(image.grid):
        return aux
    notes.append(f"{what} {aux.name} lies on another grid than its image; resampled onto the image's grid "
                 "(nearest neighbour, world coordinates)")
    return warp(aux, None, image.grid, "nearest")


def mask_on_grid(mask, image: Image, what: str, notes: list[str]) -> Image | None:
    """A float {0, 1} mask on ``image``'s grid; non-zero voxels are inside."""
    mask = load_image(mask, what, labels=True)
    if mask is None:
        return None
    mask = mask.check_finite()
    if mask.channels != 1:
        raise MorphregError(f"{what} has {mask.channels} channels; a mask has one", mask.name)
    if not bool((mask.data != 0).any()):
        raise MorphregError(f"{what} is empty (no non-zero voxel)", mask.name)
    on_grid = on_image_grid(mask, image, what, notes)
    out = on_grid.with_data((on_grid.data != 0).float())
    if float(out.data.sum()) == 0:
        raise MorphregError(f"{what} does not overlap its image ({image.name}): no voxel inside on the image's grid",
                            mask.name)
    return out


def selected_structures(labels: Image, spec: str) -> list[str]:
    """The structure keys ("ch<k>" of a one-hot stack, "<value>" of a map) that ``spec`` selects
    ("0", "1-", "1,3"); a one-line error when none."""
    from morphreg.evaluate.labels import label_masks, select_structures

    keys = select_structures(list(label_masks(labels)), spec)
    if not keys:
        raise MorphregError(f"label channels {spec!r} select no structure", labels.name)
    return keys


def select_label_channels(labels: Image, spec: str) -> Image:
    """The channels (one-hot stack) or label values (map) of ``labels`` that ``spec`` selects."""
    keys = selected_structures(labels, spec)
    if labels.channels > 1:
        return labels.with_data(labels.data[[int(k[2:]) for k in keys]])
    keep = torch.zeros_like(labels.data, dtype=torch.bool)
    for k in keys:
        keep |= labels.data == int(k)
    return labels.with_data(torch.where(keep, labels.data, torch.zeros_like(labels.data)))


def one_hot_labels(fixed_labels: Image, moving_labels: Image) -> tuple[Image, Image]:
    """Float one-hot stacks (K, *shape) of both label inputs, channels in correspondence.

    Integer maps: one channel per non-zero label present in both. Multi-channel inputs (4D one-hot
    stacks) are used channel by channel; both must have the same number of channels
    (:func:`morphreg.image.labels.shared_labels`).
    """
    values = shared_labels(fixed_labels, moving_labels)
    if values is None:
        return (fixed_labels.with_data((fixed_labels.data > 0.5).float()),
                moving_labels.with_data((moving_labels.data > 0.5).float()))
    return (fixed_labels.with_data(torch.stack([(fixed_labels.data[0] == v).float() for v in values])),
            moving_labels.with_data(torch.stack([(moving_labels.data[0] == v).float() for v in values])))


def read_landmarks(x, what: str) -> torch.Tensor | None:
    """(K, dim) world mm from an array, a CSV/TXT file (one point per row, x, y[, z] in LPS mm) or a
    label image (the centroid of each label, or of each channel of a one-hot stack)."""
    if x is None:
        return None
    if isinstance(x, (str, Path)) and Path(x).suffix.lower() in (".csv", ".txt"):
        path = Path(x)
        if not path.exists():
            raise MorphregError("file not found", path)
        try:
            arr = np.loadtxt(path, delimiter="," if path.suffix.lower() == ".csv" else None, ndmin=2)
        except ValueError as exc:
            raise MorphregError(f"cannot read landmarks: {exc}", path) from None
        return torch.as_tensor(arr, dtype=torch.float32)
    if isinstance(x, (str, Path, Image)):
        img = load_image(x, what, labels=True)
        pts = img.grid.points(dtype=torch.float64).reshape(-1, img.dim)
        chans = ([img.data[c].reshape(-1) > 0.5 for c in range(img.channels)] if img.channels > 1
                 else [img.data[0].reshape(-1) == v for v in img.labels()])
        cents = [pts[m].mean(0) for m in chans if bool(m.any())]
        if len(cents) != len(chans):
            raise MorphregError(f"{what}: a landmark label/channel is empty", img.name)
        return torch.stack(cents).float()
    return torch.as_tensor(np.asarray(x, np.float64), dtype=torch.float32)


def initial_transform_for(given, fixed: Image) -> Transform | None:
    """The user's starting transform (a Transform or a file), checked against the fixed image."""
    if given is None:
        return None
    from morphreg.transforms.io import load_transform

    t = load_transform(given) if isinstance(given, (str, Path)) else given
    if not isinstance(t, Transform):
        raise MorphregError(f"initial transform must be a Transform or a file, got {type(t).__name__}")
    if t.dim != fixed.dim:
        raise MorphregError(f"initial transform is {t.dim}D but the fixed image ({fixed.name}) is {fixed.dim}D",
                            given if isinstance(given, (str, Path)) else None)
    for prm in t.parameters():
        prm.requires_grad_(False)
    return t if isinstance(t, LinearTransform) else as_affine(t, fixed.grid) or t


def as_affine(t: Transform, grid) -> Transform | None:
    """An AffineTransform equal to ``t`` (e.g. an ITK composite of rigid and affine parts) when ``t``
    is affine over ``grid`` (to 1e-4 mm), so that linear stages can refine it; else None."""
    from morphreg.transforms import AffineTransform

    with torch.no_grad():
        dim = grid.dim
        origin = torch.zeros(1, dim, dtype=torch.float64)
        b = t.points(origin.float()).double()[0]
        a = torch.stack([t.points(torch.eye(dim, dtype=torch.float32)[i:i + 1]).double()[0] - b for i in range(dim)], 1)
        probe = grid.downsample(4).points(dtype=torch.float64).reshape(-1, dim)
        err = (t.points(probe.float()).double() - (probe @ a.T + b)).norm(dim=-1).max()
    if float(err) > 1e-4 * max(1.0, float(probe.abs().max())):
        return None
    return AffineTransform(dim, matrix=a.numpy(), translation=b.numpy())
