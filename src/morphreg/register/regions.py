"""Where a stage compares the images when the user gave no mask: the acquired field of view (e.g. the
ultrasound cone) and a central region of it."""
from __future__ import annotations

import numpy as np
import torch

from morphreg.image.image import Image


def field_of_view_mask(image: Image, erode_mm: float = 3.0, min_share: float = 0.05) -> Image | None:
    """Mask of the acquired field of view (e.g. the ultrasound cone): voxels above the image minimum,
    small dark holes closed, eroded by ``erode_mm`` so that the cone's edge is not an image feature.
    None when under ``min_share`` of the image is at its minimum (no visible field of view) or the
    mask would keep under 20 % of the image."""
    import torch.nn.functional as F

    from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox

    data = image.data[:1].float()
    inside = (data > data.min()).float()
    if float(1 - inside.mean()) < min_share:
        return None
    # Smoothing then thresholding closes speckle-sized dark holes inside the cone.
    inside = (gaussian_filter(inside[None], sigma_mm_to_vox(1.5, image.grid))[0] > 0.5).float()
    radius = [max(int(round(erode_mm / float(s))), 0) for s in image.grid.spacing[::-1]]  # tensor axis order
    if any(radius):
        pool = F.max_pool3d if image.dim == 3 else F.max_pool2d
        k = [2 * r + 1 for r in radius]
        inside = 1 - pool((1 - inside)[None], k, stride=1, padding=radius)[0]
    if float(inside.sum()) < 0.2 * inside.numel():
        return None
    return image.with_data(inside)


def central_region(grid, fraction: float) -> Image:
    """Ellipsoid mask about the grid centre with semi-axes ``fraction`` x the extent along each axis.
    Used where the target organ is centred in the field of view (e.g. TRUS volumes of the prostate):
    the similarity then looks at the organ, not at the structures around it."""
    pts = grid.points(dtype=torch.float32)
    c = torch.as_tensor(np.asarray(grid.center()), dtype=torch.float32)
    ext = torch.as_tensor(np.asarray(grid.extent), dtype=torch.float32).clamp_min(1e-6)
    inside = (((pts - c) / (fraction * ext)) ** 2).sum(-1) <= 1
    return Image(inside.float()[None], grid)


def field_of_view_region(fixed: Image, roi: float | None = None) -> Image | None:
    """Where a ``fov_mask`` stage compares the images: the fixed image's field of view (e.g. the
    ultrasound cone, whose border is an acquisition edge, not anatomy), with ``roi`` only its central
    region (:func:`central_region`); None when neither applies."""
    fov = field_of_view_mask(fixed)
    if not roi:
        return fov
    central = central_region(fixed.grid, float(roi))
    return central if fov is None else fov.with_data(fov.data * central.data)
