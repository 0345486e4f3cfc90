"""Agreement with SimpleITK (world geometry, warping) and transform files in and out (ITK, ANTs, elastix)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.io import read_image, to_sitk
from morphreg.transforms.itk import from_sitk_transform
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
    Transform,
    TranslationTransform,
    load_transform,
    warp,
)

from conftest import _oblique_grid, _smooth_image, rotation_matrix

FAST = settings(max_examples=20, deadline=None)
SITK_INTERP = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


# ----- helpers ------------------------------------------------------------------------------------------
def sitk_points(tx: sitk.Transform, pts: np.ndarray) -> np.ndarray:
    return np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in pts])


def ours(t: Transform, pts: np.ndarray) -> np.ndarray:
    return t.points(torch.as_tensor(pts, dtype=torch.float64)).detach().double().numpy()


def random_bspline(grid: Grid, rng: np.random.Generator, spacing_voxels: float = 4.0, amplitude: float = 0.5) -> BSplineTransform:
    bs = BSplineTransform.for_grid(grid, spacing_voxels * grid.spacing.max())
    with torch.no_grad():
        bs.coefficients.copy_(torch.as_tensor(rng.normal(0, amplitude, bs.coefficients.shape)))
    return bs


def every_model(dim: int, grid: Grid, rng: np.random.Generator) -> dict[str, Transform]:
    """One random instance of every transform type on ``grid``."""
    n_rot = 1 if dim == 2 else 3
    c, t = grid.center(), rng.normal(0, 2, dim)
    bs = random_bspline(grid, rng)
    src = grid.index_to_world_points(rng.uniform(1, np.asarray(grid.size) - 2, (6, dim)))
    models = {
        "translation": TranslationTransform(dim, translation=t),
        "rigid": RigidTransform(dim, rng.uniform(-0.5, 0.5, n_rot), t, c),
        "similarity": SimilarityTransform(dim, rng.uniform(-0.5, 0.5, n_rot), t, c, scale=1.1),
        "affine": AffineTransform(dim, np.eye(dim) + rng.normal(0, 0.1, (dim, dim)), t, c),
        "decomposed": AffineTransform(dim, None, t, c, "decomposed", rng.uniform(-0.5, 0.5, n_rot),
                                      rng.normal(0, 0.1, dim), rng.normal(0, 0.1, n_rot)),
        "bspline": bs,
        "displacement": DisplacementFieldTransform(bs.displacement(grid).detach(), grid),
        "svf": StationaryVelocityFieldTransform(bs.displacement(grid).detach(), grid, steps=5),
        "tps": ThinPlateSplineTransform(src, src + rng.normal(0, 0.5, src.shape), 0.1, domain=grid),
        "composite": CompositeTransform([AffineTransform(dim, np.eye(dim) + rng.normal(0, 0.02, (dim, dim)), t * 0.1, c), bs]),
        "additive": AdditiveTransform([TranslationTransform(dim, translation=t * 0.1), bs]),
    }
    if dim == 3:
        models["versor"] = RigidTransform(3, rng.uniform(-0.5, 0.5, 3), t, c, rotation="versor")
    return models


# ----- index <-> world ------------------------------------------------------------------------------------
@FAST
@given(dim=st.sampled_from([2, 3]), seed=st.integers(0, 2**16))
def test_index_world_matches_sitk_on_oblique_anisotropic_grids(dim, seed):
    rng = np.random.default_rng(seed)
    grid = Grid(rng.integers(2, 9, dim).tolist(), rng.uniform(-100, 100, dim), rng.uniform(0.3, 3.0, dim),
                rotation_matrix(dim, rng.uniform(-np.pi, np.pi, 3)) @ np.diag(rng.choice([-1.0, 1.0], dim)))
    img = sitk.Image(list(grid.size), sitk.sitkFloat32)
    img.SetOrigin(grid.origin.tolist())
    img.SetSpacing(grid.spacing.tolist())
    img.SetDirection(grid.direction.ravel().tolist())
    idx = rng.uniform(-2, 10, (10, dim))
    ref = np.array([img.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx])
    assert np.allclose(grid.index_to_world_points(idx), ref, atol=1e-9)
    assert np.allclose(grid.world_to_index_points(ref), idx, atol=1e-9)
    assert np.allclose(grid.world_to_index() @ grid.index_to_world(), np.eye(dim + 1), atol=1e-12)
    # Every grid point, in tensor order (last axis = x index).
    pts = grid.points(dtype=torch.float64).numpy()
    for flat in rng.integers(0, grid.numel, 5):
        tensor_idx = np.unravel_index(flat, grid.shape)
        itk_idx = [int(v) for v in reversed(tensor_idx)]
        assert np.allclose(pts[tensor_idx], img.TransformIndexToPhysicalPoint(itk_idx), atol=1e-9)
    # Our image written to SimpleITK keeps the geometry.
    back = to_sitk(Image(torch.zeros(1, *grid.shape), grid))
    assert np.allclose(back.GetDirection(), img.GetDirection()) and np.allclose(back.GetOrigin(), img.GetOrigin())


# ----- warping agrees with SimpleITK.Resample ---------------------------------------------------------------
def sitk_resample(image: Image, ref: Grid, tx: sitk.Transform, interpolation: str) -> np.ndarray:
    moving = to_sitk(image)
    reference = to_sitk(Image(torch.zeros(1, *ref.shape), ref))
    out = sitk.Resample(moving, reference, tx, SITK_INTERP[interpolation], 0.0, sitk.sitkFloat64)
    return sitk.GetArrayFromImage(out)


def compare_with_sitk(image: Image, ref: Grid, t: Transform, interpolation: str) -> float:
    """Max error relative to the image range of our warp vs SimpleITK.Resample with t.to_sitk()."""
    got = warp(image, t, ref, interpolation).data[0].detach().double().numpy()
    expected = sitk_resample(image, ref, t.to_sitk(ref), interpolation)
    scale = float(np.abs(expected).max())
    if interpolation == "nearest":
        # A point exactly half-way between voxels may round either way in float32 vs float64.
        return float(np.mean(np.abs(got - expected) > 1e-6 * scale))
    return float(np.abs(got - expected).max() / scale)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("interpolation", ["linear", "nearest", "bspline"])
def test_synthetic_warp_matches_sitk_resample(dim, interpolation):
    rng = np.random.default_rng(dim)
    moving_grid = _oblique_grid(dim, [24, 20] if dim == 2 else [14, 13, 12], seed=11)
    image = _smooth_image(moving_grid, seed=1)
    ref = _oblique_grid(dim, [20, 18] if dim == 2 else [12, 11, 10], seed=12)
    ref = Grid(ref.size, moving_grid.center() - ref.direction @ (ref.extent / 2), ref.spacing, ref.direction)
    for name, t in every_model(dim, ref, rng).items():
        err = compare_with_sitk(image, ref, t, interpolation)
        assert err < 1e-3, f"{name}: {err}"


def _oblique(image: Image, angles, stretch) -> Image:
    """Same voxels with a rotated direction and anisotropic spacing (a non-identity geometry)."""
    g = image.grid
    d = rotation_matrix(g.dim, angles) @ g.direction
    return Image(image.data, Grid(g.size, g.origin, g.spacing * np.asarray(stretch), d), image.name)


@pytest.mark.realdata
@pytest.mark.parametrize("case", ["prostate_mr_3d", "ct_head_2d"])
def test_real_image_warp_matches_sitk_resample(shared_data, case):
    if case == "prostate_mr_3d":
        image = read_image(shared_data / "prostate_mr_trus" / "moving_images" / "obs000.nii.gz", dtype=torch.float32)
        image = _oblique(image, [0.2, -0.1, 0.3], [1.0, 1.2, 0.8])
        fixed = read_image(shared_data / "prostate_mr_trus" / "fixed_images" / "obs000.nii.gz", dtype=torch.float32)
        refs = [image.grid, fixed.grid]
    else:
        image = read_image(shared_data / "ct_head_2d" / "moving.mha", dtype=torch.float32)
        image = _oblique(image, [0.25], [1.0, 1.3])
        refs = [image.grid, image.grid.downsample(2)]
    assert not np.allclose(image.grid.direction, np.eye(image.dim))
    rng = np.random.default_rng(0)
    dim = image.dim
    affine = AffineTransform(dim, np.eye(dim) + rng.normal(0, 0.05, (dim, dim)), rng.normal(0, 3, dim), image.grid.center())
    for ref in refs:
        # A B-spline lives on the grid it is evaluated on (ITK zeroes it outside its valid region).
        bspline = BSplineTransform.for_grid(ref, 20.0)
        with torch.no_grad():
            bspline.coefficients.copy_(torch.as_tensor(rng.normal(0, 3, bspline.coefficients.shape)))
        cases = [("affine", affine, "linear"), ("affine", affine, "nearest"), ("bspline", bspline, "linear"),
                 ("affine o bspline", CompositeTransform([affine, bspline]), "linear"),
                 ("affine o bspline", CompositeTransform([affine, bspline]), "bspline")]
        for name, t, interpolation in cases:
            err = compare_with_sitk(image, ref, t, interpolation)
            assert err < 1e-3, f"{case} {name} {interpolation} on {ref}: {err}"


# ----- save / load round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 3])
def test_pt_round_trip_is_exact_for_every_model(tmp_path, dim):
    grid = _oblique_grid(dim, seed=21)
    rng = np.random.default_rng(1)
    x = torch.as_tensor(grid.index_to_world_points(rng.uniform(0, np.asarray(grid.size) - 1, (50, dim))), dtype=torch.float32)
    for name, t in every_model(dim, grid, rng).items():
        path = t.save(tmp_path / f"{name}.pt")
        back = Transform.load(path)
        assert type(back) is type(t), name
        assert torch.equal(back.points(x), t.points(x)), name
        for (k, a), (_, b) in zip(sorted(t.state_dict().items()), sorted(back.state_dict().items())):
            assert torch.equal(a, b), f"{name}.{k}"
        if t.domain() is not None:
            assert back.domain().same_as(t.domain(), tol=0)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".h5"])
def test_itk_file_round_trip_and_sitk_reads_our_files(tmp_path, dim, suffix):
    grid = _oblique_grid(dim, seed=22)
    rng = np.random.default_rng(2)
    inner = grid.index_to_world_points(rng.uniform(1, np.asarray(grid.size) - 2, (40, dim)))
    for name, t in every_model(dim, grid, rng).items():
        path = t.save(tmp_path / f"{name}{suffix}")
        # Models without an ITK counterpart are written as their displacement on their domain.
        written = DisplacementFieldTransform(t.displacement(grid, dtype=torch.float64), grid) if name in ("tps", "additive") else t
        expected = ours(written, inner)
        # SimpleITK reads our file and maps points like we do.
        tx = sitk.ReadTransform(str(path))
        tol = 1e-4
        assert np.abs(sitk_points(tx, inner) - expected).max() < tol, name
        # And we read it back.
        back = load_transform(path)
        assert back.dim == dim
        assert np.abs(ours(back, inner) - expected).max() < tol, name
        if name == "svf":
            assert isinstance(back, DisplacementFieldTransform)  # written as its exp(v)


@pytest.mark.parametrize("dim", [2, 3])
def test_displacement_image_round_trip(tmp_path, dim):
    grid = _oblique_grid(dim, seed=23)
    rng = np.random.default_rng(3)
    nodes = grid.points(dtype=torch.float64).reshape(-1, dim).numpy()
    for name, t in every_model(dim, grid, rng).items():
        path = t.save(tmp_path / f"{name}.nii.gz", grid=grid)
        img = sitk.ReadImage(str(path))
        assert img.GetNumberOfComponentsPerPixel() == dim
        assert np.allclose(img.GetDirection(), grid.direction.ravel()) and np.allclose(img.GetOrigin(), grid.origin)
        # The voxels hold world-mm displacements T(x) - x, x first.
        arr = sitk.GetArrayFromImage(img).reshape(-1, dim)
        assert np.abs(arr - (ours(t, nodes) - nodes)).max() < 1e-4, name
        back = load_transform(path)
        assert isinstance(back, DisplacementFieldTransform) and back.grid.same_as(grid)
        assert np.abs(ours(back, nodes) - ours(t, nodes)).max() < 1e-4, name
        # SimpleITK's DisplacementFieldTransform on the same image maps the same way.
        tx = sitk.DisplacementFieldTransform(sitk.Cast(img, sitk.sitkVectorFloat64))
        assert np.abs(sitk_points(tx, nodes[::7]) - ours(t, nodes[::7])).max() < 1e-4, name


def test_gridless_model_needs_a_grid_for_dense_files(tmp_path):
    src = np.random.default_rng(0).normal(0, 10, (6, 3))
    tps = ThinPlateSplineTransform(src, src + 1)
    with pytest.raises(MorphregError) as err:
        tps.save(tmp_path / "tps.nii.gz")
    assert "tps.nii.gz" in str(err.value)
    assert not (tmp_path / "tps.nii.gz").exists()


# ----- reading transforms written by SimpleITK ----------------------------------------------------------------
def sitk_written_transforms(grid: Grid) -> dict[str, sitk.Transform]:
    rng = np.random.default_rng(4)
    c = grid.center().tolist()
    out = {}
    for zyx in (False, True):
        e = sitk.Euler3DTransform(c, 0.3, -0.2, 0.4, (1.0, -2.0, 3.0))
        e.SetComputeZYX(zyx)
        out[f"euler_zyx{zyx}"] = e
    out["versor"] = sitk.VersorRigid3DTransform((0.1, -0.2, 0.3, np.sqrt(1 - 0.14)), (2.0, 1.0, -1.0), c)
    sim = sitk.Similarity3DTransform()
    sim.SetCenter(c)
    sim.SetParameters((0.1, 0.2, -0.1, 3.0, -1.0, 2.0, 1.2))
    out["similarity"] = sim
    aff = sitk.AffineTransform(3)
    aff.SetMatrix((np.eye(3) + rng.normal(0, 0.1, (3, 3))).ravel().tolist())
    aff.SetTranslation((1.0, 2.0, 3.0))
    aff.SetCenter(c)
    out["affine"] = aff
    out["translation"] = sitk.TranslationTransform(3, (1.5, -2.5, 0.5))
    ref = sitk.Image(list(grid.size), sitk.sitkFloat32)
    ref.SetOrigin(grid.origin.tolist())
    ref.SetSpacing(grid.spacing.tolist())
    ref.SetDirection(grid.direction.ravel().tolist())
    bs = sitk.BSplineTransformInitializer(ref, [3, 3, 3], 3)
    bs.SetParameters(rng.normal(0, 1.0, bs.GetNumberOfParameters()).tolist())
    out["bspline"] = bs
    field = sitk.GetImageFromArray(rng.normal(0, 1.0, (*grid.shape, 3)), isVector=True)
    field.CopyInformation(ref)
    out["displacement"] = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    comp = sitk.CompositeTransform(3)
    comp.AddTransform(aff)
    comp.AddTransform(sitk.BSplineTransform(bs))
    out["composite"] = comp
    return out


@pytest.mark.parametrize("suffix", [".tfm", ".h5"])
def test_reading_transforms_written_by_sitk(tmp_path, suffix):
    grid = _oblique_grid(3, [10, 9, 8], seed=31)
    rng = np.random.default_rng(5)
    inner = grid.index_to_world_points(rng.uniform(0.5, np.asarray(grid.size) - 1.5, (60, 3)))
    far = grid.center() + rng.normal(0, 200, (10, 3))  # outside every dense transform's support
    for name, tx in sitk_written_transforms(grid).items():
        if name in ("displacement", "composite") and suffix == ".tfm":
            continue  # dense and composite files belong in .h5
        path = tmp_path / f"{name}{suffix}"
        sitk.WriteTransform(tx, str(path))
        t = load_transform(path)
        pts = np.concatenate([inner, far])
        err = np.abs(ours(t, pts) - sitk_points(tx, pts)).max()
        assert err < 1e-4, f"{name}: {err}"


def test_composite_h5_and_txt_written_by_sitk(tmp_path):
    grid = _oblique_grid(3, [10, 9, 8], seed=32)
    txs = sitk_written_transforms(grid)
    comp = sitk.CompositeTransform(3)
    for name in ("euler_zyxTrue", "bspline", "displacement"):
        comp.AddTransform(txs[name])
    inner = grid.index_to_world_points(np.random.default_rng(6).uniform(1, 6, (40, 3)))
    for suffix in (".h5", ".txt"):
        sitk.WriteTransform(comp, str(tmp_path / f"comp{suffix}"))
        t = load_transform(tmp_path / f"comp{suffix}")
        assert isinstance(t, CompositeTransform) and len(t.transforms) == 3
        assert np.abs(ours(t, inner) - sitk_points(comp, inner)).max() < 1e-4


def test_ants_style_affine_mat(tmp_path):
    aff = sitk.AffineTransform(3)
    aff.SetMatrix((1.05, 0.1, 0.0, -0.05, 0.95, 0.02, 0.0, 0.03, 1.1))
    aff.SetTranslation((4.0, -3.0, 2.0))
    aff.SetCenter((10.0, 20.0, -5.0))
    sitk.WriteTransform(aff, str(tmp_path / "x0GenericAffine.mat"))
    t = load_transform(tmp_path / "x0GenericAffine.mat")
    pts = np.random.default_rng(7).normal(0, 50, (20, 3))
    assert np.abs(ours(t, pts) - sitk_points(aff, pts)).max() < 1e-4
    # And we write .mat files that SimpleITK reads back.
    t.save(tmp_path / "ours.mat")
    assert np.abs(sitk_points(sitk.ReadTransform(str(tmp_path / "ours.mat")), pts) - sitk_points(aff, pts)).max() < 1e-4


# ----- elastix TransformParameters files -----------------------------------------------------------------------
def _elastix_header(kind: str, n_params: int, params, dim: int = 3, extra: str = "", initial: str = "NoInitialTransform") -> str:
    values = " ".join(f"{v:.10f}" for v in params)
    return f"""(Transform "{kind}")
(NumberOfParameters {n_params})
(TransformParameters {values})
(InitialTransformParametersFileName "{initial}")
(HowToCombineTransforms "Compose")

// Image specific
(FixedImageDimension {dim})
(MovingImageDimension {dim})
(FixedInternalImagePixelType "float")
(MovingInternalImagePixelType "float")
(Size 20 20 20)
(Index 0 0 0)
(Spacing 1.0000000000 1.0000000000 1.0000000000)
(Origin -10.0000000000 -10.0000000000 -10.0000000000)
(Direction 1.0000000000 0.0000000000 0.0000000000 0.0000000000 1.0000000000 0.0000000000 0.0000000000 0.0000000000 1.0000000000)
(UseDirectionCosines "true")
{extra}
// ResampleInterpolator specific
(ResampleInterpolator "FinalBSplineInterpolator")
(FinalBSplineInterpolationOrder 3)
(Resampler "DefaultResampler")
(DefaultPixelValue 0.000000)
(ResultImageFormat "nii")
(ResultImagePixelType "float")
"""


def elastix_euler(zyx: bool | None, initial: str = "NoInitialTransform") -> tuple[str, sitk.Transform]:
    params = [0.2, -0.15, 0.3, 2.0, -1.0, 3.0]
    centre = [1.5, -2.0, 0.5]
    extra = f'(CenterOfRotationPoint {" ".join(map(str, centre))})\n'
    if zyx is not None:
        extra += f'(ComputeZYX "{str(zyx).lower()}")\n'
    tx = sitk.Euler3DTransform()
    tx.SetCenter(centre)
    tx.SetComputeZYX(bool(zyx))
    tx.SetRotation(*params[:3])
    tx.SetTranslation(params[3:])
    return _elastix_header("EulerTransform", 6, params, extra=extra, initial=initial), tx


def elastix_affine(initial: str = "NoInitialTransform") -> tuple[str, sitk.Transform]:
    a = np.array([[1.05, 0.1, -0.02], [-0.05, 0.97, 0.03], [0.01, 0.04, 1.1]])
    t = [3.0, -2.0, 1.0]
    centre = [0.5, 1.0, -1.5]
    tx = sitk.AffineTransform(a.ravel().tolist(), t, centre)
    text = _elastix_header("AffineTransform", 12, list(a.ravel()) + t,
                           extra=f'(CenterOfRotationPoint {" ".join(map(str, centre))})\n', initial=initial)
    return text, tx


def elastix_bspline(direction: np.ndarray, initial: str = "NoInitialTransform") -> tuple[str, sitk.Transform]:
    rng = np.random.default_rng(8)
    # Centred on 0 and large enough that every test point lies in ITK's valid region
    # (control index in [1, size - 2]), where ITK does not zero the displacement.
    size, spacing = [11, 10, 9], [5.0, 5.5, 6.0]
    origin = (-direction @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)).tolist()
    params = rng.normal(0, 1.5, 3 * int(np.prod(size)))
    tx = sitk.BSplineTransform(3, 3)
    # ITK's fixed parameters: size, origin, spacing, direction (row-major).
    tx.SetFixedParameters([*map(float, size), *origin, *spacing, *direction.ravel()])
    tx.SetParameters(params.tolist())
    # elastix writes GridDirection column by column (elxBSplineTransform reads griddirection(j, i)
    # from entry i * dim + j), i.e. direction.T row-major.
    extra = f"""(GridSize {" ".join(map(str, size))})
(GridIndex 0 0 0)
(GridSpacing {" ".join(map(str, spacing))})
(GridOrigin {" ".join(map(str, origin))})
(GridDirection {" ".join(f"{v:.12f}" for v in direction.T.ravel())})
(BSplineTransformSplineOrder 3)
(UseCyclicTransform "false")
"""
    return _elastix_header("BSplineTransform", params.size, params, extra=extra, initial=initial), tx


ELASTIX_POINTS = np.random.default_rng(9).uniform(-6, 6, (50, 3))


@pytest.mark.parametrize("case", ["euler_default", "euler_zyx_false", "euler_zyx_true", "affine", "bspline_oblique", "bspline_axis"])
def test_elastix_parameter_files(tmp_path, case):
    if case.startswith("euler"):
        text, tx = elastix_euler({"euler_default": None, "euler_zyx_false": False, "euler_zyx_true": True}[case])
    elif case == "affine":
        text, tx = elastix_affine()
    else:
        direction = rotation_matrix(3, [0.3, -0.2, 0.5]) if case == "bspline_oblique" else np.eye(3)
        text, tx = elastix_bspline(direction)
    path = tmp_path / "TransformParameters.0.txt"
    path.write_text(text, encoding="utf-8")
    t = load_transform(path)
    assert np.abs(ours(t, ELASTIX_POINTS) - sitk_points(tx, ELASTIX_POINTS)).max() < 1e-4


def test_elastix_initial_transform_chain(tmp_path):
    """TransformParameters.1 (B-spline) with an initial affine, itself initialised by an Euler:
    elastix composes T(x) = T_bspline(T_affine(T_euler(x)))."""
    euler_text, euler = elastix_euler(True)
    (tmp_path / "TransformParameters.0.txt").write_text(euler_text, encoding="utf-8")
    affine_text, affine = elastix_affine(initial=str(tmp_path / "TransformParameters.0.txt"))
    (tmp_path / "TransformParameters.1.txt").write_text(affine_text, encoding="utf-8")
    # A relative name is looked up beside the file that names it.
    bs_text, bs = elastix_bspline(rotation_matrix(3, [0.1, 0.2, -0.3]), initial="TransformParameters.1.txt")
    (tmp_path / "TransformParameters.2.txt").write_text(bs_text, encoding="utf-8")
    t = load_transform(tmp_path / "TransformParameters.2.txt")
    expected = sitk.CompositeTransform(3)
    for part in (bs, affine, euler):  # ITK applies the last added first
        expected.AddTransform(part)
    assert np.abs(ours(t, ELASTIX_POINTS) - sitk_points(expected, ELASTIX_POINTS)).max() < 1e-4
    # Not the other order (the test can tell the difference).
    wrong = sitk.CompositeTransform(3)
    for part in (euler, affine, bs):
        wrong.AddTransform(part)
    assert np.abs(ours(t, ELASTIX_POINTS) - sitk_points(wrong, ELASTIX_POINTS)).max() > 1e-2


@pytest.mark.skipif(importlib.util.find_spec("itk") is None, reason="itk-elastix is not installed")
@pytest.mark.parametrize("case", ["bspline_oblique", "euler_zyx_false", "affine"])
def test_transformix_agrees_with_our_reading(tmp_path, case, monkeypatch):
    """elastix's own transformix maps the file like we read it (checks GridDirection ordering)."""
    monkeypatch.chdir(tmp_path)  # transformix writes deformationField.nii into the working directory
    itk = pytest.importorskip("itk")
    if not hasattr(itk, "transformix_deformation_field"):
        pytest.skip("itk is installed without itk-elastix")
    if case == "bspline_oblique":
        text, _ = elastix_bspline(rotation_matrix(3, [0.3, -0.2, 0.5]))
    elif case == "affine":
        text, _ = elastix_affine()
    else:
        text, _ = elastix_euler(False)
    path = tmp_path / "TransformParameters.0.txt"
    path.write_text(text, encoding="utf-8")
    params = itk.ParameterObject.New()
    params.AddParameterFile(str(path))
    moving = itk.image_from_array(np.zeros((20, 20, 20), np.float32))
    moving.SetOrigin([-10.0, -10.0, -10.0])
    field = itk.transformix_deformation_field(moving, params)
    disp = np.asarray(itk.array_from_image(field), np.float64)  # (z, y, x, 3), world mm
    grid = Grid([20, 20, 20], [-10.0, -10.0, -10.0], [1.0, 1.0, 1.0])
    expected = load_transform(path).displacement(grid, dtype=torch.float64)[0].movedim(0, -1).detach().numpy()
    assert np.abs(disp - expected).max() < 1e-3


# ----- unreadable files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,content", [
    ("garbage.tfm", b"this is not a transform\n"),
    ("garbage.txt", b"#Insight Transform File V1.0\n#Transform 0\nTransform: NoSuchTransform_double_3_3\nParameters: 1 2\n"),
    ("garbage.h5", b"\x89HDF\r\n\x1a\n broken"),
    ("garbage.mat", b"MATLAB 5.0 broken"),
    ("garbage.pt", b"PK\x03\x04 not a zip"),
    ("garbage.nii.gz", b"\x1f\x8b broken gzip"),
    ("unknown.xyz", b"whatever"),
    ("elastix.txt", b'(Transform "SplineKernelTransform")\n(NumberOfParameters 0)\n'),
    ("noelastix.txt", b"(Foo 1)\n"),
])
def test_unreadable_transform_files_raise_morphreg_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MorphregError) as err:
        load_transform(path)
    assert name in str(err.value)


def test_missing_and_wrong_kind_files_raise_morphreg_error(tmp_path):
    with pytest.raises(MorphregError, match="missing.tfm"):
        load_transform(tmp_path / "missing.tfm")
    scalar = sitk.Image([4, 4, 4], sitk.sitkFloat32)
    sitk.WriteImage(scalar, str(tmp_path / "scalar.nii.gz"))
    with pytest.raises(MorphregError, match="scalar.nii.gz"):
        load_transform(tmp_path / "scalar.nii.gz")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(MorphregError, match="other.pt"):
        load_transform(tmp_path / "other.pt")
    with pytest.raises(MorphregError, match="out.abc"):
        TranslationTransform(3).save(tmp_path / "out.abc")
    assert not (tmp_path / "out.abc").exists()


def test_bspline_export_matches_simpleitk_beyond_its_domain():
    """morphreg's B-spline is smooth everywhere; its ITK export (zero-padded control grid) must map
    points as morphreg does even far outside the domain it was built for."""
    domain = Grid([12, 10, 8], [-10.0, -8.0, -6.0], [2.0, 2.0, 2.5])
    bs = BSplineTransform.for_grid(domain, 7.0)
    with torch.no_grad():
        bs.coefficients.normal_(0, 2.0, generator=torch.Generator().manual_seed(4))
    tx = bs.to_sitk()
    pts = np.random.default_rng(0).uniform(-40, 40, (400, 3))
    ours = bs.points(torch.as_tensor(pts, dtype=torch.float64)).detach().numpy()
    theirs = np.array([tx.TransformPoint(tuple(p)) for p in pts])
    assert np.abs(ours - pts).max() > 0.5  # some points really move
    assert np.abs(ours - theirs).max() < 1e-4


def test_bspline_read_from_itk_keeps_itk_valid_region():
    """A B-spline written by ITK leaves points unmoved where its support leaves the grid; reading it
    must reproduce that (and refining must keep it)."""
    mesh = sitk.Image([5, 5, 5], sitk.sitkFloat32)
    mesh.SetSpacing((3.0, 3.0, 3.0))
    tx = sitk.BSplineTransformInitializer(mesh, [3, 3, 3])
    params = np.random.default_rng(2).normal(0, 2.0, len(tx.GetParameters()))
    tx.SetParameters(params.tolist())
    t = from_sitk_transform(tx)
    pts = np.random.default_rng(1).uniform(-8, 20, (400, 3))
    theirs = np.array([tx.TransformPoint(tuple(p)) for p in pts])
    for model in (t, t.refine()):
        ours = model.points(torch.as_tensor(pts, dtype=torch.float64)).detach().numpy()
        assert np.abs(ours - theirs).max() < 1e-4


def test_velocity_field_part_exports_on_its_own_grid(tmp_path):
    """A composite's dense part is written on its own (coarse) grid, not resampled onto the reference
    grid: exact for SimpleITK and small on disk."""
    coarse = Grid([10, 12, 14], [-10.0, -12.0, -14.0], [4.0, 4.0, 4.0])
    v = torch.nn.functional.avg_pool3d(torch.randn(1, 3, *coarse.shape, generator=torch.Generator().manual_seed(0)) * 20, 5, 1, 2)
    t = CompositeTransform([AffineTransform(3, matrix=np.eye(3) * 1.02, translation=[1.0, 2.0, 3.0]),
                            StationaryVelocityFieldTransform(v, coarse)])
    fine = Grid([80, 96, 112], [-10.0, -12.0, -14.0], [0.5, 0.5, 0.5])
    t.save(tmp_path / "t.h5", grid=fine)
    tx = sitk.ReadTransform(str(tmp_path / "t.h5"))
    field = sitk.DisplacementFieldTransform(sitk.CompositeTransform(tx).GetNthTransform(1)).GetDisplacementField()
    assert tuple(field.GetSize()) == coarse.size
    pts = np.random.default_rng(0).uniform(-20, 50, (300, 3))
    ours = t.points(torch.as_tensor(pts, dtype=torch.float64)).detach().numpy()
    theirs = np.array([tx.TransformPoint(tuple(p)) for p in pts])
    assert np.abs(ours - pts).max() > 1.0
    assert np.abs(ours - theirs).max() < 1e-6
