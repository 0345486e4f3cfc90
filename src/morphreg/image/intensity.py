"""Intensity helpers: percentile rescaling, z-score, histogram matching (Image in, Image out).

Statistics are taken per channel over the voxels of an optional mask and applied to the whole
image. The statistics themselves (percentiles, match points) are treated as constants, while the
mapping is differentiable w.r.t. the voxel values; z-score is differentiable throughout.
Label maps (integer data) are refused: rescaling label values would change their meaning.
"""
from __future__ import annotations

import numpy as np
import torch

from morphreg.errors import MorphregError
from morphreg.image.image import Image


def _check_intensity(image: Image, what: str) -> None:
    if not isinstance(image, Image):
        raise MorphregError(f"{what} expects an Image, got {type(image).__name__}")
    if image.is_label:
        raise MorphregError(f"{what} works on intensity images, not label maps (integer data)", image.name)


def mask_tensor(mask, image: Image) -> torch.Tensor:
    """A mask as a bool tensor (1 or C, *image.grid.shape) on the image's grid.

    ``mask`` may be an Image (any dtype; non-zero = inside) on the same grid, or on another grid
    (then resampled by nearest neighbour), or a tensor of shape (*shape), (1, *shape) or (C, *shape).
    """
    if isinstance(mask, Image):
        if mask.dim != image.dim:
            raise MorphregError(f"a {mask.dim}D mask cannot mask a {image.dim}D image", mask.name)
        if not mask.grid.same_as(image.grid):
            from morphreg.image.resample import resample

            mask = resample(mask if mask.is_label else mask.with_data(mask.data != 0), image.grid, "nearest")
        data = mask.data
    else:
        data = torch.as_tensor(mask)
    if data.dim() == image.dim:
        data = data.unsqueeze(0)
    if tuple(data.shape[1:]) != image.grid.shape or data.shape[0] not in (1, image.channels):
        raise MorphregError(
            f"mask shape {tuple(data.shape)} does not fit image shape {tuple(image.data.shape)}", image.name
        )
    return (data != 0).to(image.data.device)


def _channel_values(image: Image, mask, c: int) -> torch.Tensor:
    """Detached voxel values of channel c inside the mask (1D)."""
    values = image.data[c].detach()
    if mask is not None:
        values = values[mask[c if mask.shape[0] > 1 else 0]]
    else:
        values = values.reshape(-1)
    if values.numel() == 0:
        raise MorphregError("the mask selects no voxels", image.name)
    return values


def quantile_values(values: torch.Tensor, q) -> torch.Tensor:
    """Quantiles of a 1D tensor at levels ``q`` in [0, 1] (linear interpolation, as numpy's default).

    Sorts once, so unlike ``torch.quantile`` there is no size limit. Returns float64, shape of ``q``.
    """
    v = torch.sort(values.reshape(-1).to(torch.float64)).values
    q = torch.as_tensor(q, dtype=torch.float64, device=v.device)
    pos = q.clamp(0, 1) * (v.numel() - 1)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=v.numel() - 1)
    frac = pos - lo
    return v[lo] * (1 - frac) + v[hi] * frac


def rescale_intensity(
    image: Image,
    lower_percentile: float = 0.0,
    upper_percentile: float = 100.0,
    out_range: tuple[float, float] = (0.0, 1.0),
    mask=None,
    clip: bool = True,
) -> Image:
    """Map the [lower, upper] percentiles (0..100) of each channel linearly onto ``out_range``.

    With ``clip`` values beyond the percentiles are clipped to ``out_range``. A channel whose
    percentiles coincide (constant image) maps to ``out_range[0]``. Float data out (float32 unless
    the input is float64).
    """
    _check_intensity(image, "rescale_intensity")
    if not 0 <= lower_percentile < upper_percentile <= 100:
        raise MorphregError(
            f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower_percentile}, {upper_percentile}",
            image.name,
        )
    m = None if mask is None else mask_tensor(mask, image)
    data = image.data
    a, b = (float(v) for v in out_range)
    out = []
    for c in range(image.channels):
        levels = [lower_percentile / 100, upper_percentile / 100]
        lo, hi = quantile_values(_channel_values(image, m, c), levels).tolist()
        if hi <= lo:
            out.append(torch.full_like(data[c], a))
            continue
        scaled = (data[c] - lo) * ((b - a) / (hi - lo)) + a
        out.append(scaled.clamp(min(a, b), max(a, b)) if clip else scaled)
    return image.with_data(torch.stack(out))


def zscore(image: Image, mask=None, eps: float = 1e-8) -> Image:
    """(x - mean) / std per channel, mean and (population) std taken inside ``mask``.

    After it, the voxels in the mask have mean 0 and standard deviation 1; voxels outside are
    transformed with the same numbers. A constant channel becomes x - mean.
    """
    _check_intensity(image, "zscore")
    m = None if mask is None else mask_tensor(mask, image)
    out = []
    for c in range(image.channels):
        x = image.data[c]
        values = x.reshape(-1) if m is None else x[m[c if m.shape[0] > 1 else 0]]
        if values.numel() == 0:
            raise MorphregError("the mask selects no voxels", image.name)
        mean = values.mean()
        std = values.std(correction=0) if values.numel() > 1 else torch.zeros_like(mean)
        out.append((x - mean) / torch.where(std > eps, std, torch.ones_like(std)))
    return image.with_data(torch.stack(out))


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear map through increasing ``xp`` -> ``fp``, clamped at the ends (like np.interp)."""
    xp = xp.to(x.dtype)
    fp = fp.to(x.dtype)
    if xp.numel() == 1:
        return torch.full_like(x, float(fp[0]))
    idx = torch.searchsorted(xp, x.detach().contiguous(), right=True).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    t = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return y0 + t * (y1 - y0)


def _unique_mean(xp: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge repeated ``xp`` (e.g. a large background at one value): each keeps the mean target."""
    ux, inverse = np.unique(xp, return_inverse=True)
    sums = np.bincount(inverse, weights=fp)
    return ux, sums / np.bincount(inverse)


def match_histogram(
    image: Image,
    reference: Image,
    quantiles: int = 256,
    mask=None,
    reference_mask=None,
) -> Image:
    """Map intensities so that their distribution matches ``reference``'s (quantile mapping).

    ``quantiles`` equally spaced quantile levels 0..1 of ``image`` (inside ``mask``) are mapped
    onto the same quantiles of ``reference`` (inside ``reference_mask``); values in between are
    interpolated linearly, values beyond the extreme match points are clamped to the reference's
    range. Channels are matched one to one (or every channel to a single reference channel).
    """
    _check_intensity(image, "match_histogram")
    _check_intensity(reference, "match_histogram (reference)")
    if reference.channels not in (1, image.channels):
        raise MorphregError(
            f"reference has {reference.channels} channels, image has {image.channels}", reference.name
        )
    if quantiles < 2:
        raise MorphregError(f"histogram matching needs at least 2 quantiles, got {quantiles}", image.name)
    m = None if mask is None else mask_tensor(mask, image)
    rm = None if reference_mask is None else mask_tensor(reference_mask, reference)
    levels = torch.linspace(0, 1, quantiles, dtype=torch.float64)
    out = []
    for c in range(image.channels):
        src = quantile_values(_channel_values(image, m, c), levels).cpu().numpy()
        ref = quantile_values(_channel_values(reference, rm, min(c, reference.channels - 1)), levels).cpu().numpy()
        xp, fp = _unique_mean(src, ref)
        x = image.data[c]
        out.append(_interp(x, torch.as_tensor(xp, device=x.device), torch.as_tensor(fp, device=x.device)))
    return image.with_data(torch.stack(out))


# The registration engine's intensity units: the 0.5th percentile maps to 0, the 99.5th
# to 1 (ANTs' --winsorize-image-intensities [0.005, 0.995], without clipping so that the map stays
# affine). Every similarity then sees the same numbers whether an MR is stored as 0..1 or 0..4095 or a
# CT in HU, and its constants (LNCC's eps, NGF's epsilon, demons' step) mean the same on every image.
UNIT_PERCENTILES = (0.5, 99.5)
_UNIT_SAMPLES = 1 << 21  # percentiles from every k-th voxel beyond this: exact for any affine remap, ~0.1 s


def unit_range(image: Image, *others: Image, percentiles: tuple[float, float] = UNIT_PERCENTILES) -> list[tuple[float, float]]:
    """Per channel (lo, hi): the intensities that :func:`to_unit_range` maps to 0 and 1.

    ``lo``, ``hi`` are the given percentiles (0..100) of the channel's voxels in ``image`` and
    ``others`` pooled (one map for images whose intensity differences must keep their meaning); of
    every k-th voxel of an image above 2^21 voxels, the same voxels whatever the intensity units.
    Where they coincide (an object under 0.5 % of the image) the minimum and maximum; for a
    constant channel (v, v + 1).
    """
    images = (image, *others)
    for im in images:
        _check_intensity(im, "unit_range")
    out = []
    for c in range(image.channels):
        parts = [im.data[min(c, im.channels - 1)].detach().reshape(-1) for im in images]
        values = torch.cat([v[:: max(1, v.numel() // _UNIT_SAMPLES)] for v in parts])
        lo, hi = quantile_values(values, [percentiles[0] / 100, percentiles[1] / 100]).tolist()
        if hi <= lo:
            lo, hi = float(values.min()), float(values.max())
        out.append((lo, hi) if hi > lo else (lo, lo + 1.0))
    return out


def to_unit_range(image: Image, ranges: list[tuple[float, float]] | None = None) -> Image:
    """``image`` mapped channel by channel by the affine map that takes ``ranges`` (default
    :func:`unit_range`) to (0, 1); float32 (float64 stays), not clipped."""
    ranges = unit_range(image) if ranges is None else ranges
    dtype = image.data.dtype if image.data.dtype == torch.float64 else torch.float32
    out = [(image.data[c].to(dtype) - lo) * (1.0 / (hi - lo)) for c, (lo, hi) in enumerate(ranges)]
    return image.with_data(torch.stack(out))
