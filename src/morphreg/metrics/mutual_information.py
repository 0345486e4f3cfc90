"""Mutual information from a differentiable joint histogram (Parzen windows).

Each intensity x is mapped to a continuous bin coordinate t = (x - lo) / (hi - lo) * (bins - 1) and
spreads unit mass over nearby bins k with weights K(t - k), renormalised to sum to 1 (so clamped
or edge samples keep their full mass). Kernels: "bspline" - the cubic B-spline of Mattes et al.
(2003), support 4 bins; "gaussian" - a Gaussian of ``sigma`` bins, cut off (continuously) at
ceil(3 sigma) bins. Only the few bins a sample touches are stored (scatter-add), so memory is
O(P * support^2), not O(P * bins).
Both images use the same kernel (Mattes uses a box kernel for the fixed image; the difference is
negligible for optimisation and this keeps the value symmetric).

Works on images (N, C, *spatial) and on sampled values (N, C, P) alike. Values are in nats.
"""
from __future__ import annotations

import math

import torch

from morphreg.errors import MorphregError
from morphreg.metrics._common import TINY, as_weight, check_pair

KERNELS = ("bspline", "gaussian")


def _reach(kernel: str, sigma: float) -> int:
    """Kernel support half-width in bins."""
    return 2 if kernel == "bspline" else max(1, math.ceil(3 * sigma))


def _kernel(d: torch.Tensor, kernel: str, sigma: float) -> torch.Tensor:
    if kernel == "bspline":
        a = d.abs()
        inner = (4 - 6 * a**2 + 3 * a**3) / 6
        outer = (2 - a).clamp_min(0) ** 3 / 6
        return torch.where(a < 1, inner, outer)
    # Gaussian minus its value at the cut-off: continuous, so the histogram stays differentiable.
    cut = math.exp(-0.5 * (_reach(kernel, sigma) / sigma) ** 2)
    return (torch.exp(-0.5 * (d / sigma) ** 2) - cut).clamp_min(0)


def _bin_weights(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int, kernel: str, sigma: float):
    """Bin indices and normalised kernel weights of values x (G, P): both (G, P, S)."""
    t = ((x - lo) / (hi - lo) * (bins - 1)).clamp(0, bins - 1)
    reach = _reach(kernel, sigma)
    base = torch.floor(t.detach())
    offsets = torch.arange(-reach + 1, reach + 1, device=x.device, dtype=x.dtype)
    j = base[..., None] + offsets  # all bins with |t - j| < reach
    wgt = _kernel(t[..., None] - j, kernel, sigma) * ((j >= 0) & (j <= bins - 1))
    wgt = wgt / wgt.sum(-1, keepdim=True).clamp_min(TINY)
    return j.clamp(0, bins - 1).long(), wgt


def _range(x: torch.Tensor, w: torch.Tensor | None, given) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) per group (G, 1): the given range, or min/max over positive-weight samples (detached)."""
    if given is not None:
        lo, hi = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in given)
        return lo.expand(x.shape[0], 1), hi.expand(x.shape[0], 1)
    xd = x.detach()
    if w is None:
        lo, hi = xd.amin(1, keepdim=True), xd.amax(1, keepdim=True)
    else:
        inside = w > 0
        lo = torch.where(inside, xd, torch.full_like(xd, math.inf)).amin(1, keepdim=True)
        hi = torch.where(inside, xd, torch.full_like(xd, -math.inf)).amax(1, keepdim=True)
    # Constant (or empty) input: any non-empty range gives one occupied bin.
    lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    hi = torch.where(torch.isfinite(hi) & (hi > lo), hi, lo + 1)
    return lo, hi


def joint_histogram(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    mask: torch.Tensor | None = None,
    bins: int = 32,
    kernel: str = "bspline",
    sigma: float = 0.5,
    fixed_range: tuple[float, float] | None = None,
    warped_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Normalised joint histogram p(a, b): (N, C, bins, bins), rows = fixed bins, each slice sums to 1.

    Args:
        fixed, warped: (N, C, *spatial) images or (N, C, P) sampled values.
        mask: weights broadcastable to (N, 1, *spatial) (or (N, 1, P)).
        bins: number of histogram bins per image.
        kernel: "bspline" (Mattes) or "gaussian" (Parzen with ``sigma`` bins).
        fixed_range, warped_range: (lo, hi) intensities mapped to the first and last bin centre;
            values outside are clamped. None: min/max of the (masked) data, not differentiated.
    """
    check_pair(fixed, warped)
    if kernel not in KERNELS:
        raise MorphregError(f"unknown histogram kernel {kernel!r} (choose from {', '.join(KERNELS)})")
    if bins < 2:
        raise MorphregError(f"mutual information needs at least 2 bins, got {bins}")
    n, c = max(fixed.shape[0], warped.shape[0]), fixed.shape[1]
    f = fixed.expand(n, *fixed.shape[1:]).reshape(n * c, -1)
    m = warped.expand(n, *warped.shape[1:]).reshape(n * c, -1)
    w = as_weight(mask, fixed)
    w = None if w is None else w.expand(n, c, *fixed.shape[2:]).reshape(n * c, -1)
    jf, wf = _bin_weights(f, *_range(f, w, fixed_range), bins, kernel, sigma)
    jm, wm = _bin_weights(m, *_range(m, w, warped_range), bins, kernel, sigma)
    contrib = wf[..., :, None] * wm[..., None, :]  # (G, P, S, S)
    if w is not None:
        contrib = contrib * w[..., None, None]
    flat = (jf[..., :, None] * bins + jm[..., None, :]).reshape(n * c, -1)
    hist = torch.zeros(n * c, bins * bins, dtype=contrib.dtype, device=contrib.device)
    hist = hist.scatter_add(1, flat, contrib.reshape(n * c, -1))
    hist = hist / hist.sum(1, keepdim=True).clamp_min(TINY)
    return hist.reshape(n, c, bins, bins)


def _entropy(p: torch.Tensor, dims) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(TINY))).sum(dims)


def _entropies(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """H(F), H(M), H(F, M) per (n, c), nats."""
    p = joint_histogram(*args, **kwargs)
    return _entropy(p.sum(3), -1), _entropy(p.sum(2), -1), _entropy(p, (-2, -1))


def mutual_information(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    mask: torch.Tensor | None = None,
    bins: int = 32,
    kernel: str = "bspline",
    sigma: float = 0.5,
    fixed_range: tuple[float, float] | None = None,
    warped_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """MI = H(F) + H(M) - H(F, M) in nats (>= 0; higher = more dependent), mean over (n, c).

    Arguments as :func:`joint_histogram`.
    """
    hf, hm, hfm = _entropies(fixed, warped, mask, bins, kernel, sigma, fixed_range, warped_range)
    return (hf + hm - hfm).mean()


def normalized_mutual_information(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    mask: torch.Tensor | None = None,
    bins: int = 32,
    kernel: str = "bspline",
    sigma: float = 0.5,
    fixed_range: tuple[float, float] | None = None,
    warped_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Studholme's NMI = (H(F) + H(M)) / H(F, M), in [1, 2] (2 = one image determines the other).

    Less sensitive than MI to the overlap size. Arguments as :func:`joint_histogram`.
    """
    hf, hm, hfm = _entropies(fixed, warped, mask, bins, kernel, sigma, fixed_range, warped_range)
    return ((hf + hm) / hfm.clamp_min(TINY)).mean()
