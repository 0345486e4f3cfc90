"""Warping: labels stay labels, fill values, differentiability, 2D/3D, and speed."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.transforms import (
    AffineTransform,
    BSplineTransform,
    DisplacementFieldTransform,
    RigidTransform,
    TranslationTransform,
    warp,
)

from conftest import _label_image, _oblique_grid, _smooth_image

FAST = settings(max_examples=15, deadline=None)


def rigid(dim: int, grid: Grid, angle: float, shift: float) -> RigidTransform:
    angles = [angle] if dim == 2 else [angle, -angle / 2, angle / 3]
    return RigidTransform(dim, angles, [shift] * dim, grid.center())


# ----- labels -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["nearest", "label"])
@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.uint8, torch.int64])
@FAST
@given(dim=st.sampled_from([2, 3]), seed=st.integers(0, 2**16), angle=st.floats(-0.3, 0.3), shift=st.floats(-1, 1))
def test_label_warp_keeps_labels_and_dtype(interpolation, dtype, dim, seed, angle, shift):
    grid = _oblique_grid(dim, [20, 18] if dim == 2 else [14, 13, 12], seed=seed)
    labels = _label_image(grid, n_labels=3, dtype=dtype)
    out = warp(labels, rigid(dim, grid, angle, shift), grid, interpolation)
    assert out.data.dtype == dtype and not out.data.is_floating_point()
    assert out.is_label
    before, after = set(torch.unique(labels.data).tolist()), set(torch.unique(out.data).tolist())
    assert after <= before | {0}  # nothing new, no blend of two labels
    assert after == before  # small motion of big nested boxes: every label survives


def test_label_mode_is_smoother_than_nearest_but_agrees_on_identity():
    grid = _oblique_grid(3, [14, 13, 12], seed=1)
    labels = _label_image(grid, 3)
    for mode in ("nearest", "label"):
        assert torch.equal(warp(labels, None, grid, mode).data, labels.data)
        assert torch.equal(warp(labels, TranslationTransform(3), grid, mode).data, labels.data)


def test_label_mode_with_many_labels_matches_nearest_for_integer_shifts():
    """A whole-voxel shift moves labels exactly, in both label modes."""
    grid = Grid([16, 12], [0, 0], [1.0, 1.0])
    data = torch.randint(0, 7, (1, *grid.shape), dtype=torch.int32)
    labels = Image(data, grid)
    t = TranslationTransform(2, translation=[2.0, 1.0])
    for mode in ("nearest", "label"):
        out = warp(labels, t, grid, mode, fill_value=0).data[0]
        assert torch.equal(out[:-1, :-2], data[0, 1:, 2:])
        assert (out[-1] == 0).all() and (out[:, -2:] == 0).all()


def test_labels_refuse_linear_and_bspline():
    grid = Grid([8, 8])
    labels = _label_image(grid)
    for mode in ("linear", "bspline"):
        with pytest.raises(MorphregError, match="label"):
            warp(labels, None, grid, mode)


def test_default_interpolation_is_nearest_for_labels():
    grid = _oblique_grid(2, [16, 14], seed=2)
    labels = _label_image(grid, 4)
    t = rigid(2, grid, 0.2, 0.4)
    assert torch.equal(warp(labels, t, grid).data, warp(labels, t, grid, "nearest").data)


def test_label_fill_value_is_the_background_label():
    grid = Grid([10, 10])
    labels = Image(torch.full((1, 10, 10), 3, dtype=torch.int16), grid)
    t = TranslationTransform(2, translation=[100.0, 0.0])
    for mode in ("nearest", "label"):
        out = warp(labels, t, grid, mode, fill_value=5)
        assert out.data.dtype == torch.int16 and (out.data == 5).all()


def test_unknown_interpolation_is_a_clear_error():
    grid = Grid([8, 8])
    with pytest.raises(MorphregError, match="cubic|unknown interpolation"):
        warp(_smooth_image(grid), None, grid, "cubic")


# ----- fill value and domain ---------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["nearest", "linear", "bspline"])
@pytest.mark.parametrize("dim", [2, 3])
def test_fill_value_outside(interpolation, dim):
    grid = _oblique_grid(dim, [12, 10] if dim == 2 else [10, 9, 8], seed=3)
    img = _smooth_image(grid)
    img = img.with_data(img.data + 1.0)  # strictly positive
    # Move by half the image along the first index axis: half the output falls outside.
    shift = torch.as_tensor(grid.direction[:, 0] * grid.spacing[0] * grid.size[0] / 2, dtype=torch.float32)
    t = TranslationTransform(dim, translation=shift.numpy())
    out = warp(img, t, grid, interpolation, fill_value=-7.0).data[0]
    idx = grid.world_to_index_points(t.points(grid.points()).detach().double().numpy())
    outside = torch.as_tensor(((idx < -0.5) | (idx > np.asarray(grid.size) - 0.5)).any(-1))
    assert outside.any() and (~outside).any()
    assert (out[outside] == -7.0).all()
    assert (out[~outside] > 0).all()


def test_identity_warp_returns_the_image():
    grid = _oblique_grid(3, [10, 9, 8], seed=4)
    img = _smooth_image(grid)
    for mode in ("nearest", "linear", "bspline"):
        out = warp(img, None, grid, mode)
        assert torch.allclose(out.data, img.data, atol=1e-5)
        assert out.grid.same_as(grid)


def test_warp_onto_other_reference_grid_and_channels():
    grid = _oblique_grid(3, [10, 9, 8], seed=5)
    img = _smooth_image(grid, channels=2)
    ref = Grid([6, 5, 4], grid.center() - 3, [1.5, 1.5, 1.5])
    out = warp(img, None, ref, "linear")
    assert out.data.shape == (2, 4, 5, 6) and out.grid.same_as(ref)
    # Each channel warped independently = warping all channels at once.
    one = warp(img.with_data(img.data[1:]), None, ref, "linear")
    assert torch.allclose(out.data[1:], one.data)


def test_dimension_mismatch_is_a_clear_error():
    img = _smooth_image(Grid([8, 8]))
    with pytest.raises(MorphregError, match="3D"):
        warp(img, TranslationTransform(3), img.grid)
    with pytest.raises(MorphregError, match="3D"):
        warp(img, None, Grid([4, 4, 4]))


def test_float64_images_are_warped_in_float64():
    grid = Grid([8, 8])
    img = _smooth_image(grid, dtype=torch.float64)
    assert warp(img, TranslationTransform(2, translation=[0.3, 0.1]), grid).data.dtype == torch.float64


# ----- differentiability --------------------------------------------------------------------------------
def _tiny(dim: int) -> tuple[Grid, Image]:
    grid = _oblique_grid(dim, [6, 5] if dim == 2 else [5, 4, 4], seed=7)
    return grid, _smooth_image(grid, dtype=torch.float64)


def _affine64(dim: int, grid: Grid) -> AffineTransform:
    rng = np.random.default_rng(0)
    t = AffineTransform(dim, np.eye(dim) + rng.normal(0, 0.05, (dim, dim)), rng.normal(0, 0.3, dim), grid.center())
    return t.double()


@pytest.mark.parametrize("interpolation", ["linear", "bspline"])
@pytest.mark.parametrize("dim", [2, 3])
def test_gradcheck_wrt_image(interpolation, dim):
    grid, img = _tiny(dim)
    t = _affine64(dim, grid)
    data = img.data.clone().requires_grad_(True)
    f = lambda d: warp(img.with_data(d), t, grid, interpolation).data  # noqa: E731
    assert torch.autograd.gradcheck(f, (data,), eps=1e-6, atol=1e-6, fast_mode=True)


class _Warp(torch.nn.Module):
    """warp() as a module, so that torch.func.functional_call can feed the transform's parameters."""

    def __init__(self, transform, image: Image, grid: Grid, interpolation: str):
        super().__init__()
        self.transform, self.image, self.grid, self.interpolation = transform, image, grid, interpolation

    def forward(self) -> torch.Tensor:
        return warp(self.image, self.transform, self.grid, self.interpolation).data


@pytest.mark.parametrize("interpolation", ["linear", "bspline"])
@pytest.mark.parametrize("dim", [2, 3])
def test_gradcheck_wrt_affine_parameters(interpolation, dim):
    grid, img = _tiny(dim)
    module = _Warp(_affine64(dim, grid), img, grid, interpolation)
    f = lambda m, t: torch.func.functional_call(module, {"transform.matrix_": m, "transform.translation": t}, ())  # noqa: E731
    inputs = tuple(p.detach().clone().requires_grad_(True) for p in (module.transform.matrix_, module.transform.translation))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("interpolation", ["linear", "bspline"])
@pytest.mark.parametrize("dim", [2, 3])
def test_gradcheck_wrt_bspline_coefficients(interpolation, dim):
    grid, img = _tiny(dim)
    bs = BSplineTransform.for_grid(grid, 2.5 * grid.spacing.max()).double()
    with torch.no_grad():
        bs.coefficients.normal_(0, 0.3)
    module = _Warp(bs, img, grid, interpolation)
    f = lambda c: torch.func.functional_call(module, {"transform.coefficients": c}, ())  # noqa: E731
    coef = bs.coefficients.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (coef,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("dim", [2, 3])
def test_gradcheck_wrt_displacement_field(dim):
    grid, img = _tiny(dim)
    df = DisplacementFieldTransform(torch.randn(1, dim, *grid.shape, dtype=torch.float64) * 0.3, grid).double()
    module = _Warp(df, img, grid, "linear")
    f = lambda u: torch.func.functional_call(module, {"transform.field": u}, ())  # noqa: E731
    assert torch.autograd.gradcheck(f, (df.field.detach().clone().requires_grad_(True),), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("dim", [2, 3])
def test_warp_backpropagates_to_every_parameter(dim):
    grid = _oblique_grid(dim, [10, 9] if dim == 2 else [8, 7, 6], seed=8)
    img = _smooth_image(grid)
    for t in (AffineTransform(dim, translation=[0.2] * dim, center=grid.center()),
              BSplineTransform.for_grid(grid, 3.0),
              DisplacementFieldTransform(torch.zeros(1, dim, *grid.shape) + 0.1, grid)):
        for mode in ("linear", "bspline"):
            t.zero_grad()
            warp(img, t, grid, mode).data.square().sum().backward()
            grads = [p.grad for p in t.parameters()]
            assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
            assert any(g.abs().sum() > 0 for g in grads)


# ----- speed --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dense_warp_speed_160x192x224():
    """Linear warp of a 160x192x224 float32 volume through a dense field on its grid, 2 threads, against torch's
    own trilinear ``grid_sample`` of the same volume measured beside it: at most 4x (mapping the points costs
    about as much as sampling them; measured 2.1-3.0x on a loaded host). A ratio, because absolute times on a
    shared host vary 1.0-2.5 s run to run; the 10 s bound only catches a gross regression."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grid = Grid([160, 192, 224], [-80.0, -96.0, -112.0], [1.0, 1.0, 1.0])
        img = Image(torch.rand(1, *grid.shape), grid)
        t = DisplacementFieldTransform(torch.randn(1, 3, *grid.shape) * 2.0, grid)
        near_identity = torch.nn.functional.affine_grid(torch.eye(3, 4)[None], [1, 1, *grid.shape], align_corners=True)
        near_identity += torch.randn_like(near_identity) * 0.01
        best_warp = best_sample = float("inf")
        with torch.no_grad():
            for _ in range(3):  # interleaved, so both see the same load
                start = time.perf_counter()
                out = warp(img, t, grid, "linear")
                best_warp = min(best_warp, time.perf_counter() - start)
                start = time.perf_counter()
                torch.nn.functional.grid_sample(img.data[None], near_identity, align_corners=True)
                best_sample = min(best_sample, time.perf_counter() - start)
        assert out.data.shape == img.data.shape and torch.isfinite(out.data).all()
        assert best_warp < 4.0 * best_sample, f"dense warp {best_warp:.2f} s, grid_sample {best_sample:.2f} s"
        assert best_warp < 10.0, f"dense warp took {best_warp:.2f} s (best of 3)"
    finally:
        torch.set_num_threads(threads)
