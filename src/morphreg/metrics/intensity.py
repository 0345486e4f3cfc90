"""Intensity-difference and correlation metrics: MSE, global NCC, local NCC.

All take ``fixed`` and ``warped`` of shape (N, C, *spatial) (2D or 3D) or, for the pointwise ones
(:func:`mse`, :func:`ncc`), sampled values (N, C, P) from :mod:`morphreg.metrics.sampling`.
``mask`` holds weights broadcastable to (N, 1, *spatial) (bool masks or soft sample weights).
Channels are compared pairwise (fixed channel c with warped channel c) and averaged.
"""
from __future__ import annotations

import torch

from morphreg.image.filters import box_filter
from morphreg.metrics._common import TINY, as_weight, check_pair, weighted_mean


def mse(fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean squared intensity difference (intensity units squared); 0 at a perfect match."""
    check_pair(fixed, warped)
    return weighted_mean((fixed - warped) ** 2, as_weight(mask, fixed))


def channel_means(values: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """(N, C, *spatial) -> (N, C) weighted means over the trailing (spatial or sample) axes."""
    dims = tuple(range(2, values.dim()))
    if w is None:
        return values.mean(dims)
    return (values * w).sum(dims) / w.expand(w.shape[0], 1, *values.shape[2:]).sum(dims).clamp_min(TINY)


def _centred(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    return x - channel_means(x, w).reshape(*x.shape[:2], *(1,) * (x.dim() - 2))


def ncc(fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Global (weighted) normalised cross-correlation in [-1, 1]; 1 for any increasing linear remap.

    ncc = cov(f, m) / sqrt(var(f) var(m)) with weighted moments over the mask, per (n, c), then
    averaged; 0 where either image is constant. No additive constant, so the value is the same for
    any positive scale and offset of either image (intensities in 0..0.01 or in HU alike).
    """
    check_pair(fixed, warped)
    w = as_weight(mask, fixed)
    fc, mc = _centred(fixed, w), _centred(warped, w)
    cov = channel_means(fc * mc, w)
    var_f, var_m = channel_means(fc * fc, w), channel_means(mc * mc, w)
    return (cov / torch.sqrt((var_f * var_m).clamp_min(torch.finfo(cov.dtype).tiny))).mean()


def local_ncc(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    mask: torch.Tensor | None = None,
    window: int | tuple[int, ...] = 9,
    squared: bool = False,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Local normalised cross-correlation over a sliding box window, averaged over the (masked) image.

    Local weighted moments come from separable box sums (:func:`morphreg.image.filters.box_filter`,
    zero outside the image), so each window uses only in-image, in-mask voxels:
    mean_f = B(w f) / B(w), cov = B(w f m) / B(w) - mean_f mean_m, etc.

    Args:
        fixed, warped: (N, C, *spatial) images.
        mask: weights broadcastable to (N, 1, *spatial); they weight voxels inside each window and
            the final average.
        window: odd window size in voxels, one int or per index axis (x, y[, z]).
        squared: return the mean of cc^2 (ANTs' CC, insensitive to contrast inversion) instead of cc.
        eps: added to var_f * var_m (intensity^4), so the value depends on the intensity units
            (it is invariant to offsets, and to a scale only where var_f * var_m >> eps);
            :func:`morphreg.register.register` passes the images in the engine's units (0.5th..99.5th
            percentile = 0..1, :func:`morphreg.image.intensity.to_unit_range`), where it means the same
            on every image. Flat windows give cc = 0.
    Border: windows near the image border use only their in-image voxels (no zero padding, unlike
    MONAI's and neurite's LNCC), and the result is the (mask-weighted) mean over all voxels.
    Returns:
        scalar in [-1, 1] (or [0, 1] when ``squared``), 1 = locally linearly related everywhere.
    """
    check_pair(fixed, warped)
    w = as_weight(mask, fixed)
    _, _, var_f, var_m, cov = local_moments(fixed, warped, w, window)
    cc = cov * cov / (var_f * var_m + eps) if squared else cov / torch.sqrt(var_f * var_m + eps)
    return weighted_mean(cc, w)


def local_moments(fixed: torch.Tensor, warped: torch.Tensor, w: torch.Tensor | None, window) -> tuple[torch.Tensor, ...]:
    """Local (windowed, weighted) means, variances and covariance of two images.

    Args:
        fixed, warped: (N, C, *spatial); w: None or weights (N or 1, 1, *spatial).
        window: odd box size in voxels (one int or per index axis x, y[, z]).
    Returns:
        mean_f, mean_m, var_f, var_m, cov, each (N, C, *spatial); windows count in-image voxels only.
    """
    n, c = max(fixed.shape[0], warped.shape[0]), fixed.shape[1]
    f, m = fixed.expand(n, *fixed.shape[1:]), warped.expand(n, *warped.shape[1:])
    if w is None:
        # Window sums of ones: the number of in-image voxels in each window.
        count = box_filter(torch.ones(1, 1, *fixed.shape[2:], dtype=fixed.dtype, device=fixed.device), window)
        stats = box_filter(torch.cat([f, m, f * f, m * m, f * m], dim=1), window)
    else:
        wf = w.expand(n, 1, *fixed.shape[2:])
        count = box_filter(wf, window)
        stats = box_filter(torch.cat([wf * f, wf * m, wf * f * f, wf * m * m, wf * f * m], dim=1), window)
    mean_f, mean_m, ff, mm, fm = (s / count.clamp_min(TINY) for s in stats.split(c, dim=1))
    var_f = (ff - mean_f * mean_f).clamp_min(0)
    var_m = (mm - mean_m * mean_m).clamp_min(0)
    return mean_f, mean_m, var_f, var_m, fm - mean_f * mean_m
