"""The classical demons and ConvexAdam methods, the demo command and ``register --report``:
recovery of known synthetic deformations (2D and 3D, a multimodal remapped pair, a deformation too
large for a single-resolution gradient method), saved outputs. Tiny images keep the file fast."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from morphreg import Grid, Image, MorphregError, warp, write_image
from morphreg.data.phantom import make_phantom_pair, phantom_image, smooth_deformation
from morphreg.image.filters import gaussian_filter
from morphreg.optim.multires import StageInputs
from morphreg.register import register
from morphreg.register.methods.convex import DEFAULTS as CONVEX_DEFAULTS
from morphreg.register.methods.convex import cost_volume, coupled_convex, discrete_displacement
from morphreg.register.presets import CONVEX, get_preset
from morphreg.transforms import StationaryVelocityFieldTransform, TranslationTransform


pytestmark = pytest.mark.usefixtures("one_thread")  # single-threaded: see conftest.py


def _epe(transform, truth, grid: Grid, inside: torch.Tensor) -> float:
    """Mean endpoint error (mm) inside ``inside`` between two fixed -> moving transforms."""
    with torch.no_grad():
        d = (transform.map_grid(grid) - truth.map_grid(grid)).norm(dim=-1)[0]
    return float(d[inside].mean())


def _smooth_pair(dim: int, size: int, spacing: float, magnitude: float, seed: int = 1):
    """Phantom and a moving copy under a known smooth diffeomorphism (no linear part)."""
    grid = Grid([size] * dim, [-(size - 1) * spacing / 2] * dim, spacing)
    fixed, labels = phantom_image(grid)
    truth = smooth_deformation(grid, magnitude, seed=seed)
    with torch.no_grad():
        moving = warp(fixed, truth.inverse(), grid)
    return fixed, moving, labels.data[0] > 0, truth


def _textured_pair(size: int, magnitude: float, dim: int = 2, spacing: float = 1.0):
    """Textured disc / ball (smoothed noise) under a large known smooth deformation."""
    grid = Grid([size] * dim, [-(size - 1) * spacing / 2] * dim, spacing)
    noise = gaussian_filter(torch.randn(1, 1, *grid.shape, generator=torch.Generator().manual_seed(3)), 1.5)[0]
    x = grid.points()
    body = ((x / (0.42 * size * spacing)) ** 2).sum(-1) <= 1
    fixed = Image(torch.where(body, 1 + 0.5 * noise[0] / noise.std(), torch.zeros(()))[None], grid)
    truth = smooth_deformation(grid, magnitude, seed=1)
    with torch.no_grad():
        moving = warp(fixed, truth.inverse(), grid)
    return fixed, moving, body, truth


# ----- demons -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,variant,field_shrink", [(2, "diffeomorphic", 1), (2, "thirion", 1), (2, "compositive", 1),
                                                      (2, "diffeomorphic", 2), (3, "diffeomorphic", 1)])
def test_demons_recovers_smooth_deformation(dim, variant, field_shrink):
    size, spacing, magnitude = (64, 1.0, 4.0) if dim == 2 else (28, 2.0, 4.0)
    fixed, moving, body, truth = _smooth_pair(dim, size, spacing, magnitude)
    levels = [[4, None, 60], [2, None, 60], [1, 0.0, 60]] if dim == 2 else [[2, None, 50], [1, 0.0, 40]]
    stage = {"model": "demons", "model_params": {"variant": variant, "field_shrink": field_shrink}, "levels": levels}
    r = register(fixed, moving, [stage])
    start = _epe(TranslationTransform(dim), truth, fixed.grid, body)
    epe = _epe(r.transform, truth, fixed.grid, body)
    assert epe < 0.5 * spacing < start, (epe, start)
    s = r.stages[0]
    assert not s["diverged"] and s["final_objective"] < 0.2 * s["initial_objective"]
    field_grid = r.transform.domain()
    assert field_grid.same_as(fixed.grid) == (field_shrink == 1)
    if variant == "diffeomorphic":
        # A velocity field: det J > 0 everywhere, and the inverse exp(-v) comes with it.
        assert isinstance(r.transform, StationaryVelocityFieldTransform) and r.inverse is not None
        assert float(r.transform.jacobian_determinant(fixed.grid).min()) > 0
        with torch.no_grad():
            x = fixed.grid.points().unsqueeze(0)
            back = r.inverse.points(r.transform.points(x))
        assert float((back - x).norm(dim=-1)[0][body].mean()) < 0.1 * spacing
    else:
        assert r.inverse is None


def test_demons_lncc_force_recovers_under_an_intensity_bias():
    """A smooth multiplicative bias on the moving image (as an MR bias field): the local-correlation
    force (ANTs/dipy SyN's CC force) is insensitive to it and still recovers the deformation."""
    fixed, moving, body, truth = _smooth_pair(2, 64, 1.0, 4.0)
    x = fixed.grid.points()
    bias = 1.0 + 0.5 * torch.tanh(x[..., 0] / 20.0)  # 0.5 .. 1.5 across the image
    moving = moving.with_data(moving.data * bias)
    levels = [[4, None, 60], [2, None, 60], [1, 0.0, 60]]
    params = {"metric": "lncc", "window": 5, "max_step_vox": 1.0}
    r = register(fixed, moving, [{"model": "demons", "model_params": params, "levels": levels}], modality="mono")
    start = _epe(TranslationTransform(2), truth, fixed.grid, body)
    epe = _epe(r.transform, truth, fixed.grid, body)
    assert epe < 0.35 * start, (epe, start)
    ssd = register(fixed, moving, [{"model": "demons", "levels": levels}], modality="mono")  # biased by the gain
    assert _epe(ssd.transform, truth, fixed.grid, body) > 2 * epe
    assert float(r.transform.jacobian_determinant(fixed.grid).min()) > 0
    with pytest.raises(MorphregError):
        register(fixed, moving, [{"model": "demons", "model_params": {"metric": "mi"}, "levels": levels}])


def test_demons_preset_is_the_classical_solver_after_affine():
    pair = make_phantom_pair(dim=2, size=48, spacing=1.5, magnitude_mm=3.0)
    r = register(pair.fixed, pair.moving, "demons", levels=[[4, None, 40], [2, None, 40], [1, 0.0, 30]])
    assert [s["model"] for s in r.stages] == ["rigid", "affine", "demons"]
    body = pair.fixed_labels.data[0] > 0
    assert _epe(r.transform, pair.true_transform, pair.fixed.grid, body) < 0.5 * 1.5
    assert r.folding_percent == 0.0 and r.inverse is not None


def test_demons_multimodal_on_mind_features_and_bad_parameters():
    fixed, moving, body, truth = _smooth_pair(2, 64, 1.0, 4.0)
    moving = moving.with_data(torch.cos(3.0 * moving.data) + 0.1 * moving.data)  # non-monotonic remap
    stage = {"model": "demons", "levels": [[4, None, 60], [2, None, 60], [1, 0.0, 60]]}
    r = register(fixed, moving, [stage], modality="multi")
    assert r.stages[0]["model_params"]["features"] == "mind"
    start = _epe(TranslationTransform(2), truth, fixed.grid, body)
    assert _epe(r.transform, truth, fixed.grid, body) < 0.3 * start
    assert float(r.transform.jacobian_determinant(fixed.grid).min()) > 0
    for bad in ({"variant": "fluid"}, {"force": "sideways"}, {"sigma": 2.0}, {"features": "ngf"}):
        with pytest.raises(MorphregError):
            register(fixed, moving, [{**stage, "model_params": bad}])
    with pytest.raises(MorphregError):
        register(fixed, moving, [{**CONVEX, "model_params": {"grid_spacing": 3}}])


# ----- convex (ConvexAdam) ------------------------------------------------------------------------------
def test_cost_volume_and_coupled_convex_find_a_translation():
    grid = Grid([40, 36], [-20.0, -18.0], 1.0)
    image = Image(gaussian_filter(torch.randn(1, 1, *grid.shape, generator=torch.Generator().manual_seed(0)), 1.5)[0], grid)
    shift = TranslationTransform(2, translation=[6.0, -3.0])
    moving = warp(image, shift.inverse(), grid)
    with torch.no_grad():
        field, record = discrete_displacement(StageInputs(image, moving), None, dict(CONVEX_DEFAULTS))
    inner = field[0, :, 8:-8, 8:-8].reshape(2, -1)  # away from the border the moved content left
    # Steps of 3 mm (the coarse grid); smoothing and the soft argmin give sub-step values.
    assert torch.allclose(inner.median(1).values, torch.tensor([6.0, -3.0]), atol=0.5), inner.median(1).values
    assert record["displacements"] == (2 * CONVEX_DEFAULTS["search_steps"] + 1) ** 2
    # Direct check of the pieces: an integer shift of features is the argmin everywhere inside.
    f = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    m = torch.roll(f, shifts=(1, -2), dims=(2, 3))  # m(i + (1, -2)) = f(i)... so d = (1, -2)
    cost, offsets = cost_volume(f, m, (3, 3), aggregate=1)
    u = coupled_convex(cost, offsets, [0.01, 0.1], sigma_vox=0.0)
    assert torch.equal(u[:, 3:9, 3:9].round(), torch.tensor([1.0, -2.0]).view(2, 1, 1).expand(2, 6, 6))


def test_convex_recovers_a_deformation_too_large_for_one_gradient_level():
    fixed, moving, body, truth = _textured_pair(64, magnitude=10.0)
    start = _epe(TranslationTransform(2), truth, fixed.grid, body)
    x = fixed.grid.points()
    mask = ((x / (0.42 * 64 * 1.15)) ** 2).sum(-1) <= 1  # the body and a margin around its edge
    r = register(fixed, moving, [CONVEX], fixed_mask=Image(mask[None].to(torch.uint8), fixed.grid))
    epe = _epe(r.transform, truth, fixed.grid, body)
    assert start > 6.0 and epe < 0.5, (start, epe)
    assert r.folding_percent == 0.0 and r.stages[0]["discrete"]["kept"]
    # The same budget of gradient steps at one resolution (no pyramid, no discrete search) stays far off.
    syn = {**get_preset("syn")[-1], "levels": [[1, 0.0, 100]]}
    epe_syn = _epe(register(fixed, moving, [syn]).transform, truth, fixed.grid, body)
    assert epe_syn > 5 * epe + 1.0, (epe_syn, epe)


def test_convex_multimodal_remapped_pair():
    fixed, moving, body, truth = _smooth_pair(2, 64, 1.0, 4.0)
    # Non-monotonic intensity remapping: a different "modality" with the same anatomy.
    moving = moving.with_data(torch.cos(3.0 * moving.data) + 0.1 * moving.data)
    r = register(fixed, moving, [CONVEX], modality="multi")
    start = _epe(TranslationTransform(2), truth, fixed.grid, body)
    epe = _epe(r.transform, truth, fixed.grid, body)
    assert r.stages[0]["similarity"] == "mind"
    assert epe < 0.6 and epe < 0.25 * start, (epe, start)


def test_convex_3d_textured_ball():
    fixed, moving, body, truth = _textured_pair(32, magnitude=8.0, dim=3, spacing=2.0)
    start = _epe(TranslationTransform(3), truth, fixed.grid, body)
    r = register(fixed, moving, [CONVEX])
    epe = _epe(r.transform, truth, fixed.grid, body)
    assert epe < 0.6 * 2.0 and epe < 0.4 * start, (epe, start)
    assert r.folding_percent == 0.0


def test_convex_preset_after_affine_and_outputs(tmp_path):
    import SimpleITK as sitk

    pair = make_phantom_pair(dim=2, size=48, spacing=1.5, magnitude_mm=4.0)
    levels = [[4, None, 40], [2, None, 30], [1, 0.0, 20]]
    r = register(pair.fixed, pair.moving, "convex", **{"0.levels": levels, "1.levels": levels})
    assert [s["model"] for s in r.stages] == ["rigid", "affine", "convex"]
    assert not any(s["diverged"] for s in r.stages)
    body = pair.fixed_labels.data[0] > 0
    assert _epe(r.transform, pair.true_transform, pair.fixed.grid, body) < 0.5 * 1.5
    assert r.folding_percent == 0.0 and r.inverse is None
    out = r.save(tmp_path / "out")
    tx = sitk.ReadTransform(str(out / "transform.h5"))
    pts = pair.fixed.grid.points()[body][::53]
    ours = r.transform.points(pts).detach().numpy()
    assert np.abs(np.array([tx.TransformPoint(tuple(map(float, p))) for p in pts]) - ours).max() < 1e-3


# ----- CLI: register --report, demo ---------------------------------------------------------------------
def test_cli_register_report(tmp_path):
    from typer.testing import CliRunner

    from morphreg.cli.main import app

    pair = make_phantom_pair(dim=2, size=32, spacing=2.0, magnitude_mm=2.0)
    for name, image in (("f", pair.fixed), ("m", pair.moving), ("fl", pair.fixed_labels), ("ml", pair.moving_labels)):
        write_image(image, tmp_path / f"{name}.nii.gz")
    args = ["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--preset", "rigid", "-q", "--report"]
    res = CliRunner().invoke(app, args + ["-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert str((tmp_path / "out").resolve()) in page and ".tmp" not in page  # the result folder, not the hidden one
    # With labels the report shows label overlap, evaluated independently into metrics.json.
    res = CliRunner().invoke(app, args + ["-o", str(tmp_path / "out2"), "--fixed-labels", str(tmp_path / "fl.nii.gz"),
                                          "--moving-labels", str(tmp_path / "ml.nii.gz")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out2" / "metrics.json").exists()
    assert "Dice" in (tmp_path / "out2" / "report.html").read_text(encoding="utf-8")
    # Without --report nothing extra is written.
    res = CliRunner().invoke(app, args[:-1] + ["-o", str(tmp_path / "out3")])
    assert res.exit_code == 0 and not (tmp_path / "out3" / "report.html").exists()


def test_demo_registers_its_pair(tmp_path):
    from typer.testing import CliRunner

    from morphreg.cli.main import app

    res = CliRunner().invoke(app, ["demo", "--output", str(tmp_path / "demo"), "--dim", "2", "--size", "32", "-q"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "demo"
    for name in ("fixed.nii.gz", "moving.nii.gz", "true_transform.h5", "result/transform.h5", "result/warped.nii.gz",
                 "result/summary.json", "result/warped_labels.nii.gz"):
        assert (out / name).exists(), name
    text = " ".join(res.output.split())
    assert "endpoint error" in text and "Dice" in text and "folding" in text
    # The printed mean endpoint error after registration is well below the one before.
    row = next(line for line in res.output.splitlines() if "mean (mm)" in line)
    before, after = (float(v) for v in row.replace("│", " ").split()[-2:])
    assert after < 0.5 * before, row
