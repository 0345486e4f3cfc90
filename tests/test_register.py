"""Registration engine and methods: recovery of known synthetic transforms (2D and 3D), multimodal
recovery, the rigidity penalty, saved outputs readable by SimpleITK, bad inputs, and (realdata)
prostate MR -> TRUS."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from morphreg import Grid, Image, MorphregError, read_image, warp, write_image
from morphreg.data.phantom import make_phantom_pair, phantom_image, smooth_deformation
from morphreg.optim import OptimizerConfig, minimize
from morphreg.register import initialize, register
from morphreg.transforms import AffineTransform, CompositeTransform, RigidTransform

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Short schedules keep the file fast; the presets' own schedules are longer.
LEVELS_2D = [[4, None, 60], [2, None, 50], [1, 0.0, 30]]
LEVELS_3D = [[2, None, 50], [1, 0.0, 25]]


pytestmark = pytest.mark.usefixtures("one_thread")  # single-threaded: see conftest.py


def _epe(a, b, grid: Grid, inside: torch.Tensor | None = None) -> float:
    """Mean endpoint error (mm) between two transforms on ``grid`` (inside a mask)."""
    with torch.no_grad():
        d = (a.map_grid(grid) - b.map_grid(grid)).norm(dim=-1)[0]
    return float(d[inside].mean() if inside is not None else d.mean())


def _rigid_pair(dim: int, size: int, spacing: float, angles_deg, shift):
    grid = Grid([size] * dim, [-(size - 1) * spacing / 2] * dim, spacing)
    fixed, labels = phantom_image(grid)
    true = RigidTransform(dim, np.deg2rad(angles_deg), shift, grid.center())
    with torch.no_grad():
        moving = warp(fixed, true.inverse(), grid)
    return fixed, moving, labels, true


# ----- optimisers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["adam", "gd", "lbfgs", "asgd"])
def test_optimisers_minimise_a_badly_scaled_quadratic(name):
    a = torch.tensor([3.0, -2.0], requires_grad=True)
    b = torch.tensor([0.08], requires_grad=True)
    target_a, target_b = torch.tensor([1.0, 1.0]), torch.tensor([0.02])

    def fn(sample_fraction=None, generator=None):
        noise = 0.0 if sample_fraction is None else 0.01 * torch.randn((), generator=generator)
        return ((a - target_a) ** 2).sum() + 1e4 * ((b - target_b) ** 2).sum() * (1 + noise)

    cfg = OptimizerConfig(name, lr=0.5, tolerance=1e-9, patience=30, extra={"final_lr_ratio": 0.01})
    trace = minimize(fn, [a, b], [1.0, 0.01], 300, cfg, generator=torch.Generator().manual_seed(0))
    assert trace[-1] < 1e-2 * trace[0]
    assert torch.allclose(a.detach(), target_a, atol=0.05) and abs(float(b.detach()) - 0.02) < 0.005


# ----- linear methods -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,size,spacing,angles,shift", [
    (2, 64, 1.0, [8.0], [4.0, -3.0]),
    (3, 28, 2.0, [4.0, -3.0, 5.0], [3.0, 2.0, -4.0]),
])
def test_rigid_recovers_known_transform(dim, size, spacing, angles, shift):
    fixed, moving, _, true = _rigid_pair(dim, size, spacing, angles, shift)
    levels = LEVELS_2D if dim == 2 else LEVELS_3D
    r = register(fixed, moving, "rigid", levels=levels)
    got = r.transform
    assert isinstance(got, RigidTransform)
    # Rotation error (deg) from R_true^T R_got; translation error as the map's offset at the centre.
    rel = true.matrix().detach().double().T @ got.matrix().detach().double()
    cos = (float(torch.trace(rel)) - 1) / 2 if dim == 3 else float(rel[0, 0])
    angle = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
    c = torch.as_tensor(fixed.grid.center(), dtype=torch.float32)
    shift_err = float((got.points(c) - true.points(c)).norm())
    assert angle < 0.5 and shift_err < 0.5, (angle, shift_err)
    assert r.inverse is not None and r.folding_percent == 0.0


def test_affine_recovers_scaling_and_shear_2d():
    grid = Grid([64, 64], [-31.5, -31.5], 1.0)
    fixed, labels = phantom_image(grid)
    true = AffineTransform(2, matrix=[[1.08, 0.06], [-0.04, 0.94]], translation=[2.0, -3.0], center=grid.center())
    with torch.no_grad():
        moving = warp(fixed, true.inverse(), grid)
    r = register(fixed, moving, "affine", levels=LEVELS_2D)
    assert _epe(r.transform, true, grid, labels.data[0] > 0) < 0.3


def test_fft_initialisation_finds_a_large_offset():
    fixed, moving, _, true = _rigid_pair(2, 64, 1.0, [20.0], [18.0, -14.0])
    init = initialize(fixed, moving, "fft", max_angle_deg=30, angle_step_deg=10, spacing_mm=2.0)
    c = torch.as_tensor(fixed.grid.center(), dtype=torch.float32)
    assert float((init.points(c) - true.points(c)).norm()) < 4.0
    assert abs(float(init.angles[0]) - math.radians(20)) < math.radians(6)
    geometric = initialize(fixed, moving, "geometry")
    assert float((geometric.points(c) - true.points(c)).norm()) > 15  # the search was needed
    # ... and the rigid stage started from it converges.
    r = register(fixed, moving, "rigid", levels=LEVELS_2D,
                 init=["fft", {"max_angle_deg": 30, "angle_step_deg": 10, "spacing_mm": 2.0}])
    assert float((r.transform.points(c) - true.points(c)).norm()) < 0.5


def test_moments_and_principal_axes_initialisers():
    fixed, moving, _, true = _rigid_pair(2, 64, 1.0, [25.0], [5.0, 3.0])
    c = torch.as_tensor(fixed.grid.center(), dtype=torch.float32)
    for method, tol in (("moments", 4.0), ("principal_axes", 3.0)):
        init = initialize(fixed, moving, method)
        assert float((init.points(c) - true.points(c)).norm()) < tol, method
    pa = initialize(fixed, moving, "principal_axes")
    assert abs(float(pa.angles[0]) - math.radians(25)) < math.radians(5)


# ----- deformable methods -------------------------------------------------------------------------------
def _deformable_pair(dim: int):
    if dim == 2:
        return make_phantom_pair(dim=2, size=64, spacing=1.0, magnitude_mm=3.0), 1.0, LEVELS_2D
    return make_phantom_pair(dim=3, size=28, spacing=2.0, magnitude_mm=3.0), 2.0, LEVELS_3D


@pytest.mark.parametrize("preset,dim", [("syn", 2), ("bspline", 2), ("demons", 2), ("syn", 3), ("bspline", 3)])
def test_deformable_recovers_smooth_deformation(preset, dim):
    pair, voxel, levels = _deformable_pair(dim)
    r = register(pair.fixed, pair.moving, preset, levels=levels)
    body = pair.fixed_labels.data[0] > 0
    epe = _epe(r.transform, pair.true_transform, pair.fixed.grid, body)
    assert epe < 0.5 * voxel, epe
    assert r.folding_percent == 0.0
    assert not any(s["diverged"] for s in r.stages)
    if preset in ("syn", "demons"):
        # Forward and inverse both returned; their composition is close to the identity.
        assert r.inverse is not None
        with torch.no_grad():
            x = pair.fixed.grid.points().unsqueeze(0)
            back = r.inverse.points(r.transform.points(x))
        assert float((back - x).norm(dim=-1)[0][body].mean()) < 0.2 * voxel
        det = r.transform.jacobian_determinant(pair.fixed.grid)
        assert float(det.min()) > 0


def test_patch_sampler_draws_reproducible_cubes_of_grid_points_in_the_foreground():
    from morphreg.optim.cubes import PatchSampler, foreground

    grid = Grid([20, 16, 12], [5.0, -3.0, 2.0], [1.0, 1.5, 2.0], np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]))
    image = torch.zeros(1, 1, *grid.shape)
    image[0, 0, 3:6, 4:9, 10:15] = 1.0  # (z, y, x) box
    fg = foreground(image)
    assert int(fg.sum()) == 3 * 5 * 5
    sampler = PatchSampler(grid, fg, count=5, size=8, seed=3)
    pts = sampler.draw()
    assert pts.shape == (1, 5, 8, 8, 8, 3)
    index = torch.as_tensor(grid.world_to_index_points(pts.reshape(-1, 3).double().numpy()))
    assert torch.allclose(index, index.round(), atol=1e-3)  # lattice points of the grid
    assert bool((index >= -1e-3).all()) and bool((index <= torch.tensor(grid.size) - 1 + 1e-3).all())
    centres = index.reshape(5, 8, 8, 8, 3)[:, 4, 4, 4].round().long()  # cube centres (x, y, z)
    assert all(bool(fg[0, 0, z, y, x]) for x, y, z in centres.tolist())
    assert torch.equal(PatchSampler(grid, fg, 5, 8, seed=3).draw(), pts)
    assert PatchSampler(grid, fg, 2, 64).draw().shape == (1, 2, 12, 16, 20, 3)  # clipped to the grid


def test_fast_syn_velocity_grid_per_level():
    from morphreg.optim.models import DenseModel

    domain = Grid([128, 128, 96], [0.0, 0.0, 0.0], 1.0)
    model = DenseModel(None, domain, "svf", grid_shrink=4, min_field_points=32)
    model.start_level(domain.downsample(4))
    assert model.grid.shape == (24, 32, 32)
    model.start_level(domain, field_shrink=2)  # e.g. a cube level with cube_field_shrink 2
    assert model.grid.shape == (48, 64, 64) and model.param.shape == (1, 3, 48, 64, 64)
    small = DenseModel(None, Grid([40, 40], [0.0, 0.0], 1.0), "svf", grid_shrink=4, min_field_points=32)
    small.start_level(small.domain)
    assert small.grid.shape == (40, 40)  # >= 32 points along the shortest axis


def test_fast_syn_full_resolution_patches_recover_a_smooth_deformation():
    """The fast SyN solver's stochastic full-resolution level (random cubes per iteration) keeps
    improving a coarse result and stays diffeomorphic."""
    from morphreg.register.presets import FAST_SYN

    grid = Grid([40] * 3, [-39 * 1.5 / 2] * 3, 1.5)
    fixed, labels = phantom_image(grid)
    truth = smooth_deformation(grid, 4.0, seed=2)
    with torch.no_grad():
        moving = warp(fixed, truth.inverse(), grid)
    body = labels.data[0] > 0
    base = {**FAST_SYN, "model_params": {**FAST_SYN["model_params"], "field_shrink": 1}, "levels": [[2, None, 40]]}
    coarse = register(fixed, moving, [base], modality="mono")
    fine = register(fixed, moving, [{**base, "levels": [[2, None, 40], [1, 0.0, 60]],
                                     "model_params": {**base["model_params"], "patches": [4, 16]}}], modality="mono")
    epe0, epe1 = (_epe(r.transform, truth, grid, body) for r in (coarse, fine))
    assert epe1 < 0.5 * 1.5 and epe1 < 0.8 * epe0, (epe0, epe1)
    assert float(fine.transform.jacobian_determinant(grid).min()) > 0
    assert len(fine.stages[-1]["trace"][-1]) == 60  # stochastic: no early stop on noisy values


def test_accurate_preset_is_default_with_a_finer_field_and_multimodal_pairs_get_a_multimodal_schedule():
    from morphreg.register.presets import get_preset

    accurate, default = get_preset("accurate"), get_preset("default")
    assert [s["model"] for s in accurate] == [s["model"] for s in default]
    assert accurate[-1]["levels"][-1][0] == 1  # a full-resolution level
    assert accurate[-1]["model_params"]["field_shrink"] < default[-1]["model_params"]["field_shrink"]
    pair = make_phantom_pair(dim=2, size=48, spacing=1.0, magnitude_mm=0.0)
    # Forced "multi" on two images of the same anatomy (outlines overlay): MI / MIND stages with checks.
    r = register(pair.fixed, pair.moving, "accurate", modality="multi", levels=[[2, None, 5]])
    assert r.preset == "multicontrast" and [s["model"] for s in r.stages] == ["rigid", "affine", "svf"]
    # Images that do not overlay at all (as ultrasound and MR): the cautious image-only schedule.
    noise = pair.moving.with_data(torch.rand(pair.moving.data.shape, generator=torch.Generator().manual_seed(0)))
    r = register(pair.fixed, noise, "accurate", modality="multi")
    assert r.preset == "multimodal" and [s["model"] for s in r.stages] == ["rigid"]


def test_multimodal_affine_with_mi_and_syn_with_mind():
    pair = make_phantom_pair(dim=2, size=64, spacing=1.0, magnitude_mm=3.0)
    # Non-monotonic intensity remapping: a different "modality" with the same anatomy.
    moving = pair.moving.with_data(torch.cos(3.0 * pair.moving.data) + 0.1 * pair.moving.data)
    body = pair.fixed_labels.data[0] > 0
    start = _epe(CompositeTransform([RigidTransform(2)]), pair.true_transform, pair.fixed.grid, body)
    aff = register(pair.fixed, moving, "affine", modality="multi", levels=LEVELS_2D)
    assert aff.modality == "multi" and aff.stages[-1]["similarity"] == "mi"
    epe_aff = _epe(aff.transform, pair.true_transform, pair.fixed.grid, body)
    assert epe_aff < 0.5 * start
    syn = register(pair.fixed, moving, "syn", modality="multi", levels=LEVELS_2D)
    assert syn.stages[-1]["similarity"] == "mind"
    assert _epe(syn.transform, pair.true_transform, pair.fixed.grid, body) < 0.5


def test_rigidity_penalty_keeps_a_masked_block_rigid():
    pair = make_phantom_pair(dim=2, size=64, spacing=1.0, magnitude_mm=3.0, rotation_deg=0, shift_mm=0)
    grid = pair.fixed.grid
    block = torch.zeros(grid.shape, dtype=torch.uint8)
    block[20:36, 22:38] = 1
    mask = Image(block[None], grid)
    stage = {"model": "bspline", "model_params": {"control_spacing_mm": 8.0}, "similarity": "ncc",
             "penalties": [{"name": "bending", "weight": 0.5}, {"name": "rigidity", "weight": 20.0, "mask": "rigidity"}],
             "optimizer": {"name": "adam", "lr": 0.3, "extra": {"final_lr_ratio": 0.1}}, "levels": LEVELS_2D}
    r = register(pair.fixed, pair.moving, [stage], rigidity_mask=mask)
    det = r.transform.jacobian_determinant(grid)[0]
    inside = block.bool()
    inner = torch.zeros_like(inside)
    inner[22:34, 24:36] = True  # away from the block border, where the penalty's support ends
    assert float((det[inner] - 1).abs().max()) < 0.02
    # ... while the surroundings deform.
    outside = (~inside) & (pair.fixed_labels.data[0] > 0)
    u = r.transform.displacement(grid)[0].norm(dim=0)
    assert float(u[outside].max()) > 1.0
    free = register(pair.fixed, pair.moving, [{**stage, "penalties": stage["penalties"][:1]}])
    free_det = free.transform.jacobian_determinant(grid)[0]
    assert float((free_det[inner] - 1).abs().max()) > float((det[inner] - 1).abs().max())


def test_label_term_and_tps():
    pair = make_phantom_pair(dim=2, size=64, spacing=1.0, magnitude_mm=3.0)
    body = pair.fixed_labels.data[0] > 0
    # Labels only (no intensity term): the soft Dice drives the registration.
    r = register(pair.fixed, pair.moving, "affine", fixed_labels=pair.fixed_labels, moving_labels=pair.moving_labels,
                 label_weight=1.0, similarity_weight=0.0, levels=LEVELS_2D)
    assert "labels" in r.stages[-1]["terms"] and "similarity" not in r.stages[-1]["terms"]
    assert _epe(r.transform, pair.true_transform, pair.fixed.grid, body) < 1.5
    # TPS from landmarks: exact at the landmarks.
    rng = np.random.default_rng(0)
    p = torch.as_tensor(rng.uniform(-25, 25, (12, 2)), dtype=torch.float32)
    with torch.no_grad():
        q = pair.true_transform.points(p)
    t = register(pair.fixed, pair.moving, "tps", fixed_landmarks=p, moving_landmarks=q)
    assert float((t.transform.points(p) - q).norm(dim=-1).max()) < 1e-3


# ----- outputs and CLI ----------------------------------------------------------------------------------
def test_save_writes_itk_outputs(tmp_path):
    pair = make_phantom_pair(dim=2, size=48, spacing=1.0, magnitude_mm=2.0)
    f, m = tmp_path / "f.nii.gz", tmp_path / "m.nii.gz"
    write_image(pair.fixed, f)
    write_image(pair.moving, m)
    r = register(f, m, "syn", levels=[[2, None, 30], [1, 0.0, 15]])
    out = r.save(tmp_path / "out")
    names = sorted(p.name for p in out.iterdir())
    assert names == [".morphreg.json", "displacement.nii.gz", "inverse_displacement.nii.gz", "summary.json", "transform.h5",
                     "warped.nii.gz"]
    assert sorted(json.loads((out / ".morphreg.json").read_text(encoding="utf-8"))["files"]) == names[1:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["fixed"] == str(f) and summary["moving"] == str(m) and summary["preset"] == "syn"
    assert summary["folding_percent"] == 0.0 and len(summary["timings"]["stages_s"]) == 3
    # SimpleITK maps points as morphreg does, through transform.h5 and through displacement.nii.gz.
    tx = sitk.ReadTransform(str(out / "transform.h5"))
    disp_image = sitk.ReadImage(str(out / "displacement.nii.gz"))
    assert disp_image.GetPixelID() == sitk.sitkVectorFloat32  # as ANTs writes warps; half the size
    disp = sitk.DisplacementFieldTransform(sitk.Cast(disp_image, sitk.sitkVectorFloat64))
    pts = pair.fixed.grid.points().reshape(-1, 2)[::97]
    ours = r.transform.points(pts).detach().numpy()
    assert np.abs(np.array([tx.TransformPoint(tuple(map(float, p))) for p in pts]) - ours).max() < 1e-3
    assert np.abs(np.array([disp.TransformPoint(tuple(map(float, p))) for p in pts]) - ours).max() < 1e-3
    warped = read_image(out / "warped.nii.gz")
    assert warped.grid.same_as(pair.fixed.grid)


def test_cli_register(tmp_path):
    from typer.testing import CliRunner

    from morphreg.cli.main import app

    fixed, moving, _, _ = _rigid_pair(2, 48, 1.0, [5.0], [2.0, 1.0])
    write_image(fixed, tmp_path / "f.nii.gz")
    write_image(moving, tmp_path / "m.nii.gz")
    res = CliRunner().invoke(app, ["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"),
                                   "-o", str(tmp_path / "out"), "--preset", "rigid", "--metric", "mse", "-q"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["preset"] == "rigid" and summary["stages"][0]["similarity"] == "mse"


# ----- bad inputs ---------------------------------------------------------------------------------------
def test_bad_inputs_raise_and_leave_no_output(tmp_path):
    grid2, grid3 = Grid([32, 32]), Grid([16, 16, 16])
    img2, _ = phantom_image(grid2)
    img3, _ = phantom_image(grid3)
    nan = img2.data.clone()
    nan[0, 3, 3] = float("nan")
    cases = [
        dict(fixed=img2, moving=img3),
        dict(fixed=img2, moving=img2, fixed_mask=Image(torch.zeros(1, 32, 32, dtype=torch.uint8), grid2)),
        dict(fixed=img2, moving=img2.with_data(torch.full_like(img2.data, 0.3))),
        dict(fixed=img2, moving=Image(nan, grid2)),
    ]
    for case in cases:
        with pytest.raises(MorphregError):
            register(case.pop("fixed"), case.pop("moving"), "rigid", **case)
    # The CLI turns them into an error and leaves no output folder.
    write_image(img2, tmp_path / "f.nii.gz")
    write_image(img3, tmp_path / "m.nii.gz")
    from typer.testing import CliRunner

    from morphreg.cli.main import app

    res = CliRunner().invoke(app, ["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "-o", str(tmp_path / "out"), "-q"])
    assert res.exit_code != 0 and isinstance(res.exception, MorphregError)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unknown_preset_and_parameter():
    img, _ = phantom_image(Grid([32, 32]))
    with pytest.raises(MorphregError, match="preset"):
        register(img, img, "nope")
    with pytest.raises(MorphregError, match="parameter"):
        register(img, img, "rigid", not_a_key=1)


def test_level_sigmas_in_mm_voxels_or_default():
    from morphreg.register.methods.base import resolve_levels

    img = Image(torch.zeros(1, 8, 8), Grid([8, 8], spacing=[2.0, 3.0]))
    levels = resolve_levels([[4, None, 5], [2, "1.5vox", 6], [1, 0.7, 7], [1, None, 8]], img)
    assert [(lv.shrink, lv.sigma_mm, lv.iterations) for lv in levels] == [(4, 4.0, 5), (2, 3.0, 6), (1, 0.7, 7), (1, 0.0, 8)]
    with pytest.raises(MorphregError, match="sigma"):
        resolve_levels([[2, "2mm", 5]], img)


# ----- real data ----------------------------------------------------------------------------------------
def _prostate_eval(transform, fl: Image, ml: Image) -> tuple[float, float]:
    w = warp(ml, transform, fl.grid, "linear")
    f, m = fl.data[0] > 0.5, w.data[0] > 0.5
    dice = float(2 * (f & m).sum() / (f.sum() + m.sum()))
    pts = fl.grid.points(dtype=torch.float64)
    tre = []
    for c in range(1, fl.channels):
        a, b = fl.data[c].double(), w.data[c].double()
        if a.sum() > 0 and b.sum() > 0:
            ca = (pts * a[..., None]).reshape(-1, 3).sum(0) / a.sum()
            cb = (pts * b[..., None]).reshape(-1, 3).sum(0) / b.sum()
            tre.append(float((ca - cb).norm()))
    return dice, float(np.mean(tre))


PROSTATE_PAIRS = ("obs000.nii.gz", "obs001.nii.gz", "obs002.nii.gz")


def _prostate_root() -> Path:
    root = DATA / "prostate_mr_trus"
    if not root.exists():
        pytest.skip(f"real data not found at {root}")
    return root


def _gland(path: Path) -> Image:
    img = read_image(path)
    return img.with_data((img.data[:1] > 0).to(torch.uint8))


@pytest.fixture(scope="module")
def prostate_default_runs():
    """Default preset, images only, on 3 MR -> TRUS pairs: [(name, result, Dice/TRE before, after)]."""
    root = _prostate_root()
    runs = []
    for name in PROSTATE_PAIRS:
        fl = read_image(root / "fixed_labels" / name, dtype=torch.float32)
        ml = read_image(root / "moving_labels" / name, dtype=torch.float32)
        r = register(root / "fixed_images" / name, root / "moving_images" / name)
        runs.append((name, r, _prostate_eval(None, fl, ml), _prostate_eval(r.transform, fl, ml)))
    return runs


@pytest.mark.realdata
def test_prostate_default_preset_is_never_worse_than_initial_alignment(prostate_default_runs):
    """TRUS vs MR is detected as multimodal and the cautious schedule either improves the alignment or
    its independent check falls back to the initial one."""
    for name, r, (d0, t0), (d1, t1) in prostate_default_runs:
        assert r.modality == "multi" and r.preset == "multimodal", name
        assert d1 >= d0 - 0.01 and t1 <= t0 + 0.5, (name, d0, d1, t0, t1)
        for stage in r.stages:
            assert "guard" in stage and stage["diverged"] == (not stage["guard"]["accepted"]), (name, stage.get("guard"))


@pytest.mark.realdata
@pytest.mark.xfail(reason="image-only MR->TRUS: on obs000/obs002 the independent check rejects the rigid "
                          "stage and the initial alignment is kept (no gain); kept so the target stays visible",
                   strict=False)
def test_prostate_default_preset_improves_on_initial_alignment(prostate_default_runs):
    for name, _, (d0, t0), (d1, t1) in prostate_default_runs:
        assert d1 > d0 and t1 < t0, (name, d0, d1, t0, t1)


@pytest.mark.realdata
def test_prostate_label_driven_default_aligns_glands_and_landmarks():
    """Gland masks given (landmarks not): the default preset becomes label-driven (one flag away)."""
    root = _prostate_root()
    for name in PROSTATE_PAIRS:
        fl = read_image(root / "fixed_labels" / name, dtype=torch.float32)
        ml = read_image(root / "moving_labels" / name, dtype=torch.float32)
        r = register(root / "fixed_images" / name, root / "moving_images" / name,
                     fixed_labels=_gland(root / "fixed_labels" / name), moving_labels=_gland(root / "moving_labels" / name))
        d0, t0 = _prostate_eval(None, fl, ml)
        d1, t1 = _prostate_eval(r.transform, fl, ml)
        assert r.preset == "labels", name
        assert d1 >= 0.85 and t1 < min(t0, 10.0), (name, d0, d1, t0, t1)
