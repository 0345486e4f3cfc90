"""Similarity metrics: gradient checks (float64, tiny images), sanity values, masks, sampling, registry."""
from __future__ import annotations

import math

import pytest
import torch

from morphreg.errors import MorphregError
from morphreg.image import Grid
from morphreg.metrics import (
    SIMILARITY_LOSSES,
    SimilarityLoss,
    gather_voxels,
    index_points,
    joint_histogram,
    local_ncc,
    mind_loss,
    mind_ssc,
    mse,
    mutual_information,
    ncc,
    ngf,
    normalized_mutual_information,
    sample_indices,
)

SHAPES = {2: (8, 8), 3: (6, 6, 6)}


def blobs(shape, seed=0, n=4) -> torch.Tensor:
    """Smooth test image (1, 1, *shape) in [0, 1]: a sum of Gaussian blobs."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij")
    img = torch.zeros(shape, dtype=torch.float64)
    for _ in range(n):
        centre = [torch.rand((), generator=g) * s for s in shape]
        width = 1.0 + 2.0 * torch.rand((), generator=g)
        img += torch.exp(-sum((a - c) ** 2 for a, c in zip(axes, centre)) / (2 * width**2))
    img = (img - img.min()) / (img.max() - img.min())
    return img[None, None]


def soft_mask(shape, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.2 + torch.rand((1, 1, *shape), generator=g, dtype=torch.float64)


def check_grad(fn, *inputs):
    inputs = [x.clone().requires_grad_(True) for x in inputs]
    # fast_mode checks random directional derivatives: same guarantee in practice, far fewer evaluations
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


# ----- gradient checks ---------------------------------------------------------------------------
METRIC_CASES = {
    "mse": lambda f, m, w, grid: mse(f, m, w),
    "ncc": lambda f, m, w, grid: ncc(f, m, w),
    "lncc": lambda f, m, w, grid: local_ncc(f, m, w, window=3),
    "lncc_squared": lambda f, m, w, grid: local_ncc(f, m, w, window=(3, 5, 3)[: f.dim() - 2], squared=True),
    "ngf": lambda f, m, w, grid: ngf(f, m, w, grid=grid, epsilon=0.05),
    "ngf_auto_eps": lambda f, m, w, grid: ngf(f, m, w, grid=grid),
    "mi_bspline": lambda f, m, w, grid: mutual_information(f, m, w, bins=8, fixed_range=(-0.5, 1.5), warped_range=(-0.5, 1.5)),
    "mi_gaussian": lambda f, m, w, grid: mutual_information(
        f, m, w, bins=8, kernel="gaussian", sigma=0.7, fixed_range=(-0.5, 1.5), warped_range=(-0.5, 1.5)),
    "nmi": lambda f, m, w, grid: normalized_mutual_information(f, m, w, bins=8, fixed_range=(-0.5, 1.5), warped_range=(-0.5, 1.5)),
    "mind": lambda f, m, w, grid: mind_loss(f, m, w, radius=1, dilation=1),
    "mind_gaussian": lambda f, m, w, grid: mind_loss(f, m, w, radius=1, dilation=1, patch="gaussian"),
}


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", list(METRIC_CASES))
def test_gradcheck(name, dim):
    shape = SHAPES[dim]
    grid = Grid(list(reversed(shape)), spacing=[0.8, 1.3, 2.0][:dim])
    f, m, w = blobs(shape, 0), blobs(shape, 5), soft_mask(shape)
    fn = METRIC_CASES[name]
    # w.r.t. the warped image (what registration differentiates), with sample weights
    check_grad(lambda mm: fn(f, mm, w, grid), m)
    if dim == 2:  # w.r.t. both images, no mask
        check_grad(lambda ff, mm: fn(ff, mm, None, grid), f, m)


# ----- sanity values ------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 3])
def test_ncc_linear_remap(dim):
    f = blobs(SHAPES[dim])
    assert ncc(f, 3 * f + 2).item() == pytest.approx(1, abs=1e-7)
    assert ncc(f, -0.5 * f + 1).item() == pytest.approx(-1, abs=1e-7)
    assert ncc(f.double(), 3 * f.double() + 2).item() == pytest.approx(1, abs=1e-12)
    assert ncc(1e-4 * f, 1e-4 * (3 * f + 2)).item() == pytest.approx(1, abs=1e-6)  # no additive constant
    assert ncc(f, torch.ones_like(f)).item() == 0.0  # a constant image correlates with nothing
    assert ncc(f, blobs(SHAPES[dim], 7)).item() < 0.99
    assert local_ncc(f, 3 * f + 2, window=3, eps=1e-14).item() == pytest.approx(1, abs=1e-6)
    assert local_ncc(f, -f, window=3, eps=1e-14).item() == pytest.approx(-1, abs=1e-6)
    assert local_ncc(f, -f, window=3, squared=True, eps=1e-14).item() == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("dim", [2, 3])
def test_masks_select_voxels(dim):
    shape = SHAPES[dim]
    f = blobs(shape)
    noise = torch.rand(f.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    left = torch.zeros(shape, dtype=torch.bool)
    left[..., : shape[-1] // 2] = True
    m = torch.where(left, 2 * f + 1, noise)  # linear remap on the left half only
    assert ncc(f, m, left).item() == pytest.approx(1, abs=1e-7)
    assert ncc(f, m).item() < 0.95
    assert mse(f, torch.where(left, f, noise), left).item() == pytest.approx(0, abs=1e-15)
    assert mse(f, torch.where(left, f, noise)).item() > 1e-3
    # local NCC: windows see only in-mask voxels
    assert local_ncc(f, m, left, window=3, eps=1e-14).item() == pytest.approx(1, abs=1e-6)
    assert local_ncc(f, m, window=3).item() < 0.95
    # a weight of 2 everywhere is the same as no mask
    assert mse(f, noise, torch.full(shape, 2.0)).item() == pytest.approx(mse(f, noise).item())
    # masks per batch element
    fb, mb = torch.cat([f, f]), torch.cat([m, m])
    masks = torch.stack([left, ~left])[:, None]
    per = ncc(fb, mb, masks).item()
    assert per == pytest.approx((ncc(f, m, left).item() + ncc(f, m, ~left).item()) / 2)


def test_bad_mask_shape():
    f = blobs(SHAPES[2])
    with pytest.raises(MorphregError):
        mse(f, f, torch.ones(5, 5))
    with pytest.raises(MorphregError):
        ncc(f, f, torch.ones(1, 2, 8, 8))
    with pytest.raises(MorphregError):
        mse(f, f[..., :4])


def shifted(img: torch.Tensor, s: int = 2) -> torch.Tensor:
    return torch.roll(img, s, dims=-1)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("kernel", ["bspline", "gaussian"])
def test_mi_maximal_at_alignment(dim, kernel):
    shape = (16, 16) if dim == 2 else (10, 10, 10)
    f = blobs(shape, 2, n=6)
    g = torch.cos(3 * f)  # non-monotonic remap: a "different modality"
    for fn in (mutual_information, normalized_mutual_information):
        aligned = fn(f, g, kernel=kernel, bins=16).item()
        for s in (1, 3):
            assert aligned > fn(f, shifted(g, s), kernel=kernel, bins=16).item() + 1e-3
    mi = mutual_information(f, g, bins=16, kernel=kernel).item()
    assert 0 < mi < math.log(16)
    assert 1 < normalized_mutual_information(f, g, bins=16, kernel=kernel).item() <= 2


def dense_joint_histogram(f, m, bins, lo, hi):
    """Reference: full (P, bins) cubic B-spline weight matrices, normalised per sample."""
    def weights(x):
        t = ((x - lo) / (hi - lo) * (bins - 1)).clamp(0, bins - 1)
        d = (t[:, None] - torch.arange(bins, dtype=x.dtype)).abs()
        k = torch.where(d < 1, (4 - 6 * d**2 + 3 * d**3) / 6, (2 - d).clamp_min(0) ** 3 / 6)
        return k / k.sum(1, keepdim=True)
    wf, wm = weights(f.reshape(-1)), weights(m.reshape(-1))
    h = wf.T @ wm
    return h / h.sum()


def test_joint_histogram_matches_dense_reference():
    f, m = blobs((12, 12), 1), blobs((12, 12), 4)
    h = joint_histogram(f, m, bins=10, fixed_range=(0, 1), warped_range=(0, 1))[0, 0]
    ref = dense_joint_histogram(f, m, 10, 0.0, 1.0)
    assert torch.allclose(h, ref, atol=1e-12)
    assert h.sum().item() == pytest.approx(1)
    # data range (default) equals the explicit min/max range
    h2 = joint_histogram(f, m, bins=10)[0, 0]
    assert torch.allclose(h2, dense_joint_histogram(f, m, 10, 0.0, 1.0), atol=1e-12)
    # a zero-weight region contributes nothing
    mask = torch.zeros(12, 12)
    mask[:, :6] = 1
    hm = joint_histogram(f, m, mask, bins=10, fixed_range=(0, 1), warped_range=(0, 1))[0, 0]
    assert torch.allclose(hm, dense_joint_histogram(f[..., :6], m[..., :6], 10, 0.0, 1.0), atol=1e-12)
    with pytest.raises(MorphregError):
        joint_histogram(f, m, kernel="box")


@pytest.mark.parametrize("dim", [2, 3])
def test_ngf_invariances(dim):
    shape = (12, 12) if dim == 2 else (8, 8, 8)
    grid = Grid(list(reversed(shape)), spacing=[1.0, 0.7, 1.5][:dim])
    f, m = blobs(shape, 3, n=5), blobs(shape, 3, n=5) ** 2
    v = ngf(f, m, grid=grid, epsilon=0.01).item()
    assert ngf(f, 1 - m, grid=grid, epsilon=0.01).item() == pytest.approx(v, abs=1e-12)  # inversion
    auto = ngf(f, m, grid=grid).item()
    assert ngf(f, -4 * m + 3, grid=grid).item() == pytest.approx(auto, abs=1e-8)  # any linear remap
    assert ngf(f, f, grid=grid).item() > ngf(f, shifted(f), grid=grid).item()
    assert 0 <= auto <= 1
    # world units: isotropic spacing s scales gradients by 1/s, so epsilon / s gives the same value
    iso = Grid(list(reversed(shape)), spacing=2.5)
    assert ngf(f, m, grid=iso, epsilon=0.04).item() == pytest.approx(ngf(f, m, epsilon=0.1).item(), abs=1e-12)


@pytest.mark.parametrize("dim", [2, 3])
def test_mind_intensity_invariance(dim):
    shape = (12, 12) if dim == 2 else (8, 8, 8)
    f = blobs(shape, 4, n=5)
    d = mind_ssc(f, radius=1, dilation=2)
    assert d.shape == (1, 4 if dim == 2 else 12, *shape)
    assert torch.all((d > 0) & (d <= 1))
    assert torch.allclose(mind_ssc(-2.5 * f + 7, radius=1, dilation=2), d, atol=1e-9)
    assert mind_loss(f, 3 * f + 1).item() == pytest.approx(0, abs=1e-12)
    assert mind_loss(f, 1 - f).item() < 0.1 * mind_loss(f, shifted(f)).item()
    # multichannel: descriptors per channel
    assert mind_ssc(torch.cat([f, f * f], 1)).shape[1] == 2 * d.shape[1]


@pytest.mark.parametrize("dim", [2, 3])
def test_random_subsample_evaluation(dim):
    shape = (10, 12) if dim == 2 else (6, 7, 8)
    grid = Grid(list(reversed(shape)), origin=[3.0, -2.0, 1.0][:dim], spacing=[0.5, 1.5, 2.0][:dim])
    f, m = blobs(shape, 1), torch.cos(2 * blobs(shape, 1))
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[..., 2:7] = True
    idx = sample_indices(mask, 20, torch.Generator().manual_seed(0))
    again = sample_indices(mask, 20, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again) and idx.unique().numel() == 20
    assert mask.reshape(-1)[idx].all()
    # sample positions are the voxel centres of the grid
    pts = index_points(grid, idx, dtype=torch.float64)
    assert torch.allclose(pts, grid.points(dtype=torch.float64).reshape(-1, dim)[idx])
    assert torch.equal(gather_voxels(f, idx)[0, 0], f.reshape(-1)[idx])
    # all voxels of the mask in random order = the masked full-image value (pointwise metrics)
    full = sample_indices(mask, 10**6, torch.Generator().manual_seed(1))
    assert full.numel() == int(mask.sum())
    fs, ms = gather_voxels(f, full), gather_voxels(m, full)
    for fn in (mse, ncc, mutual_information, normalized_mutual_information):
        assert fn(fs, ms).item() == pytest.approx(fn(f, m, mask).item(), rel=1e-9)
    # sampled values stay differentiable
    ms.requires_grad_(True)
    mutual_information(fs, ms).backward()
    assert ms.grad.abs().sum() > 0
    with pytest.raises(MorphregError):
        sample_indices(torch.zeros(shape), 5)
    assert sample_indices(shape, 7, torch.Generator().manual_seed(2), replacement=True).numel() == 7


@pytest.mark.parametrize("dim", [2, 3])
def test_registry_losses(dim):
    shape = (12, 12) if dim == 2 else (8, 8, 8)
    grid = Grid(list(reversed(shape)), spacing=1.2)
    f = blobs(shape, 6, n=5)
    assert set(SIMILARITY_LOSSES) == {"mse", "ncc", "lncc", "ngf", "mi", "nmi", "mind"}
    params = {"ngf": {"grid": grid}, "lncc": {"window": 5}, "mi": {"bins": 16}, "nmi": {"bins": 16}}
    mask = torch.ones(shape)
    for name, loss in SIMILARITY_LOSSES.items():
        kw = params.get(name, {})
        at, off = loss(f, f, **kw), loss(f, shifted(f, 3), mask=mask, **kw)
        assert at.dim() == 0 and at.item() < off.item(), name  # lower is better
        module = SimilarityLoss(name, **kw)
        assert module(f, shifted(f, 3), mask).item() == pytest.approx(off.item())
    with pytest.raises(MorphregError):
        SimilarityLoss("cc")
