"""Property tests of every transform model: inverses, refinement, Jacobians, 2D and 3D."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from morphreg.image.grid import Grid
from morphreg.transforms import (
    AdditiveTransform,
    AffineTransform,
    BSplineTransform,
    CompositeTransform,
    DisplacementFieldTransform,
    RigidTransform,
    SimilarityTransform,
    StationaryVelocityFieldTransform,
    ThinPlateSplineTransform,
    TranslationTransform,
)
from morphreg.transforms.linear import LinearTransform

from conftest import _oblique_grid

FAST = settings(max_examples=15, deadline=None)
dims = st.sampled_from([2, 3])
seeds = st.integers(0, 2**16)


# ----- random transforms ------------------------------------------------------------------------------
def random_linear(kind: str, dim: int, rng: np.random.Generator) -> LinearTransform:
    t = rng.normal(0, 5, dim)
    c = rng.normal(0, 10, dim)
    n_rot = 1 if dim == 2 else 3
    if kind == "translation":
        return TranslationTransform(dim, translation=t)
    if kind in ("euler", "versor"):
        return RigidTransform(dim, rng.uniform(-0.8, 0.8, n_rot), t, c, rotation=kind)
    if kind == "similarity":
        return SimilarityTransform(dim, rng.uniform(-0.8, 0.8, n_rot), t, c, scale=rng.uniform(0.7, 1.4))
    if kind == "affine":
        return AffineTransform(dim, np.eye(dim) + rng.normal(0, 0.15, (dim, dim)), t, c)
    if kind == "decomposed":
        return AffineTransform(dim, None, t, c, "decomposed", angles=rng.uniform(-0.8, 0.8, n_rot),
                               log_scales=rng.normal(0, 0.2, dim), shears=rng.normal(0, 0.2, n_rot))
    raise ValueError(kind)


def small_grid(dim: int, seed: int) -> Grid:
    return _oblique_grid(dim, [16, 14] if dim == 2 else [12, 11, 10], seed=seed)


def random_bspline(grid: Grid, rng: np.random.Generator, amplitude: float = 0.4) -> BSplineTransform:
    """Smooth, clearly invertible B-spline: control spacing ~4 voxels, displacements << spacing."""
    bs = BSplineTransform.for_grid(grid, 4.0 * grid.spacing.max())
    with torch.no_grad():
        bs.coefficients.copy_(torch.as_tensor(rng.normal(0, amplitude, bs.coefficients.shape)))
    return bs


def interior_points(grid: Grid, margin: int = 2) -> torch.Tensor:
    return grid.crop([margin] * grid.dim, [n - margin for n in grid.size]).points().reshape(-1, grid.dim)


def off_grid_points(grid: Grid, rng: np.random.Generator, n: int = 200, margin: float = 2.0) -> torch.Tensor:
    idx = rng.uniform(margin, np.asarray(grid.size) - 1 - margin, (n, grid.dim))
    return torch.as_tensor(grid.index_to_world_points(idx), dtype=torch.float32)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm(dim=-1).max())


# ----- inverses: compose(T, T.inverse()) ~ identity ---------------------------------------------------
@pytest.mark.parametrize("kind", ["translation", "euler", "versor", "similarity", "affine", "decomposed"])
@FAST
@given(dim=dims, seed=seeds)
def test_linear_inverse_is_closed_form(kind, dim, seed):
    if kind == "versor" and dim == 2:
        kind = "euler"  # versors are 3D only; 2D rigid has one angle
    rng = np.random.default_rng(seed)
    t = random_linear(kind, dim, rng)
    inv = t.inverse()
    assert isinstance(inv, LinearTransform)
    x = torch.as_tensor(rng.normal(0, 50, (64, dim)), dtype=torch.float32)
    for both in (t.compose(inv), inv.compose(t), CompositeTransform([t, inv])):
        assert max_error(both.points(x), x) < 1e-3  # float32 parameters, points ~50 mm
    # The composed homogeneous matrix is the identity (closed form, not an approximation).
    m = t.compose(inv).homogeneous().double()
    assert torch.allclose(m, torch.eye(dim + 1, dtype=torch.float64), atol=1e-5)


@FAST
@given(dim=dims, seed=seeds)
def test_bspline_inverse_fixed_point_with_residual(dim, seed):
    rng = np.random.default_rng(seed)
    grid = small_grid(dim, seed)
    bs = random_bspline(grid, rng)
    inv = bs.inverse(tolerance=1e-3)
    res = inv.inverse_residual
    assert set(res) == {"max_mm", "mean_mm", "iterations"}
    assert res["max_mm"] < 1e-3 and res["iterations"] >= 1
    y = grid.points().reshape(-1, dim)
    # At the inverse's own nodes T(T^-1(y)) = y up to the reported residual.
    err = (bs.compose(inv).points(y) - y).norm(dim=-1)
    assert float(err.max()) <= res["max_mm"] + 1e-5
    assert abs(float(err.mean()) - res["mean_mm"]) < 1e-5
    # Off the nodes the inverse is linearly interpolated: small against the displacement itself.
    x = off_grid_points(grid, rng)
    disp = max_error(bs.points(x), x)
    assert max_error(inv.compose(bs).points(x), x) < 0.2 * disp + 1e-3


def test_inverse_residual_is_of_returned_field():
    """With too few iterations the reported residual must describe the field returned, not an earlier one."""
    rng = np.random.default_rng(3)
    grid = small_grid(3, 3)
    bs = random_bspline(grid, rng, amplitude=1.0)
    for iterations in (1, 2, 3):
        inv = bs.inverse(iterations=iterations, tolerance=1e-9)
        y = grid.points().reshape(-1, 3)
        err = (bs.points(inv.points(y)) - y).norm(dim=-1)
        assert inv.inverse_residual["iterations"] == iterations
        assert abs(float(err.max()) - inv.inverse_residual["max_mm"]) < 1e-5


def test_inverse_needs_grid_for_gridless_models():
    rng = np.random.default_rng(0)
    src = rng.normal(0, 10, (6, 3))
    tps = ThinPlateSplineTransform(src, src + 1.0)
    with pytest.raises(ValueError, match="grid"):
        tps.inverse()


@FAST
@given(dim=dims, seed=seeds)
def test_displacement_field_inverse(dim, seed):
    rng = np.random.default_rng(seed)
    grid = small_grid(dim, seed)
    # A field that vanishes on the border: outside its grid the displacement is zero, so a field
    # that is not zero there makes T jump at the domain edge and no inverse exists there.
    window = torch.ones(grid.shape)
    for axis, n in enumerate(grid.shape):
        shape = [1] * dim
        shape[axis] = n
        window = window * torch.sin(torch.linspace(0, np.pi, n)).reshape(shape)
    field = random_bspline(grid, rng).displacement(grid).detach() * window
    df = DisplacementFieldTransform(field, grid)
    inv = df.inverse()
    assert inv.inverse_residual["max_mm"] < 1e-3
    assert inv.domain().same_as(grid)
    y = grid.points().reshape(-1, dim)
    assert max_error(df.compose(inv).points(y), y) <= inv.inverse_residual["max_mm"] + 1e-5
    x = off_grid_points(grid, rng)
    assert max_error(inv.compose(df).points(x), x) < 0.25 * float(field.abs().max()) * dim**0.5 + 1e-3


@FAST
@given(dim=dims, seed=seeds, steps=st.sampled_from([4, 7]))
def test_svf_inverse_is_exact_negation(dim, seed, steps):
    rng = np.random.default_rng(seed)
    grid = small_grid(dim, seed)
    v = random_bspline(grid, rng).displacement(grid).detach()
    svf = StationaryVelocityFieldTransform(v, grid, steps=steps)
    inv = svf.inverse()
    assert isinstance(inv, StationaryVelocityFieldTransform) and inv.steps == steps
    assert torch.equal(inv.velocity, -svf.velocity)
    x = interior_points(grid)
    vmax = float(v.norm(dim=1).max())
    for both in (svf.compose(inv), inv.compose(svf)):
        err = (both.points(x) - x).norm(dim=-1)
        # Scaling and squaring on a grid with linear interpolation: small against |v|, not exact.
        assert float(err.max()) < 0.15 * vmax + 1e-3
        assert float(err.mean()) < 0.04 * vmax + 1e-4
    # exp(v) really moves points (the test above is not trivially true).
    assert max_error(svf.points(x), x) > 0.3 * vmax


def test_svf_scaling_and_squaring_matches_small_step_integration():
    """exp(v) of a constant-rotation-like field agrees with many small Euler steps."""
    grid = Grid([24, 24], [-12, -12], [1.0, 1.0])
    pts = grid.points(dtype=torch.float64)
    v = torch.stack([-pts[..., 1], pts[..., 0]], 0)[None] * 0.05  # rotation by 0.05 rad per unit time
    svf = StationaryVelocityFieldTransform(v, grid, steps=8)
    x = interior_points(grid, 6).double()
    # exact flow of a rotation field: rotation by 0.05 rad
    c, s = np.cos(0.05), np.sin(0.05)
    expected = x @ torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
    assert max_error(svf.points(x.float()).double(), expected) < 1e-3


@FAST
@given(dim=dims, seed=seeds, smoothing=st.sampled_from([0.0, 0.5]))
def test_tps_interpolates_and_inverts(dim, seed, smoothing):
    rng = np.random.default_rng(seed)
    grid = small_grid(dim, seed)
    src = grid.index_to_world_points(rng.uniform(1, np.asarray(grid.size) - 2, (8, dim)))
    # Displacements small against the landmark spacing: otherwise the spline folds and has no inverse.
    separation = min(np.linalg.norm(a - b) for i, a in enumerate(src) for b in src[i + 1:])
    dst = src + rng.normal(0, min(0.5, 0.1 * separation), src.shape)
    tps = ThinPlateSplineTransform(src, dst, smoothing, domain=grid)
    mapped = tps.points(torch.as_tensor(src, dtype=torch.float32)).double().numpy()
    if smoothing == 0:
        assert np.abs(mapped - dst).max() < 1e-4  # interpolates the landmarks
    inv = tps.inverse()
    assert inv.inverse_residual["max_mm"] < 1e-3
    y = grid.points().reshape(-1, dim)
    assert max_error(tps.compose(inv).points(y), y) <= inv.inverse_residual["max_mm"] + 1e-5


def test_tps_smoothing_approaches_affine_fit():
    rng = np.random.default_rng(1)
    src = rng.uniform(-20, 20, (12, 3))
    a = np.eye(3) + rng.normal(0, 0.1, (3, 3))
    dst = src @ a.T + 2.0 + rng.normal(0, 0.5, src.shape)  # affine plus noise
    lstsq = np.linalg.lstsq(np.c_[src, np.ones(12)], dst, rcond=None)[0]
    x = torch.as_tensor(rng.uniform(-20, 20, (50, 3)), dtype=torch.float32)
    affine_fit = x.double().numpy() @ lstsq[:3] + lstsq[3]
    errs = [np.abs(ThinPlateSplineTransform(src, dst, lam).points(x).double().numpy() - affine_fit).max()
            for lam in (0.0, 1e2, 1e6)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-2


@FAST
@given(dim=dims, seed=seeds)
def test_composite_inverse_local_after_global(dim, seed):
    rng = np.random.default_rng(seed)
    grid = small_grid(dim, seed)
    affine = random_linear("affine", dim, rng)
    # Keep the affine small so that the B-spline sees points inside its domain.
    with torch.no_grad():
        affine.matrix_.copy_(torch.eye(dim) + 0.02 * torch.randn(dim, dim))
        affine.translation.mul_(0.05)
        affine.center.copy_(torch.as_tensor(grid.center()))
    bs = random_bspline(grid, rng)
    comp = CompositeTransform([affine, bs])  # x -> affine(bs(x))
    x = interior_points(grid, 3)
    expected = affine.points(bs.points(x))
    assert max_error(comp.points(x), expected) < 1e-5
    assert max_error(comp.map_grid(grid)[0].reshape(-1, dim), affine.points(bs.points(grid.points().reshape(-1, dim)))) < 1e-4
    inv = comp.inverse()
    assert isinstance(inv, CompositeTransform) and isinstance(inv.transforms[1], LinearTransform)
    assert inv.transforms[0].inverse_residual["max_mm"] < 1e-3
    disp = max_error(comp.points(x), x)
    assert max_error(inv.points(comp.points(x)), x) < 0.2 * disp + 1e-3
    y = comp.points(x)
    assert max_error(comp.points(inv.points(y)), y) < 0.2 * disp + 1e-3


@FAST
@given(dim=dims, seed=seeds)
def test_additive_transform_adds_displacements_and_inverts(dim, seed):
    rng = np.random.default_rng(seed)
    grid = small_grid(dim, seed)
    lin = TranslationTransform(dim, translation=rng.normal(0, 0.3, dim))
    bs = random_bspline(grid, rng)
    add = AdditiveTransform([lin, bs])
    x = off_grid_points(grid, rng)
    assert max_error(add.points(x), x + (lin.points(x) - x) + (bs.points(x) - x)) < 1e-5
    g = grid.points().reshape(-1, dim)
    assert max_error(add.map_grid(grid)[0].reshape(-1, dim), add.points(g)) < 1e-4
    inv = add.inverse()  # fixed point on the B-spline's domain
    assert inv.inverse_residual["max_mm"] < 1e-3
    assert max_error(add.compose(inv).points(g), g) <= inv.inverse_residual["max_mm"] + 1e-5


# ----- B-spline refinement ----------------------------------------------------------------------------
@FAST
@given(dim=dims, seed=seeds, oblique=st.booleans())
def test_bspline_refine_preserves_deformation(dim, seed, oblique):
    rng = np.random.default_rng(seed)
    grid = _oblique_grid(dim, [16, 14] if dim == 2 else [12, 11, 10], seed=seed, oblique=oblique)
    bs = random_bspline(grid, rng, amplitude=2.0)
    fine = bs.refine()
    assert np.allclose(fine.control_grid.spacing, bs.control_grid.spacing / 2)
    assert fine.domain().same_as(grid)
    a = bs.map_grid(grid)
    b = fine.map_grid(grid)
    assert max_error(a, b) < 1e-4
    x = off_grid_points(grid, rng, margin=-1.0)  # also a little outside the domain
    assert max_error(bs.points(x), fine.points(x)) < 1e-4
    # Twice refined is still the same map.
    assert max_error(fine.refine().map_grid(grid), a) < 1e-4


@FAST
@given(dim=dims, seed=seeds)
def test_bspline_map_grid_fast_path_matches_points(dim, seed):
    """The separable axis-aligned evaluation equals the generic per-point evaluation."""
    rng = np.random.default_rng(seed)
    grid = _oblique_grid(dim, [16, 14] if dim == 2 else [12, 11, 10], seed=seed)
    bs = random_bspline(grid, rng, amplitude=2.0)
    other = grid.crop([1] * dim, [n - 1 for n in grid.size]).downsample(1.5)  # same direction, other lattice
    fast = bs.map_grid(other)
    slow = bs.points(other.points())
    assert max_error(fast[0], slow) < 1e-4


def test_bspline_has_zero_displacement_far_outside():
    grid = small_grid(3, 0)
    bs = random_bspline(grid, np.random.default_rng(0), amplitude=1.0)
    far = torch.as_tensor(grid.center() + 1e3, dtype=torch.float32)[None]
    assert torch.equal(bs.points(far), far)


# ----- Jacobians --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["euler", "similarity", "affine", "decomposed"])
@FAST
@given(dim=dims, seed=seeds)
def test_affine_jacobian_determinant_is_det_a(kind, dim, seed):
    rng = np.random.default_rng(seed)
    grid = small_grid(dim, seed)
    t = random_linear(kind, dim, rng)
    det_a = float(torch.linalg.det(t.matrix().double()))
    assert torch.allclose(t.jacobian_determinant(grid).double(), torch.tensor(det_a, dtype=torch.float64), rtol=1e-5)
    # The generic path (finite differences of the mapped grid, oblique anisotropic spacing) agrees:
    # differences of an affine map are exact.
    generic = CompositeTransform([t])
    j = generic.jacobian(grid, dtype=torch.float64)
    assert j.shape == (1, *grid.shape, dim, dim)
    assert torch.allclose(j, t.matrix().double().expand_as(j), atol=1e-5)
    det = generic.jacobian_determinant(grid, dtype=torch.float64)
    assert torch.allclose(det, torch.full_like(det, det_a), rtol=1e-5)
    # ... and so does a displacement field holding the same map on the grid.
    field = DisplacementFieldTransform(t.displacement(grid, dtype=torch.float64), grid)
    det_field = field.jacobian_determinant(grid, dtype=torch.float64)
    assert torch.allclose(det_field, torch.full_like(det_field, det_a), rtol=1e-4)


@FAST
@given(dim=dims, seed=seeds)
def test_bspline_jacobian_matches_autograd(dim, seed):
    """Finite-difference Jacobian on a fine grid ~ the analytic (autograd) Jacobian of T."""
    rng = np.random.default_rng(seed)
    coarse = small_grid(dim, seed)
    bs = random_bspline(coarse, rng, amplitude=1.0).double()
    fine = coarse.with_spacing(coarse.spacing / 4).crop([8] * dim, [12] * dim)
    # Interior points only: there the differences are central (second order); at the edge one-sided.
    inner = (0,) + (slice(1, -1),) * dim
    j_fd = bs.jacobian(fine, dtype=torch.float64)[inner].reshape(-1, dim, dim)
    x = fine.points(dtype=torch.float64)[inner[1:]].reshape(-1, dim)
    j_ad = torch.func.vmap(torch.func.jacrev(lambda p: bs.points(p[None])[0]))(x)
    scale = float(j_ad.abs().max())
    assert float((j_fd - j_ad).abs().max()) < 0.02 * scale


def test_jacobian_determinant_detects_folding():
    grid = Grid([20, 20], [0, 0], [1, 1])
    pts = grid.points(dtype=torch.float64)
    u = torch.zeros(1, 2, *grid.shape, dtype=torch.float64)
    u[0, 0] = -2.0 * pts[..., 0] * torch.exp(-((pts - 10) ** 2).sum(-1) / 8)  # x -> x - 2x g: folds near x=10
    det = DisplacementFieldTransform(u, grid).jacobian_determinant(grid, dtype=torch.float64)
    assert (det <= 0).any() and (det > 0).any()


# ----- parameters are tensors for optimisation --------------------------------------------------------
@pytest.mark.parametrize("kind", ["translation", "euler", "versor", "similarity", "affine", "decomposed"])
def test_linear_parameters_receive_gradients(kind):
    rng = np.random.default_rng(0)
    t = random_linear(kind, 3, rng)
    x = torch.as_tensor(rng.normal(0, 20, (10, 3)), dtype=torch.float32)
    t.points(x).square().sum().backward()
    params = dict(t.named_parameters())
    assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())


def test_versor_rotation_is_gradient_safe_at_zero():
    t = RigidTransform(3, [0.0, 0.0, 0.0], rotation="versor")
    t.points(torch.ones(4, 3)).sum().backward()
    assert torch.isfinite(t.angles.grad).all()


def test_euler_convention_rz_ry_rx():
    a, b, g = 0.3, -0.2, 0.5
    t = RigidTransform(3, [a, b, g])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(g), -np.sin(g), 0], [np.sin(g), np.cos(g), 0], [0, 0, 1]])
    assert np.allclose(t.matrix().detach().double().numpy(), rz @ ry @ rx, atol=1e-6)


def test_rotation_about_center_keeps_center_fixed():
    c = np.array([10.0, -5.0, 3.0])
    t = RigidTransform(3, [0.4, 0.1, -0.3], center=c, rotation="versor")
    out = t.points(torch.as_tensor(c, dtype=torch.float32)[None])
    assert np.allclose(out[0].detach().numpy(), c, atol=1e-5)
