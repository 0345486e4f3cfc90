"""Separable filters: Gaussian smoothing with sigma in mm, and box (local sum/mean) filters.

Raw-tensor functions take data (N, C, *spatial) with spatial = (D, H, W) or (H, W). Their per-axis
arguments (``sigma_vox``, ``window_vox``) are given in ITK index order (x, y[, z]), i.e. the
*reversed* tensor axes, so that ``sigma_mm / grid.spacing`` can be passed directly. A scalar applies
to every axis. All filters are differentiable w.r.t. the data.

Because a grid's direction matrix is orthonormal, a Gaussian that is isotropic in world space is
exactly the product of 1D Gaussians along the index axes with sigma_vox = sigma_mm / spacing, so
oblique grids need no special handling. A per-axis sigma_mm is read per *index* axis (as ITK's
``SmoothingRecursiveGaussian`` and ``DiscreteGaussian`` do).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from morphreg.errors import MorphregError
from morphreg.image.image import Image

BOUNDARIES = ("replicate", "reflect", "zeros")
KERNELS = ("sampled", "discrete")
_PAD_MODE = {"replicate": "replicate", "reflect": "reflect", "zeros": "constant"}


def _per_axis(values, dim: int, name: str) -> list[float]:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, dim)
    if arr.size != dim:
        raise MorphregError(f"{name} has {arr.size} values, expected 1 or {dim}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise MorphregError(f"{name} {arr.tolist()} must be finite and non-negative")
    return arr.tolist()


def gaussian_kernel_1d(
    sigma_vox: float,
    truncate: float = 4.0,
    kind: str = "sampled",
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """Normalised 1D Gaussian kernel of radius ceil(truncate * sigma_vox): shape (2 r + 1,).

    ``kind="sampled"`` samples exp(-x^2 / 2 sigma^2) (as scipy.ndimage); ``"discrete"`` is
    Lindeberg's discrete Gaussian exp(-t) I_n(t), t = sigma^2 (as ITK's DiscreteGaussian filter),
    which stays a proper smoothing kernel for sigma below one voxel.
    """
    if kind not in KERNELS:
        raise MorphregError(f"unknown Gaussian kernel {kind!r} (choose from {', '.join(KERNELS)})")
    if not sigma_vox > 0:
        raise MorphregError(f"Gaussian sigma must be > 0 voxels, got {sigma_vox}")
    radius = max(1, int(np.ceil(truncate * sigma_vox)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    if kind == "sampled":
        k = np.exp(-0.5 * (x / sigma_vox) ** 2)
    else:
        from scipy.special import ive  # exp(-t) I_n(t) without overflow

        k = ive(np.abs(x), sigma_vox**2)
    return torch.as_tensor(k / k.sum(), dtype=dtype, device=device)


def _pad_axis(x: torch.Tensor, axis: int, before: int, after: int, boundary: str) -> torch.Tensor:
    """Pad tensor axis ``axis`` of (B, 1, *spatial) (0 = first spatial axis) only."""
    nsp = x.dim() - 2
    pad = [0, 0] * nsp
    pad[2 * (nsp - 1 - axis)], pad[2 * (nsp - 1 - axis) + 1] = before, after  # F.pad lists the last axis first
    if boundary == "reflect" and x.shape[2 + axis] <= max(before, after):
        boundary = "replicate"  # reflection needs more samples than the pad width
    return F.pad(x, pad, mode=_PAD_MODE[boundary])


def _filter_axis(x: torch.Tensor, kernel: torch.Tensor, axis: int, boundary: str) -> torch.Tensor:
    """Correlate (B, 1, *spatial) with a 1D kernel along tensor axis ``axis`` (0 = first spatial).

    Shift-and-add over the padded tensor: on CPU this is several times faster than a depthwise
    convolution with a (k, 1, 1) kernel, and exact.
    """
    radius = kernel.numel() // 2
    n = x.shape[2 + axis]
    xp = _pad_axis(x, axis, radius, radius, boundary)
    if kernel.requires_grad:  # keep the kernel in the graph
        kernel = kernel.to(dtype=x.dtype, device=x.device)
        return sum(xp.narrow(2 + axis, j, n) * kernel[j] for j in range(kernel.numel()))
    weights = kernel.detach().double().tolist()
    out = xp.narrow(2 + axis, 0, n) * weights[0]
    for j in range(1, len(weights)):
        if weights[j] != 0.0:
            out.add_(xp.narrow(2 + axis, j, n), alpha=weights[j])  # in place on our own buffer: autograd-safe
    return out


def separable_filter(
    data: torch.Tensor, kernels: Sequence[torch.Tensor | None], boundary: str = "replicate"
) -> torch.Tensor:
    """Apply one 1D kernel per index axis (ITK order x, y[, z]; None skips the axis).

    Args:
        data: (N, C, *spatial) floating tensor.
        kernels: odd-length 1D kernels, applied as correlations (flip asymmetric kernels yourself).
        boundary: "replicate" (ITK's zero-flux Neumann), "reflect" or "zeros".
    Returns:
        (N, C, *spatial) filtered tensor.
    """
    if boundary not in BOUNDARIES:
        raise MorphregError(f"unknown boundary {boundary!r} (choose from {', '.join(BOUNDARIES)})")
    if not data.is_floating_point():
        raise MorphregError("filters need floating-point data (convert label maps explicitly)")
    nsp = data.dim() - 2
    if nsp not in (1, 2, 3) or len(kernels) != nsp:
        raise MorphregError(f"expected data (N, C, *spatial) with {len(kernels)} spatial axes, got {tuple(data.shape)}")
    n, c = data.shape[:2]
    # Channels become batch entries so one single-channel kernel serves every channel.
    x = data.reshape(n * c, 1, *data.shape[2:])
    for k, kernel in enumerate(kernels):
        if kernel is None:
            continue
        if kernel.numel() % 2 == 0:
            raise MorphregError(f"kernel for axis {k} has even length {kernel.numel()}")
        x = _filter_axis(x, kernel, nsp - 1 - k, boundary)
    return x.reshape(data.shape)


def gaussian_filter(
    data: torch.Tensor,
    sigma_vox,
    truncate: float = 4.0,
    boundary: str = "replicate",
    kind: str = "sampled",
) -> torch.Tensor:
    """Gaussian smoothing of (N, C, *spatial) with standard deviation ``sigma_vox`` voxels per index
    axis (ITK order x, y[, z]; 0 = leave that axis alone). Returns (N, C, *spatial)."""
    nsp = data.dim() - 2
    sigmas = _per_axis(sigma_vox, nsp, "sigma_vox")
    kernels = [
        gaussian_kernel_1d(s, truncate, kind, dtype=data.dtype, device=data.device) if s > 0 else None
        for s in sigmas
    ]
    return separable_filter(data, kernels, boundary)


def box_filter(
    data: torch.Tensor, window_vox, normalize: bool = False, boundary: str = "zeros"
) -> torch.Tensor:
    """Sum (or mean with ``normalize``) over a centred box of ``window_vox`` voxels per index axis.

    Used for local statistics (local NCC): ``window_vox`` must be odd (ITK order x, y[, z], or one
    int for all). With the default zero boundary the sum covers only voxels inside the image, while
    the mean still divides by the full window size. Returns (N, C, *spatial).
    """
    nsp = data.dim() - 2
    windows = _per_axis(window_vox, nsp, "window_vox")
    if any(w != int(w) or int(w) % 2 == 0 for w in windows):
        raise MorphregError(f"box window {windows} must be odd whole numbers of voxels")
    # Shift-and-add of ones: exact in the data's precision (unlike running sums, whose differences
    # lose digits on long axes), and on CPU faster than a float64 cumulative sum for usual windows.
    kernels = [
        torch.full((int(w),), 1.0 / w if normalize else 1.0, dtype=torch.float64) for w in windows
    ]
    if boundary == "zeros" and data.requires_grad and torch.is_grad_enabled():
        return _SelfAdjointFilter.apply(data, kernels, boundary)
    return separable_filter(data, kernels, boundary)


class _SelfAdjointFilter(torch.autograd.Function):
    """A separable filter with symmetric kernels and zero boundary is a symmetric linear map, so its
    backward is the same filter applied to the incoming gradient: one pass instead of autograd's
    record of every shift-and-add (the local-NCC box sums are the hot spot of SyN-type methods)."""

    @staticmethod
    def forward(ctx, data, kernels, boundary):
        ctx.kernels, ctx.boundary = kernels, boundary
        return separable_filter(data, kernels, boundary)

    @staticmethod
    def backward(ctx, grad):
        return separable_filter(grad.contiguous(), ctx.kernels, ctx.boundary), None, None


def sigma_mm_to_vox(sigma_mm, image_or_spacing) -> list[float]:
    """Per index axis sigma in voxels: sigma_mm / spacing (sigma_mm scalar or per index axis)."""
    spacing = image_or_spacing.spacing if hasattr(image_or_spacing, "spacing") else image_or_spacing
    spacing = np.asarray(spacing, np.float64).reshape(-1)
    return (np.asarray(_per_axis(sigma_mm, spacing.size, "sigma_mm")) / spacing).tolist()


def gaussian_smooth(
    image: Image,
    sigma_mm,
    truncate: float = 4.0,
    boundary: str = "replicate",
    kind: str = "sampled",
) -> Image:
    """Gaussian-smoothed copy of an intensity image; ``sigma_mm`` is in mm (scalar = isotropic in
    world space, or one value per index axis x, y[, z]). Integer images are refused (labels)."""
    if image.is_label:
        raise MorphregError("cannot smooth a label map (integer data); convert it to float first", image.name)
    sigma_vox = sigma_mm_to_vox(sigma_mm, image.grid)
    out = gaussian_filter(image.batch(), sigma_vox, truncate, boundary, kind)[0]
    return image.with_data(out)


def box_smooth(image: Image, window_vox, boundary: str = "replicate") -> Image:
    """Local mean over an odd ``window_vox`` box (per index axis x, y[, z]) of an intensity image."""
    if image.is_label:
        raise MorphregError("cannot filter a label map (integer data); convert it to float first", image.name)
    return image.with_data(box_filter(image.batch(), window_vox, normalize=True, boundary=boundary)[0])
