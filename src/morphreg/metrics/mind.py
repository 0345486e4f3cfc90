"""MIND-SSC descriptors (Heinrich et al., MICCAI 2013) and the MIND loss for multimodal pairs.

Self-similarity context: for the 2 * dim neighbours at +-``dilation`` voxels along each axis, take
every pair of neighbours that are sqrt(2) * dilation apart (12 pairs in 3D, 4 in 2D). For each pair
(a, b) the patch distance is D_ab(x) = patch-mean of (I(x + a) - I(x + b))^2, with a box patch of
(2 radius + 1) voxels (or a Gaussian of sigma = radius). Descriptors are
exp(-(D_ab - min_ab D) / V(x)), V = mean_ab (D_ab - min D) clamped to [1e-3, 1e3] x its image mean,
as in Heinrich's reference implementation. They depend only on local self-similarity, so any linear
intensity remap a * I + b (a != 0, inversions included) leaves them unchanged.
"""
from __future__ import annotations

import itertools

import torch

from morphreg.errors import MorphregError
from morphreg.image.filters import box_filter, gaussian_filter
from morphreg.metrics._common import as_weight, check_pair, weighted_mean


def ssc_pairs(dim: int, dilation: int = 1) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs of neighbour offsets (tensor axis order) at distance sqrt(2) * dilation: 12 in 3D, 4 in 2D."""
    neighbours = []
    for axis in range(dim):
        for sign in (-1, 1):
            o = [0] * dim
            o[axis] = sign * dilation
            neighbours.append(tuple(o))
    return [(a, b) for a, b in itertools.combinations(neighbours, 2)
            if sum((p - q) ** 2 for p, q in zip(a, b)) == 2 * dilation**2]


def _shift(image: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """I(x + offset) with edge replication (indices clamped to the image), offset in tensor axis order."""
    out = image
    for axis, o in enumerate(offset):
        if o:
            n = image.shape[2 + axis]
            idx = (torch.arange(n, device=image.device) + o).clamp(0, n - 1)
            out = out.index_select(2 + axis, idx)
    return out


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2, patch: str = "box") -> torch.Tensor:
    """MIND-SSC descriptors of (N, C, *spatial) images.

    Args:
        image: (N, C, *spatial), 2D or 3D.
        radius: patch radius in voxels (box of 2 r + 1, or Gaussian sigma r with ``patch="gaussian"``).
        dilation: neighbour distance in voxels.
        patch: "box" or "gaussian" patch weighting.
    Returns:
        (N, C * K, *spatial) descriptors in (0, 1], K = 12 (3D) or 4 (2D) per input channel.
    """
    dim = image.dim() - 2
    if dim not in (2, 3):
        raise MorphregError(f"MIND needs (N, C, *spatial) with 2 or 3 spatial axes, got {tuple(image.shape)}")
    if patch not in ("box", "gaussian"):
        raise MorphregError(f"unknown MIND patch {patch!r} (choose box or gaussian)")
    shape = tuple(image.shape[2:])
    # Edge replication outside the image, as in the reference implementation.
    diffs = [(_shift(image, a) - _shift(image, b)) ** 2 for a, b in ssc_pairs(dim, dilation)]
    d = torch.stack(diffs, dim=2).flatten(1, 2)  # (N, C*K, *spatial), channel-major
    if patch == "box":
        ones = torch.ones(1, 1, *shape, dtype=image.dtype, device=image.device)
        # Patch means over in-image voxels only (divide by the in-image count).
        d = box_filter(d, 2 * radius + 1) / box_filter(ones, 2 * radius + 1)
    else:
        d = gaussian_filter(d, radius, boundary="replicate")
    n, k = image.shape[0], len(diffs)
    d = d.reshape(n, image.shape[1], k, *shape)
    d = d - d.amin(2, keepdim=True)
    var = d.mean(2, keepdim=True)
    mean_var = var.mean(tuple(range(3, var.dim())), keepdim=True)
    var = torch.maximum(torch.minimum(var, mean_var * 1000), mean_var * 0.001) + 1e-12
    return torch.exp(-d / var).flatten(1, 2)


def mind_loss(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    mask: torch.Tensor | None = None,
    radius: int = 1,
    dilation: int = 2,
    patch: str = "box",
) -> torch.Tensor:
    """Weighted mean squared difference of MIND-SSC descriptors (dimensionless, >= 0, 0 = match).

    Descriptors are computed on the whole images; the mask (broadcastable to (N, 1, *spatial))
    weights the voxels where they are compared. Arguments as :func:`mind_ssc`.
    """
    check_pair(fixed, warped)
    df = mind_ssc(fixed, radius, dilation, patch)
    dm = mind_ssc(warped, radius, dilation, patch)
    return weighted_mean((df - dm) ** 2, as_weight(mask, fixed))
