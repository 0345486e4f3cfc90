"""Images: geometry and I/O against SimpleITK, intensity helpers, filters, pyramids, resampling."""
from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from morphreg.errors import MorphregError
from morphreg.image import (
    Grid,
    Image,
    box_filter,
    crop,
    crop_to_mask,
    gaussian_filter,
    gaussian_pyramid,
    gaussian_smooth,
    match_histogram,
    pad,
    read_image,
    rescale_intensity,
    resample,
    resample_to_spacing,
    to_sitk,
    write_image,
    zscore,
)
from morphreg.image.intensity import quantile_values
from morphreg.image.resample import antialias_sigma_mm, mask_bounds

DIMS = [2, 3]


def _noise_image(grid: Grid, seed: int = 0, dtype=torch.float64) -> Image:
    g = torch.Generator().manual_seed(seed)
    return Image(torch.rand(1, *grid.shape, generator=g, dtype=dtype), grid, name="noise")


def _arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


# ----- Grid / Image geometry vs SimpleITK -----------------------------------------------------------
@pytest.mark.parametrize("dim", DIMS)
def test_index_world_matrices_match_sitk(dim, oblique_grid):
    grid = oblique_grid(dim, seed=3)
    img = to_sitk(Image(torch.zeros(grid.shape), grid))
    rng = np.random.default_rng(1)
    index = rng.uniform(-2, 12, (20, dim))
    theirs = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index])
    ours = grid.index_to_world_points(index)
    hom = np.c_[index, np.ones(len(index))] @ grid.index_to_world().T
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(hom[:, :dim], theirs, atol=1e-9)
    back = np.array([img.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in theirs])
    np.testing.assert_allclose(grid.world_to_index_points(theirs), back, atol=1e-9)
    np.testing.assert_allclose(grid.world_to_index() @ grid.index_to_world(), np.eye(dim + 1), atol=1e-12)
    # Dense points: the tensor element at (z, y, x) is the world point of ITK index (x, y, z).
    pts = grid.points(dtype=torch.float64).numpy()
    i = tuple(int(v) for v in rng.integers(0, grid.size))
    np.testing.assert_allclose(pts[tuple(reversed(i))], img.TransformIndexToPhysicalPoint(i), atol=1e-9)
    # Normalised coordinates: -1 at the first voxel, +1 at the last.
    corners = np.c_[np.stack([np.zeros(dim), np.asarray(grid.size) - 1.0]), np.ones(2)] @ grid.index_to_norm().T
    np.testing.assert_allclose(corners[:, :dim], [[-1] * dim, [1] * dim], atol=1e-12)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
@pytest.mark.parametrize("dim", DIMS)
def test_write_read_round_trip_keeps_data_and_geometry(tmp_path, suffix, dim, oblique_grid, smooth_image, label_image):
    grid = oblique_grid(dim, seed=5)
    for image in (smooth_image(grid), label_image(grid)):
        path = tmp_path / f"img{suffix}"
        write_image(image, path)
        back = read_image(path, labels=image.is_label)
        assert back.data.dtype == image.data.dtype
        assert back.grid.size == grid.size
        torch.testing.assert_close(back.data, image.data)
        # NIfTI stores the geometry in float32.
        np.testing.assert_allclose(back.grid.origin, grid.origin, atol=1e-4)
        np.testing.assert_allclose(back.grid.spacing, grid.spacing, rtol=1e-5)
        np.testing.assert_allclose(back.grid.direction, grid.direction, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [f"img{suffix}"]  # no temp files left behind


def test_multichannel_round_trip(tmp_path, oblique_grid, smooth_image):
    image = smooth_image(oblique_grid(3), channels=2)
    write_image(image, tmp_path / "vec.mha")
    back = read_image(tmp_path / "vec.mha")
    assert back.channels == 2
    torch.testing.assert_close(back.data, image.data)


def test_uncompressed_nii_gz_is_a_stored_gzip_stream(tmp_path, oblique_grid, smooth_image):
    """compress=False on .nii.gz: a gzip file (readable as such) whose payload is not deflated."""
    image = smooth_image(oblique_grid(3), channels=3)
    packed, stored = tmp_path / "packed.nii.gz", tmp_path / "stored.nii.gz"
    write_image(image, packed)
    write_image(image, stored, compress=False)
    raw = gzip.decompress(stored.read_bytes())
    assert stored.read_bytes()[:2] == b"\x1f\x8b" and stored.stat().st_size > len(raw)  # stored blocks only
    assert raw == gzip.decompress(packed.read_bytes())  # the same NIfTI inside
    back = sitk.ReadImage(str(stored))  # SimpleITK reads it directly
    assert back.GetNumberOfComponentsPerPixel() == 3
    torch.testing.assert_close(read_image(stored).data, image.data)
    np.testing.assert_allclose(read_image(stored).grid.direction, image.grid.direction, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed.nii.gz", "stored.nii.gz"]  # no temp files


def _write_dicom_series(volume: sitk.Image, folder: Path) -> None:
    """One file per slice with the tags a DICOM reader needs to rebuild the geometry."""
    folder.mkdir()
    d = volume.GetDirection()
    shared = {
        "0008|0060": "CT",
        "0008|0008": "DERIVED\\SECONDARY",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1",
        "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
        "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0018|0050": f"{volume.GetSpacing()[2]:.6f}",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        slc = volume[:, :, k]
        for tag, value in shared.items():
            slc.SetMetaData(tag, value)
        slc.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))))
        slc.SetMetaData("0020|0013", str(k + 1))
        slc.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.1.3.{k + 1}")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slc)


def test_dicom_series_folder_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 2000, (5, 12, 10)).astype(np.int16)
    vol = sitk.GetImageFromArray(arr)
    vol.SetSpacing((0.8, 0.9, 2.5))
    vol.SetOrigin((-10.0, 20.0, 5.0))
    direction = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    vol.SetDirection(direction.ravel().tolist())
    _write_dicom_series(vol, tmp_path / "series")
    image = read_image(tmp_path / "series")
    assert image.grid.size == (10, 12, 5)
    assert image.data.is_floating_point()  # an int16 CT is an intensity image (exact in float32)
    np.testing.assert_array_equal(image.data[0].numpy(), arr)
    np.testing.assert_allclose(image.spacing, [0.8, 0.9, 2.5], atol=1e-4)
    np.testing.assert_allclose(image.origin, [-10.0, 20.0, 5.0], atol=1e-4)
    np.testing.assert_allclose(image.direction, direction, atol=1e-5)


def test_integer_files_are_label_maps_only_when_said_or_named_so(tmp_path, oblique_grid, label_image):
    grid = oblique_grid(3, seed=2)
    labels = label_image(grid)
    ct = labels.with_data((labels.data * 400 - 1000 + torch.arange(labels.data.numel()).reshape(labels.data.shape) % 7)
                          .to(torch.int16))
    for name, image, expected in [("ct.nii.gz", ct, False), ("moving.mha", labels, False), ("aseg.nii.gz", labels, True),
                                  ("seg.nii.gz", ct, True), ("fixed_mask.nrrd", labels, True)]:
        write_image(image, tmp_path / name)
        assert read_image(tmp_path / name).is_label is expected, name
        assert read_image(tmp_path / name, labels=True).is_label and not read_image(tmp_path / name, labels=False).is_label
    (tmp_path / "fixed_labels").mkdir()
    write_image(labels, tmp_path / "fixed_labels" / "obs000.nii.gz")  # the folder says so
    assert read_image(tmp_path / "fixed_labels" / "obs000.nii.gz").is_label
    big = oblique_grid(3, size=[12, 11, 10], seed=2)
    many = Image(torch.arange(1320, dtype=torch.int32).reshape(1, *big.shape), big)
    write_image(many, tmp_path / "labels_many.nii.gz")  # 1320 values: not a label map
    assert not read_image(tmp_path / "labels_many.nii.gz").is_label


# ----- I/O errors -------------------------------------------------------------------------------------
def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere.nii.gz"
    with pytest.raises(MorphregError, match="nowhere.nii.gz") as err:
        read_image(path)
    assert "not found" in str(err.value)


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(MorphregError, match="broken.nii.gz"):
        read_image(path)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(MorphregError, match="empty_dir"):
        read_image(empty)


def test_nan_voxels_are_refused(tmp_path):
    arr = np.ones((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.inf
    path = tmp_path / "nan.mha"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(MorphregError, match="nan.mha") as err:
        read_image(path)
    assert "2 NaN/inf" in str(err.value)


def test_non_orthonormal_direction_is_refused(tmp_path):
    # A hand-written MetaImage header: ITK reads any non-singular matrix, morphreg must refuse it.
    path = tmp_path / "sheared.mha"
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "CompressedData = False\nTransformMatrix = 1 0 0 0.4 1 0 0 0 1\nOffset = 0 0 0\n"
        "ElementSpacing = 1 1 1\nDimSize = 3 3 3\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + np.zeros(27, np.float32).tobytes())
    with pytest.raises(MorphregError, match="sheared.mha") as err:
        read_image(path)
    assert "orthonormal" in str(err.value)
    with pytest.raises(MorphregError, match="orthonormal"):
        Grid((3, 3), direction=[[1, 0.5], [0, 1]])


def test_unsupported_output_format_writes_nothing(tmp_path, oblique_grid, smooth_image):
    with pytest.raises(MorphregError, match="unsupported"):
        write_image(smooth_image(oblique_grid(2)), tmp_path / "out.xyz")
    assert list(tmp_path.iterdir()) == []


# ----- filters ------------------------------------------------------------------------------------------
def _sitk_discrete_gaussian(image: Image, sigma_mm) -> np.ndarray:
    f = sitk.DiscreteGaussianImageFilter()
    f.SetVariance([float(s) ** 2 for s in np.broadcast_to(sigma_mm, (image.dim,))])
    f.SetUseImageSpacing(True)
    f.SetMaximumError(1e-9)
    f.SetMaximumKernelWidth(1000)
    return _arr(f.Execute(to_sitk(image)))


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("sigma_mm", [0.6, 2.5, (1.0, 3.0, 2.0)])
def test_gaussian_matches_sitk_discrete_gaussian(dim, sigma_mm, oblique_grid):
    sigma_mm = sigma_mm[:dim] if isinstance(sigma_mm, tuple) else sigma_mm
    grid = oblique_grid(dim, size=[18, 15, 12][:dim], spacing=[0.7, 1.3, 2.1][:dim], seed=2)
    image = _noise_image(grid)
    ours = gaussian_smooth(image, sigma_mm, kind="discrete", truncate=6.0).data[0].numpy()
    np.testing.assert_allclose(ours, _sitk_discrete_gaussian(image, sigma_mm), atol=2e-5)


@pytest.mark.parametrize("dim", DIMS)
def test_sampled_gaussian_matches_sitk_recursive_gaussian(dim, oblique_grid, smooth_image):
    grid = oblique_grid(dim, size=[30, 26, 20][:dim], spacing=[0.8, 1.2, 1.6][:dim], seed=4)
    image = smooth_image(grid, dtype=torch.float64)
    image = image.with_data(image.data + 0.2 * _noise_image(grid, 1).data)
    sigma = 2.0
    ours = gaussian_smooth(image, sigma).data[0].numpy()
    theirs = _arr(sitk.SmoothingRecursiveGaussian(to_sitk(image), [sigma] * dim))
    # Deriche's recursive filter approximates the Gaussian to about 1e-3 of the range.
    assert np.abs(ours - theirs).max() < 5e-3 * np.ptp(image.data.numpy())


def test_isotropic_sigma_is_isotropic_in_world_on_oblique_grid():
    """Smoothing an impulse on a rotated, anisotropic grid gives world covariance sigma^2 I."""
    direction = np.array([[np.cos(0.5), -np.sin(0.5), 0], [np.sin(0.5), np.cos(0.5), 0], [0, 0, 1]])
    grid = Grid((41, 31, 25), (3.0, -7.0, 11.0), (0.5, 0.8, 1.1), direction)
    data = torch.zeros(1, *grid.shape, dtype=torch.float64)
    data[0, 12, 15, 20] = 1.0
    sigma = 2.0
    out = gaussian_smooth(Image(data, grid), sigma).data[0]
    pts = grid.points(dtype=torch.float64).reshape(-1, 3)
    w = out.reshape(-1)
    mean = (w[:, None] * pts).sum(0) / w.sum()
    d = pts - mean
    cov = (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0) / w.sum()
    np.testing.assert_allclose(mean.numpy(), grid.index_to_world_points([20, 15, 12]), atol=1e-9)
    np.testing.assert_allclose(cov.numpy(), sigma**2 * np.eye(3), atol=0.02 * sigma**2)


@pytest.mark.parametrize("dim", DIMS)
def test_box_filter_matches_average_pooling(dim):
    shape = (1, 2) + (9, 11, 8)[:dim]
    x = torch.rand(shape, dtype=torch.float64)
    window = (3, 5, 7)[:dim]  # ITK order x, y[, z]: tensor axes reversed
    pool = (F.avg_pool2d, F.avg_pool3d)[dim - 2]
    k = tuple(reversed(window))
    ref = pool(x, k, stride=1, padding=tuple(w // 2 for w in k), count_include_pad=True) * np.prod(window)
    torch.testing.assert_close(box_filter(x, window), ref)
    torch.testing.assert_close(box_filter(x, window, normalize=True), ref / np.prod(window))
    # Replicate boundary == a zero-padded sum over the replicate-padded tensor.
    padded = F.pad(x, [w // 2 for w in window for _ in range(2)], mode="replicate")
    ref_rep = pool(padded, k, stride=1) * np.prod(window)
    torch.testing.assert_close(box_filter(x, window, boundary="replicate"), ref_rep)
    # float32 data: only float32 round-off (no running sums whose differences lose digits).
    big = (x.float() + 10.0) ** 2
    exact = box_filter(big.double(), window)
    assert ((box_filter(big, window) - exact).abs().max() / exact.abs().max()).item() < 1e-6


def test_filters_are_differentiable():
    x = torch.rand(1, 1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gaussian_filter(t, (0.8, 1.5, 0.0)), (x,))
    assert torch.autograd.gradcheck(lambda t: box_filter(t, 3, boundary="replicate"), (x,))
    image = Image(x[0], Grid((5, 4, 3), spacing=(0.5, 1.0, 2.0)))
    gaussian_smooth(image, 1.0).data.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_filter_errors(oblique_grid, label_image, smooth_image):
    grid = oblique_grid(3)
    with pytest.raises(MorphregError, match="label"):
        gaussian_smooth(label_image(grid), 1.0)
    with pytest.raises(MorphregError, match="odd"):
        box_filter(torch.rand(1, 1, 5, 5), 4)
    with pytest.raises(MorphregError, match="non-negative"):
        gaussian_smooth(smooth_image(grid), -1.0)
    with pytest.raises(MorphregError, match="expected 1 or 3"):
        gaussian_smooth(smooth_image(grid), (1.0, 2.0))
    with pytest.raises(MorphregError, match="boundary"):
        gaussian_filter(torch.rand(1, 1, 5, 5), 1.0, boundary="wrap")


def test_smoothing_speed_on_a_brain_sized_volume():
    """Separable shift-and-add: a 160x192x224 volume with sigma 2 voxels in well under a few seconds."""
    x = torch.rand(1, 1, 160, 192, 224)
    start = time.perf_counter()
    gaussian_filter(x, 2.0)
    box_filter(x, 9)
    assert time.perf_counter() - start < 10.0


# ----- intensity ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", DIMS)
def test_rescale_intensity_percentiles(dim, oblique_grid):
    grid = oblique_grid(dim, size=[20, 18, 16][:dim])
    image = Image(torch.randn(1, *grid.shape, dtype=torch.float64) * 50 + 100, grid)
    out = rescale_intensity(image, 2, 98, out_range=(-1.0, 1.0))
    lo, hi = np.percentile(image.data.numpy(), [2, 98])
    expected = np.clip((image.data.numpy() - lo) / (hi - lo) * 2 - 1, -1, 1)
    np.testing.assert_allclose(out.data.numpy(), expected, atol=1e-12)
    assert out.grid.same_as(grid)
    # Only the masked voxels decide the percentiles.
    mask = torch.zeros(grid.shape, dtype=torch.uint8)
    mask[(slice(0, 6),) * dim] = 1
    masked = rescale_intensity(image, 0, 100, mask=mask, clip=False)
    inside = masked.data[0][mask.bool()]
    assert inside.min().item() == pytest.approx(0.0) and inside.max().item() == pytest.approx(1.0)
    assert masked.data.min() < 0 or masked.data.max() > 1  # outside values are not clipped


@pytest.mark.parametrize("dim", DIMS)
def test_zscore_has_mean_0_std_1_in_mask(dim, oblique_grid, label_image):
    grid = oblique_grid(dim, size=[20, 18, 16][:dim])
    image = Image(torch.rand(2, *grid.shape, dtype=torch.float64) * 300 - 40, grid)
    mask = label_image(grid, 2)  # an Image as mask: non-zero = inside
    out = zscore(image, mask=mask)
    m = mask.data[0] != 0
    for c in range(2):
        inside = out.data[c][m]
        assert abs(inside.mean().item()) < 1e-10
        assert inside.std(correction=0).item() == pytest.approx(1.0, abs=1e-10)
        # Outside voxels get the same affine map, so they are not at mean 0 in general.
        assert abs(out.data[c][~m].mean().item()) > 1e-6 or m.all()
    full = zscore(image)
    assert abs(full.data.mean().item()) < 1e-10


def test_mask_on_another_grid_is_resampled(oblique_grid, label_image):
    grid = oblique_grid(3, size=[16, 14, 12], seed=1)
    image = Image(torch.rand(1, *grid.shape, dtype=torch.float64), grid)
    mask = label_image(grid, 1)
    finer = resample(mask, grid.with_spacing(grid.spacing / 2), "nearest")
    a = zscore(image, mask=mask).data
    b = zscore(image, mask=finer).data
    # Nearest-neighbour round trip of a box mask is exact away from ties, so the stats agree closely.
    assert (a - b).abs().max() < 0.05


@pytest.mark.parametrize("dim", DIMS)
def test_match_histogram_moves_quantiles_onto_reference(dim, oblique_grid):
    grid = oblique_grid(dim, size=[30, 28, 20][:dim])
    g = torch.Generator().manual_seed(3)
    source = Image(torch.distributions.Exponential(0.1).sample((1, *grid.shape)).double(), grid)
    ref_grid = oblique_grid(dim, size=[25, 22, 18][:dim], seed=7)
    reference = Image(torch.randn(1, *ref_grid.shape, generator=g, dtype=torch.float64) * 20 + 300, ref_grid)
    out = match_histogram(source, reference, quantiles=512)
    levels = np.linspace(0.02, 0.98, 25)
    ours = quantile_values(out.data, levels).numpy()
    theirs = np.quantile(reference.data.numpy(), levels)
    before = np.quantile(source.data.numpy(), levels)
    iqr = np.subtract(*np.quantile(reference.data.numpy(), [0.75, 0.25]))
    assert np.abs(ours - theirs).max() < 0.02 * iqr
    assert np.abs(before - theirs).max() > 100 * 0.02 * iqr  # the test can fail: it moved a lot
    # The mapping is monotone: voxel order is kept.
    order = torch.argsort(source.data.reshape(-1))
    assert (torch.diff(out.data.reshape(-1)[order]) >= -1e-9).all()


def test_match_histogram_honours_masks(oblique_grid):
    grid = oblique_grid(3, size=[20, 18, 16])
    data = torch.rand(1, *grid.shape, dtype=torch.float64)
    mask = torch.zeros(grid.shape, dtype=torch.bool)
    mask[:8] = True
    data[0][~mask] = 1000.0  # a bright background outside the mask must not take part
    reference = Image(torch.rand(1, *grid.shape, dtype=torch.float64) * 10 + 50, grid)
    ref_mask = torch.ones(grid.shape, dtype=torch.bool)
    out = match_histogram(Image(data, grid), reference, mask=mask, reference_mask=ref_mask)
    inside = out.data[0][mask].numpy()
    levels = np.linspace(0.05, 0.95, 10)
    np.testing.assert_allclose(np.quantile(inside, levels), np.quantile(reference.data.numpy(), levels), atol=0.2)
    assert out.data[0][~mask].max().item() <= reference.data.max().item() + 1e-9  # clamped, not extrapolated


def test_histogram_matching_with_a_large_constant_background(oblique_grid):
    grid = oblique_grid(2, size=[40, 40])
    data = torch.zeros(1, *grid.shape, dtype=torch.float64)
    data[0, 10:30, 10:30] = torch.rand(20, 20, dtype=torch.float64) * 100
    reference = Image(torch.rand(1, *grid.shape, dtype=torch.float64) * 4 + 10, grid)
    out = match_histogram(Image(data, grid), reference)
    assert torch.isfinite(out.data).all()
    assert out.data.min() >= 10 - 1e-9 and out.data.max() <= 14 + 1e-9


def test_intensity_helpers_are_differentiable(oblique_grid):
    grid = oblique_grid(2, size=[12, 10])
    x = torch.rand(1, *grid.shape, dtype=torch.float64, requires_grad=True)
    ref = Image(torch.rand(1, *grid.shape, dtype=torch.float64) * 5, grid)
    for fn in (lambda im: zscore(im), lambda im: match_histogram(im, ref), lambda im: rescale_intensity(im, 1, 99)):
        x.grad = None
        fn(Image(x, grid)).data.square().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_intensity_helpers_refuse_labels(oblique_grid, label_image, smooth_image):
    grid = oblique_grid(3)
    labels, image = label_image(grid), smooth_image(grid)
    for call in (
        lambda: rescale_intensity(labels, 1, 99),
        lambda: zscore(labels),
        lambda: match_histogram(labels, image),
        lambda: match_histogram(image, labels),
    ):
        with pytest.raises(MorphregError, match="label"):
            call()
    with pytest.raises(MorphregError, match="no voxels"):
        zscore(image, mask=torch.zeros(grid.shape))
    with pytest.raises(MorphregError, match="percentiles"):
        rescale_intensity(image, 90, 10)
    with pytest.raises(MorphregError, match="mask shape"):
        zscore(image, mask=torch.ones(3, 3, 3))


# ----- resampling, cropping, padding --------------------------------------------------------------------
def _sitk_resample(image: Image, grid: Grid, interpolator) -> np.ndarray:
    ref = to_sitk(Image(torch.zeros(grid.shape), grid))
    return _arr(sitk.Resample(to_sitk(image), ref, sitk.Transform(), interpolator, 0.0))


@pytest.mark.parametrize("dim", DIMS)
def test_resample_to_reference_matches_sitk(dim, oblique_grid, smooth_image, label_image):
    src = oblique_grid(dim, size=[20, 18, 14][:dim], seed=1)
    ref = oblique_grid(dim, size=[16, 15, 12][:dim], seed=2)
    ref = Grid(ref.size, src.center() - ref.direction @ (ref.extent / 2), ref.spacing, ref.direction)
    image = smooth_image(src, dtype=torch.float64)
    for interp, sitk_interp, tol in (("linear", sitk.sitkLinear, 1e-6), ("bspline", sitk.sitkBSpline, 1e-4)):
        ours = resample(image, ref, interp).data[0].numpy()
        theirs = _sitk_resample(image, ref, sitk_interp)
        assert np.abs(ours - theirs).max() < tol * np.abs(theirs).max(), interp
    labels = label_image(src)
    ours = resample(labels, Image(torch.zeros(ref.shape), ref))
    assert ours.data.dtype == torch.int16 and ours.grid.same_as(ref)
    theirs = _sitk_resample(labels, ref, sitk.sitkNearestNeighbor)
    assert (ours.data[0].numpy() != theirs).mean() < 0.01  # ties at half voxels may round differently
    assert set(ours.labels()) <= set(labels.labels())


@pytest.mark.parametrize("dim", DIMS)
def test_resample_to_spacing_matches_sitk(dim, oblique_grid, smooth_image):
    grid = oblique_grid(dim, size=[24, 20, 16][:dim], spacing=[1.1, 0.9, 1.3][:dim], seed=6)
    image = smooth_image(grid, dtype=torch.float64)
    new_spacing = [1.7, 0.6, 2.3][:dim]
    out = resample_to_spacing(image, new_spacing, antialias=False)
    np.testing.assert_allclose(out.spacing, new_spacing)
    np.testing.assert_allclose(out.grid.center(), grid.center(), atol=1e-9)
    np.testing.assert_allclose(out.direction, grid.direction)
    assert np.all(out.grid.extent <= grid.extent + 1e-9)
    assert np.all(out.grid.extent > grid.extent - np.asarray(new_spacing))
    theirs = _sitk_resample(image, out.grid, sitk.sitkLinear)
    np.testing.assert_allclose(out.data[0].numpy(), theirs, atol=1e-6 * np.abs(theirs).max())
    # With anti-aliasing: smoothing only along the axes that get coarser, then the same resampling.
    smoothed = resample_to_spacing(image, new_spacing)
    sigma = antialias_sigma_mm(grid.spacing, new_spacing)
    assert sigma[1] == 0 and np.all(sigma[[0] + ([2] if dim == 3 else [])] > 0)
    expected = _sitk_resample(gaussian_smooth(image, sigma), out.grid, sitk.sitkLinear)
    np.testing.assert_allclose(smoothed.data[0].numpy(), expected, atol=1e-6 * np.abs(expected).max())


def test_antialiasing_removes_aliasing():
    grid = Grid((64, 64), spacing=(1.0, 1.0))
    ix = np.arange(64)
    checker = torch.as_tensor(((ix[:, None] + ix[None, :]) % 2).astype(np.float64))[None]  # Nyquist pattern
    image = Image(checker + 0.5 * torch.sin(torch.as_tensor(ix / 64 * 2 * np.pi))[None, None], grid)
    plain = resample_to_spacing(image, 3.3, antialias=False)
    smooth = resample_to_spacing(image, 3.3)
    # What a coarse grid should show: the checkerboard's mean plus the slow sine along x.
    x = plain.grid.points(dtype=torch.float64)[..., 0]
    ideal = 0.5 + 0.5 * torch.sin(x / 64 * 2 * np.pi)
    plain_err = (plain.data[0] - ideal).abs().mean().item()
    smooth_err = (smooth.data[0] - ideal).abs().mean().item()
    assert plain_err > 0.1  # the checkerboard aliases into the coarse image without smoothing
    assert smooth_err < 0.2 * plain_err


def test_resample_to_spacing_keeps_labels_integer(oblique_grid, label_image):
    grid = oblique_grid(3, size=[20, 18, 16], seed=2)
    labels = label_image(grid, 3, dtype=torch.int32)
    for interp in (None, "nearest", "label"):
        out = resample_to_spacing(labels, 2.1, interpolation=interp)
        assert out.data.dtype == torch.int32
        assert set(out.labels()) == {1, 2, 3}
    theirs = _sitk_resample(labels, out.grid, sitk.sitkNearestNeighbor)
    ours = resample_to_spacing(labels, 2.1).data[0].numpy()
    assert (ours != theirs).mean() < 0.01


@pytest.mark.parametrize("dim", DIMS)
def test_crop_and_pad_keep_world_positions(dim, oblique_grid, smooth_image, label_image):
    grid = oblique_grid(dim, size=[14, 12, 10][:dim], seed=8)
    image = smooth_image(grid)
    start, stop = [2, 3, 1][:dim], [11, 9, 7][:dim]
    cut = crop(image, start, stop)
    assert cut.grid.size == tuple(b - a for a, b in zip(start, stop))
    # Each kept voxel: same value and same world point as in the original.
    rng = np.random.default_rng(0)
    for _ in range(10):
        i = rng.integers(0, cut.grid.size)
        j = i + np.asarray(start)
        np.testing.assert_allclose(cut.grid.index_to_world_points(i), grid.index_to_world_points(j), atol=1e-9)
        assert cut.data[(0, *reversed(i.tolist()))] == image.data[(0, *reversed(j.tolist()))]
    roi = sitk.RegionOfInterest(to_sitk(image), [b - a for a, b in zip(start, stop)], start)
    np.testing.assert_allclose(cut.origin, roi.GetOrigin(), atol=1e-9)
    np.testing.assert_array_equal(cut.data[0].numpy(), _arr(roi))
    # Padding: compare with SimpleITK's ConstantPad, integer dtype kept.
    labels = label_image(grid)
    before, after = [1, 0, 2][:dim], [3, 2, 0][:dim]
    padded = pad(labels, before, after, value=7)
    theirs = sitk.ConstantPad(to_sitk(labels), before, after, 7)
    assert padded.data.dtype == labels.data.dtype
    np.testing.assert_array_equal(padded.data[0].numpy(), _arr(theirs))
    np.testing.assert_allclose(padded.origin, theirs.GetOrigin(), atol=1e-9)
    # Pad then crop back is the identity (geometry and data).
    back = crop(padded, before, np.asarray(before) + np.asarray(grid.size))
    assert back.grid.same_as(grid)
    torch.testing.assert_close(back.data, labels.data)


def test_crop_to_mask(oblique_grid, smooth_image):
    grid = oblique_grid(3, size=[20, 18, 16], spacing=[1.0, 2.0, 0.5], seed=9)
    image = smooth_image(grid)
    mask = torch.zeros(1, *grid.shape, dtype=torch.uint8)
    mask[0, 4:9, 5:11, 6:15] = 1  # index box x 6..14, y 5..10, z 4..8
    mask_image = Image(mask, grid, "mask.nii.gz")
    out = crop_to_mask(image, mask_image)
    assert out.grid.size == (9, 6, 5)
    np.testing.assert_allclose(out.origin, grid.index_to_world_points([6, 5, 4]), atol=1e-9)
    wide = crop_to_mask(image, mask_image, margin_mm=2.0)  # 2, 1, 4 voxels; z clipped at 0
    start, stop = mask_bounds(mask_image, grid, 2.0)
    np.testing.assert_array_equal(start, [4, 4, 0])
    np.testing.assert_array_equal(stop, [17, 12, 13])
    assert wide.grid.size == tuple((stop - start).tolist())
    # A mask on another (finer, shifted) grid is mapped through world space and gives a box
    # containing the same voxels.
    fine = resample(mask_image, grid.with_spacing(grid.spacing / 2), "nearest")
    s2, e2 = mask_bounds(fine, grid)
    assert np.all(s2 <= [6, 5, 4]) and np.all(e2 >= [15, 11, 9]) and np.all(e2 - s2 <= [11, 8, 7])
    with pytest.raises(MorphregError, match="mask.nii.gz"):
        crop_to_mask(image, mask_image.with_data(torch.zeros_like(mask)))


def test_crop_pad_errors(oblique_grid, smooth_image):
    image = smooth_image(oblique_grid(2))
    with pytest.raises(MorphregError, match="outside"):
        crop(image, [0, 0], [50, 5])
    with pytest.raises(MorphregError, match="whole"):
        crop(image, [0.5, 0], [5, 5])
    with pytest.raises(MorphregError, match=">= 0"):
        pad(image, [-1, 0], [0, 0])
    with pytest.raises(MorphregError, match="reference"):
        resample(image, "grid.nii.gz")


# ----- pyramids -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", DIMS)
def test_gaussian_pyramid_levels(dim, oblique_grid, smooth_image, label_image):
    grid = oblique_grid(dim, size=[32, 28, 24][:dim], spacing=[0.9, 1.1, 1.4][:dim], seed=11)
    image = smooth_image(grid, dtype=torch.float64)
    image = image.with_data(image.data + 0.1 * _noise_image(grid, 2).data)
    levels = gaussian_pyramid(image, [4, 2, 1], [2.0, 1.0, 0.0])
    assert [lv.grid.size for lv in levels] == [grid.downsample(f).size for f in (4, 2, 1)]
    assert levels[0].grid.numel < levels[1].grid.numel < levels[2].grid.numel
    torch.testing.assert_close(levels[2].data, image.data)  # factor 1, sigma 0: untouched
    for lv in levels:
        np.testing.assert_allclose(lv.grid.center(), grid.center(), atol=1e-9)
    # ITK style: recursive Gaussian with sigma in mm, then linear resampling onto the shrunk grid.
    smoothed = sitk.SmoothingRecursiveGaussian(to_sitk(image), [2.0] * dim)
    ref = to_sitk(Image(torch.zeros(levels[0].grid.shape), levels[0].grid))
    theirs = _arr(sitk.Resample(smoothed, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
    assert np.abs(levels[0].data[0].numpy() - theirs).max() < 5e-3 * np.ptp(image.data.numpy())
    # Per-axis shrink factors and sigmas, and label maps (never smoothed, integer kept).
    aniso = gaussian_pyramid(image, [[2, 1, 1][:dim]], [[1.0, 0.0, 0.0][:dim]])[0]
    assert aniso.grid.size == (grid.size[0] // 2,) + grid.size[1:]
    labels = gaussian_pyramid(label_image(grid), [2, 1], [1.0, 0.0])
    assert all(lv.data.dtype == torch.int16 for lv in labels)
    assert set(labels[0].labels()) == {1, 2, 3}


def test_pyramid_errors(oblique_grid, smooth_image):
    image = smooth_image(oblique_grid(2))
    with pytest.raises(MorphregError, match="smoothing sigmas"):
        gaussian_pyramid(image, [4, 2, 1], [1.0, 0.0])
    with pytest.raises(MorphregError, match=">= 1"):
        gaussian_pyramid(image, [0.5], [0.0])


@pytest.mark.realdata
def test_real_ct_head_smoothing_and_resampling(shared_data):
    path = shared_data / "ct_head_2d" / "fixed.mha"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    image = read_image(path, dtype=torch.float64)
    sitk_img = sitk.ReadImage(str(path), sitk.sitkFloat64)
    np.testing.assert_allclose(image.grid.index_to_world()[:2, 2], sitk_img.GetOrigin())
    ours = gaussian_smooth(image, 1.5, kind="discrete", truncate=6.0).data[0].numpy()
    f = sitk.DiscreteGaussianImageFilter()
    f.SetVariance([1.5**2] * 2)
    f.SetMaximumError(1e-9)
    f.SetMaximumKernelWidth(1000)
    theirs = _arr(f.Execute(sitk_img))
    assert np.abs(ours - theirs).max() < 1e-5 * np.abs(theirs).max()
    coarse = resample_to_spacing(image, 2.5, antialias=False)
    theirs = _sitk_resample(image, coarse.grid, sitk.sitkLinear)
    assert np.abs(coarse.data[0].numpy() - theirs).max() < 1e-6 * np.abs(theirs).max()


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_displacement_fields_deflate_only_when_it_pays(tmp_path, suffix):
    """A zero field deflates to almost nothing; a noisy float field is stored (deflate would barely shrink it
    at several times the writing time); both read back exactly, as float32 vectors."""
    import SimpleITK as sitk

    from morphreg.image.grid import Grid
    from morphreg.transforms.io import save_displacement_field

    grid = Grid((64, 64, 64), spacing=(1.0, 1.0, 1.0))
    rng = np.random.default_rng(0)
    fields = {"zero": torch.zeros(1, 3, *grid.shape), "noisy": torch.as_tensor(rng.normal(size=(1, 3, *grid.shape)), dtype=torch.float32)}
    sizes = {}
    for name, field in fields.items():
        path = save_displacement_field(field, grid, tmp_path / f"{name}{suffix}")
        sizes[name] = path.stat().st_size
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkVectorFloat32))
        np.testing.assert_array_equal(np.moveaxis(back, -1, 0), field[0].numpy())
    raw = 3 * 4 * 64 ** 3
    assert sizes["zero"] < 0.05 * raw and sizes["noisy"] > 0.99 * raw
