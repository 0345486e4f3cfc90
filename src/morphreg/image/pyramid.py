"""Multi-resolution pyramids, ITK/ANTs style: smooth with sigma in mm, then shrink the grid."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from morphreg.errors import MorphregError
from morphreg.image.filters import gaussian_smooth
from morphreg.image.image import Image
from morphreg.image.resample import resample


def pyramid_level(image: Image, shrink_factor, sigma_mm=0.0, interpolation: str | None = None) -> Image:
    """One level: Gaussian smoothing with ``sigma_mm`` (scalar or per index axis; 0 = none), then
    resampling onto ``image.grid.downsample(shrink_factor)`` (same extent and centre).

    Label maps are not smoothed and are resampled with ``interpolation`` (default nearest), so they
    stay integer; intensity images default to linear interpolation.
    """
    factor = np.asarray(shrink_factor, np.float64) * np.ones(image.dim)
    if np.any(factor < 1):
        raise MorphregError(f"shrink factors must be >= 1, got {np.asarray(shrink_factor).tolist()}", image.name)
    sigma = np.asarray(sigma_mm, np.float64) * np.ones(image.dim)
    if not image.is_label and np.any(sigma > 0):
        image = gaussian_smooth(image, sigma)
    if np.all(factor == 1):
        return image  # same grid: resampling would only add round-off
    return resample(image, image.grid.downsample(factor), interpolation, fill_value=0.0)


def gaussian_pyramid(
    image: Image,
    shrink_factors: Sequence,
    smoothing_sigmas_mm: Sequence,
    interpolation: str | None = None,
) -> list[Image]:
    """Images for a coarse-to-fine registration schedule, e.g. shrink (4, 2, 1) with sigmas (2, 1, 0) mm.

    Args:
        image: intensity image or label map (labels are only resampled, never smoothed).
        shrink_factors: one per level, coarse first; each a scalar or one value per index axis.
        smoothing_sigmas_mm: one per level, mm (scalar or per index axis); each level smooths the
            full-resolution image (levels are not built from each other, as in ITK's v4 registration).
        interpolation: passed to :func:`morphreg.image.resample.resample`.
    Returns:
        list of Images, in the order given (coarse to fine).
    """
    if len(shrink_factors) != len(smoothing_sigmas_mm):
        raise MorphregError(
            f"{len(shrink_factors)} shrink factors but {len(smoothing_sigmas_mm)} smoothing sigmas", image.name
        )
    if len(shrink_factors) == 0:
        raise MorphregError("a pyramid needs at least one level", image.name)
    return [pyramid_level(image, f, s, interpolation) for f, s in zip(shrink_factors, smoothing_sigmas_mm)]
