"""Intensity similarity between the fixed and the warped image: MSE, NCC, NMI, SSIM.

NOT independent measures of accuracy: a method that optimised one of them can score well on it
(and on its relatives) while misaligning anatomy. Reported apart, for information. Implemented here
on numpy, separately from the similarity terms the registration optimises.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from morphreg.errors import MorphregError
from morphreg.image.image import Image

INTENSITY_NOTE = "intensity similarity: not an independent measure of registration accuracy"


def _pair(a, b, mask=None) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise MorphregError(f"images differ in shape {a.shape} vs {b.shape}")
    if mask is not None:
        return a[mask], b[mask]
    return a.ravel(), b.ravel()


def mse(a, b, mask=None) -> float:
    """Mean squared difference."""
    x, y = _pair(a, b, mask)
    return float(np.mean((x - y) ** 2)) if x.size else math.nan


def ncc(a, b, mask=None) -> float:
    """Global normalised cross-correlation (Pearson) in [-1, 1]; NaN for a constant image."""
    x, y = _pair(a, b, mask)
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else math.nan


def nmi(a, b, mask=None, bins: int = 32) -> float:
    """Normalised mutual information (H(A) + H(B)) / H(A, B) (Studholme), in [1, 2]; joint histogram
    of ``bins`` x ``bins`` over each image's range."""
    x, y = _pair(a, b, mask)
    joint, _, _ = np.histogram2d(x, y, bins=bins)
    p = joint / max(joint.sum(), 1)

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    h_ab = entropy(p)
    return (entropy(p.sum(1)) + entropy(p.sum(0))) / h_ab if h_ab > 0 else math.nan


def ssim(a, b, data_range: float | None = None, window: int = 7) -> float:
    """Mean structural similarity (Wang et al. 2004) with a uniform ``window``^dim window,
    K1 = 0.01, K2 = 0.03; ``data_range`` defaults to the range of ``a``."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    rng = float(a.max() - a.min()) if data_range is None else data_range
    if rng <= 0:
        return math.nan
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    size = [min(window, s) for s in a.shape]
    mu_a, mu_b = ndimage.uniform_filter(a, size), ndimage.uniform_filter(b, size)
    var_a = ndimage.uniform_filter(a * a, size) - mu_a**2
    var_b = ndimage.uniform_filter(b * b, size) - mu_b**2
    cov = ndimage.uniform_filter(a * b, size) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def intensity_similarity(fixed: Image, warped: Image, mask: np.ndarray | None = None) -> dict:
    """MSE, NCC, NMI and SSIM of channel 0 (SSIM over the whole grid), with the caveat attached."""
    if not fixed.grid.same_as(warped.grid):
        raise MorphregError("the warped image is not on the fixed image's grid", warped.name)
    a = fixed.data[0].detach().cpu().double().numpy()
    b = warped.data[0].detach().cpu().double().numpy()
    return {"note": INTENSITY_NOTE, "mse": mse(a, b, mask), "ncc": ncc(a, b, mask), "nmi": nmi(a, b, mask),
            "ssim": ssim(a, b)}
