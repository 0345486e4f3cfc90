"""Independent evaluation: analytic shapes, landmarks, transform quality, statistics, CLI, and a
cross-check against SimpleITK's overlap and Hausdorff filters on real prostate labels."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import stats as sps

from _evaluate_fixtures import ball
from morphreg.errors import MorphregError
from morphreg.evaluate import (
    PointSet, compare, comparison_markdown, evaluate_registration, flatten, inverse_consistency, jacobian_determinant,
    jacobian_stats, label_centroids, load_cases, markdown_table, mse, ncc, nmi, overlap, paired_wilcoxon,
    read_landmarks, rigidity, ssim, summarize, surface, surface_distances, tre, write_metrics,
)
from morphreg.image import Grid, Image, to_sitk
from morphreg.transforms import (
    AffineTransform, DisplacementFieldTransform, RigidTransform, TranslationTransform, warp,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PROSTATE = DATA / "prostate_mr_trus"
ROT = np.array([[0.0, -1.0, 0.0], [0.6, 0.0, -0.8], [0.8, 0.0, 0.6]])  # an oblique orthonormal direction


def _img(mask_or_labels, grid, name="labels") -> Image:
    return Image(torch.as_tensor(np.asarray(mask_or_labels).astype(np.int16))[None] if np.asarray(mask_or_labels).ndim == grid.dim
                 else torch.as_tensor(np.asarray(mask_or_labels).astype(np.uint8)), grid, name)


# ----- overlap and surface distances on analytic shapes ---------------------------------------------
def test_shifted_cube_anisotropic_oblique():
    grid = Grid((20, 18, 16), origin=(3.0, -2.0, 7.0), spacing=(0.7, 1.2, 2.0), direction=ROT)
    a = np.zeros(grid.shape, bool)
    b = np.zeros(grid.shape, bool)
    a[3:13, 4:14, 5:15] = True  # tensor order (z, y, x): 10 voxels per axis
    b[5:15, 4:14, 5:15] = True  # shifted 2 voxels along z (2.0 mm spacing)
    ov = overlap(_img(a, grid), _img(b, grid))
    assert ov["labels"]["1"]["dice"] == pytest.approx(0.8)
    assert ov["labels"]["1"]["jaccard"] == pytest.approx(8 / 12)
    assert ov["labels"]["1"]["reference_volume_mm3"] == pytest.approx(1000 * 0.7 * 1.2 * 2.0)
    sd = surface_distances(a, b, grid)
    assert sd["hausdorff_mm"] == pytest.approx(4.0)  # 2 voxels x 2 mm; the direction does not matter
    assert 0 < sd["assd_mm"] < sd["hd95_mm"] <= sd["hausdorff_mm"]


def test_concentric_cubes_exact_hausdorff_and_dice():
    spacing = np.array([0.5, 1.0, 2.5])
    grid = Grid((21, 21, 21), spacing=spacing)
    a = np.zeros(grid.shape, bool)
    b = np.zeros(grid.shape, bool)
    a[7:14, 7:14, 7:14] = True  # half side 3 voxels
    b[5:16, 5:16, 5:16] = True  # half side 5 voxels
    sd = surface_distances(a, b, grid)
    # The outer cube's corner is farthest from the inner surface: its distance to the inner corner.
    assert sd["hausdorff_mm"] == pytest.approx(2 * np.linalg.norm(spacing))
    assert overlap(_img(a, grid), _img(b, grid))["labels"]["1"]["dice"] == pytest.approx(2 * 7**3 / (7**3 + 11**3))


def test_concentric_spheres_anisotropic():
    grid = Grid((56, 46, 34), spacing=(0.5, 0.6, 0.8))
    c = grid.center()
    a, b = ball(grid, c, 8.0), ball(grid, c, 10.0)
    sd = surface_distances(a, b, grid)
    for key in ("hausdorff_mm", "hd95_mm", "assd_mm"):
        assert sd[key] == pytest.approx(2.0, abs=0.8), key
    assert sd["assd_mm"] == pytest.approx(2.0, abs=0.35)
    assert overlap(_img(a, grid), _img(b, grid))["labels"]["1"]["dice"] == pytest.approx(2 * 512 / (512 + 1000), abs=0.02)


@pytest.mark.parametrize("dim", [2, 3])
def test_surface_distances_on_the_masks_box_equal_the_whole_image_ones(dim):
    """Nearest surface points on the masks' joint bounding box (+1 voxel): the same values as an exact
    distance transform of the whole grid, also for irregular masks far from each other and for a mask
    on the image border."""
    from scipy import ndimage

    from morphreg.evaluate import surface_voxels

    def whole_image(a, b, grid):
        return ndimage.distance_transform_edt(~surface_voxels(b), sampling=grid.spacing[::-1])[surface_voxels(a)]

    rng = np.random.default_rng(3)
    grid = Grid((40, 36, 30)[:dim], spacing=(0.7, 1.1, 1.9)[:dim])
    for trial in range(3):
        blobs = ndimage.gaussian_filter(rng.random(grid.shape), 2.0)
        a, b = np.zeros(grid.shape, bool), np.zeros(grid.shape, bool)
        a[(slice(4, 16),) * dim] = blobs[(slice(4, 16),) * dim] > np.median(blobs)  # irregular, one corner
        b[(slice(12, 26),) * dim] = blobs[(slice(12, 26),) * dim] > np.median(blobs)
        if trial == 1:
            a[(0,) * dim] = True  # a voxel in the image's corner
        d_ab, d_ba = whole_image(a, b, grid), whole_image(b, a, grid)
        got = surface_distances(a, b, grid)
        assert got["hausdorff_mm"] == pytest.approx(max(d_ab.max(), d_ba.max()), abs=1e-12)
        assert got["assd_mm"] == pytest.approx((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size), abs=1e-12)
        assert got["hd95_mm"] == pytest.approx(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)), abs=1e-12)


def test_2d_overlap_and_surface():
    grid = Grid((30, 20), spacing=(0.5, 2.0))
    a = np.zeros(grid.shape, bool)
    b = np.zeros(grid.shape, bool)
    a[5:15, 5:25] = True
    b[5:15, 8:28] = True  # shifted 3 voxels along x (0.5 mm)
    assert overlap(_img(a, grid), _img(b, grid))["labels"]["1"]["dice"] == pytest.approx(17 / 20)
    assert surface_distances(a, b, grid)["hausdorff_mm"] == pytest.approx(1.5)


def test_integer_and_one_hot_maps_agree():
    grid = Grid((16, 14, 12), spacing=(1.0, 1.5, 2.0))
    labels = np.zeros(grid.shape, np.int16)
    labels[2:8, 3:9, 4:10] = 1
    labels[6:11, 6:12, 2:7] = 2
    moved = np.roll(labels, 1, axis=2)
    ints = overlap(_img(labels, grid), _img(moved, grid))
    onehot = lambda lab: np.stack([lab == 1, lab == 2]).astype(np.uint8)  # noqa: E731
    hot = overlap(_img(onehot(labels), grid), _img(onehot(moved), grid))
    assert [ints["labels"][k]["dice"] for k in ("1", "2")] == pytest.approx([hot["labels"][k]["dice"] for k in ("ch0", "ch1")])
    assert ints["mean"]["dice"] == pytest.approx(hot["mean"]["dice"])
    s_int, s_hot = surface(_img(labels, grid), _img(moved, grid)), surface(_img(onehot(labels), grid), _img(onehot(moved), grid))
    assert s_int["labels"]["2"]["hd95_mm"] == pytest.approx(s_hot["labels"]["ch1"]["hd95_mm"])


def test_different_grids_refused_or_resampled_with_note():
    coarse = Grid((10, 10, 10), spacing=2.0)
    fine = Grid((20, 20, 20), origin=(-0.5, -0.5, -0.5), spacing=1.0)  # same physical region
    a = np.zeros(coarse.shape, bool)
    a[2:8, 2:8, 2:8] = True
    b = np.zeros(fine.shape, bool)
    b[3:15, 3:15, 3:15] = True  # the same cube on the fine grid
    with pytest.raises(MorphregError, match="different grid"):
        overlap(_img(a, coarse), _img(b, fine), resample=False)
    res = overlap(_img(a, coarse), _img(b, fine))
    assert any("resampled" in n for n in res["notes"])
    assert res["labels"]["1"]["dice"] == pytest.approx(1.0)


def test_empty_labels_are_nan_with_note():
    grid = Grid((12, 12, 12))
    a = np.zeros(grid.shape, np.int16)
    a[2:6, 2:6, 2:6] = 1
    a[7:10, 7:10, 7:10] = 2
    b = np.where(a == 2, 0, a)  # label 2 lost
    ov = overlap(_img(a, grid), _img(b, grid), keys=["1", "2", "3"])
    assert ov["labels"]["1"]["dice"] == 1.0 and ov["labels"]["2"]["dice"] == 0.0
    assert math.isnan(ov["labels"]["3"]["dice"])
    assert any("label 2" in n and "missing" in n for n in ov["notes"]) and any("label 3" in n for n in ov["notes"])
    assert ov["mean"]["dice"] == pytest.approx(0.5)  # NaN skipped
    sd = surface(_img(a, grid), _img(b, grid))
    assert math.isnan(sd["labels"]["2"]["hausdorff_mm"]) and sd["labels"]["1"]["hausdorff_mm"] == 0.0


# ----- landmarks -----------------------------------------------------------------------------------
def test_tre_of_known_affine():
    rng = np.random.default_rng(0)
    f = rng.uniform(-40, 40, (7, 3))
    m = np.array([[1.05, 0.1, 0.0], [-0.08, 0.97, 0.02], [0.0, 0.03, 1.1]])
    t = AffineTransform(3, matrix=m, translation=[3.0, -4.0, 2.0])
    offsets = rng.normal(0, 1.0, (7, 3))
    moving = f @ m.T + [3.0, -4.0, 2.0] + offsets
    res = tre(PointSet(f), PointSet(moving), t)
    assert [p["final_mm"] for p in res["points"]] == pytest.approx(np.linalg.norm(offsets, axis=1), abs=1e-3)
    assert [p["initial_mm"] for p in res["points"]] == pytest.approx(np.linalg.norm(moving - f, axis=1))
    assert res["final"]["mean_mm"] == pytest.approx(np.linalg.norm(offsets, axis=1).mean(), abs=1e-3)


def test_landmark_readers(tmp_path):
    lps = np.array([[1.0, 2.0, 3.0], [-4.5, 5.0, 6.25]])
    (tmp_path / "a.csv").write_text("name,x,y,z\np1,1,2,3\np2,-4.5,5,6.25\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text("1,2,3\n-4.5,5,6.25\n", encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps({"points": lps.tolist(), "names": ["p1", "p2"]}), encoding="utf-8")
    (tmp_path / "d.json").write_text(json.dumps({"coordinate_system": "RAS", "points": (lps * [-1, -1, 1]).tolist()}), encoding="utf-8")
    (tmp_path / "e.fcsv").write_text("# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n"
                                     "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
                                     "vtkMRMLMarkupsFiducialNode_0,-1,-2,3,0,0,0,1,1,1,0,p1,,\n"
                                     "vtkMRMLMarkupsFiducialNode_1,4.5,-5,6.25,0,0,0,1,1,1,0,p2,,\n", encoding="utf-8")
    (tmp_path / "f.fcsv").write_text("# CoordinateSystem = LPS\nid0,1,2,3\nid1,-4.5,5,6.25\n", encoding="utf-8")
    (tmp_path / "g.txt").write_text("point\n2\n1 2 3\n-4.5 5 6.25\n", encoding="utf-8")
    (tmp_path / "h.mrk.json").write_text(json.dumps({"markups": [{"coordinateSystem": "RAS", "controlPoints": [
        {"label": "p1", "position": [-1, -2, 3]}, {"label": "p2", "position": [4.5, -5, 6.25]}]}]}), encoding="utf-8")
    for name in ("a.csv", "b.csv", "c.json", "d.json", "e.fcsv", "f.fcsv", "g.txt", "h.mrk.json"):
        ps = read_landmarks(tmp_path / name)
        np.testing.assert_allclose(ps.points, lps, err_msg=name)
    assert read_landmarks(tmp_path / "e.fcsv").names == ["p1", "p2"]
    grid = Grid((10, 10, 10), origin=(1.0, 2.0, 3.0), spacing=(2.0, 1.0, 0.5))
    (tmp_path / "i.txt").write_text("index\n1\n1 2 4\n", encoding="utf-8")
    np.testing.assert_allclose(read_landmarks(tmp_path / "i.txt", grid=grid).points, [[3.0, 4.0, 5.0]])
    with pytest.raises(MorphregError, match="voxel indices"):
        read_landmarks(tmp_path / "i.txt")
    with pytest.raises(MorphregError, match="not found"):
        read_landmarks(tmp_path / "missing.csv")


def test_label_centroids_in_world_mm():
    grid = Grid((20, 20, 20), origin=(10.0, 0.0, -5.0), spacing=(1.0, 2.0, 0.5), direction=np.diag([-1.0, -1.0, 1.0]))
    onehot = np.zeros((2, *grid.shape), np.uint8)
    onehot[0, 4:7, 2:5, 10:13] = 1  # centre index (x, y, z) = (11, 3, 5)
    cen = label_centroids(_img(onehot, grid))
    np.testing.assert_allclose(cen.points[0], grid.index_to_world_points([11, 3, 5]))
    assert np.isnan(cen.points[1]).all() and cen.names == ["ch0", "ch1"]


# ----- transform quality -------------------------------------------------------------------------
def test_det_j_of_affine_and_identity():
    grid = Grid((10, 9, 8), spacing=(1.0, 1.5, 2.0), direction=ROT)
    m = np.array([[1.2, 0.1, 0.0], [0.0, 0.9, 0.3], [0.05, 0.0, 1.1]])
    dj = jacobian_determinant(AffineTransform(3, matrix=m), grid)
    np.testing.assert_allclose(dj, np.linalg.det(m), rtol=1e-6)
    st = jacobian_stats(dj)
    assert st["folding_percent"] == 0 and st["sdlogj"] == pytest.approx(0, abs=1e-7)
    ident = jacobian_stats(jacobian_determinant(TranslationTransform(3, translation=[1.0, 2.0, 3.0]), grid))
    # float64 round-off only (det J = det(dT/di) * det(di/dx) on this oblique grid)
    assert ident["sdlogj"] == pytest.approx(0, abs=1e-12) and ident["min"] == pytest.approx(1, abs=1e-12)
    assert ident["max"] == pytest.approx(1, abs=1e-12)


def test_det_j_of_known_folding_field():
    grid = Grid((40, 6, 5), spacing=(0.5, 1.0, 1.0))
    x = grid.points(dtype=torch.float64)[..., 0]
    a, w, h = 1.5, 1.0, 0.5
    u = torch.zeros(3, *grid.shape, dtype=torch.float64)
    u[0] = a * torch.sin(w * x)
    dj = jacobian_determinant(DisplacementFieldTransform(u, grid, parameter=False), grid)
    # Central differences of a sine are exact up to the factor sin(w h) / (w h).
    expected = 1 + a * math.sin(w * h) / h * torch.cos(w * x).numpy()
    np.testing.assert_allclose(dj[..., 1:-1], expected[..., 1:-1], atol=1e-5)
    inner = np.zeros(grid.shape, bool)
    inner[..., 1:-1] = True
    st = jacobian_stats(dj, inner)
    assert st["folding_percent"] == pytest.approx(100 * (expected[inner] <= 0).mean())
    assert 0 < st["folding_percent"] < 100 and st["min"] < 0
    assert np.isfinite(st["sdlogj"])


def test_inverse_consistency_and_rigidity():
    grid = Grid((8, 8, 8), spacing=(1.0, 2.0, 1.5))
    t = RigidTransform(3, angles=[0.1, -0.2, 0.3], translation=[1.0, 2.0, -3.0], center=grid.center())
    good = inverse_consistency(t, t.inverse(), grid)
    assert good["max_mm"] < 1e-4
    off = TranslationTransform(3, translation=[0.3, 0.0, 0.4]).compose(t.inverse())
    assert inverse_consistency(t, off, grid)["mean_mm"] == pytest.approx(0.5, abs=1e-4)
    mask = np.ones(grid.shape, bool)
    r = rigidity(t, grid, mask)
    assert r["det_mean"] == pytest.approx(1.0, abs=1e-5) and r["orthonormality_error_max"] < 1e-5
    s = rigidity(AffineTransform(3, matrix=np.eye(3) * 1.1), grid, mask)
    assert s["det_mean"] == pytest.approx(1.331, abs=1e-5)
    assert s["orthonormality_error_mean"] == pytest.approx(0.21 * math.sqrt(3), abs=1e-5)


def test_intensity_measures():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(12, 13, 14))
    assert ncc(a, a) == pytest.approx(1.0) and ncc(a, -2 * a + 3) == pytest.approx(-1.0)
    assert mse(a, a + 0.5) == pytest.approx(0.25)
    assert nmi(a, a) == pytest.approx(2.0) and 1.0 <= nmi(a, rng.normal(size=a.shape)) < 1.2
    assert ssim(a, a) == pytest.approx(1.0) and ssim(a, rng.normal(size=a.shape)) < 0.2


# ----- statistics -----------------------------------------------------------------------------------
def test_summaries_wilcoxon_and_tables(tmp_path):
    s = summarize([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert s["n"] == 4 and s["median"] == 2.5 and s["iqr"] == pytest.approx(1.5) and s["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    rng = np.random.default_rng(2)
    a = {f"c{i}": float(v) for i, v in enumerate(rng.normal(0.7, 0.05, 12))}
    b = {k: v + 0.03 + float(rng.normal(0, 0.01)) for k, v in a.items()}
    w = paired_wilcoxon(a, b)
    ref = sps.wilcoxon([b[k] - a[k] for k in a])
    assert w["n"] == 12 and w["p_value"] == pytest.approx(ref.pvalue) and w["median_difference"] > 0
    assert math.isnan(paired_wilcoxon({"x": 1.0}, {"x": 2.0})["p_value"])
    flat = flatten({"overlap": {"mean": {"dice": 0.5}, "labels": {"1": {"dice": None}}}, "notes": ["x"]})
    assert flat["overlap/mean/dice"] == 0.5 and math.isnan(flat["overlap/labels/1/dice"]) and "notes" not in flat
    for method, vals in (("A", a), ("B", b)):
        for case, v in vals.items():
            (tmp_path / method / case).mkdir(parents=True)
            (tmp_path / method / case / "metrics.json").write_text(json.dumps({"overlap": {"mean": {"dice": v}}}), encoding="utf-8")
    methods = {m: load_cases(tmp_path / m) for m in ("A", "B")}
    res = compare(methods)
    assert res["overlap/mean/dice"]["wilcoxon"]["B"]["p_value"] == pytest.approx(ref.pvalue)
    md = comparison_markdown(res)
    assert md.startswith("| metric | A | B |") and "overlap/mean/dice" in md
    assert markdown_table(["a", "b"], [["x", 1.23456]]).splitlines()[2] == "| x | 1.235 |"


# ----- the whole evaluation and its CLI --------------------------------------------------------------
def test_evaluate_registration_and_cli(tmp_path):
    from typer.testing import CliRunner
    import typer

    from _evaluate_fixtures import small_case
    from morphreg.cli.evaluate import compare_cmd, evaluate_cmd
    from morphreg.image import write_image

    fixed, moving, fl, ml, t = small_case()
    m = evaluate_registration(t, fl, ml, fixed=fixed, moving=moving, mask=fl)
    assert m["overlap"]["mean"]["dice"] > m["initial"]["overlap"]["mean"]["dice"]
    assert m["centroid_tre"]["final"]["mean_mm"] < m["centroid_tre"]["initial"]["mean_mm"]
    assert m["transform"]["jacobian"]["folding_percent"] == 0 and "not an independent" in m["intensity"]["note"]
    for name, im in (("fl", fl), ("ml", ml)):
        write_image(im, tmp_path / f"{name}.nii.gz")
    t.save(tmp_path / "t.h5")
    (tmp_path / "f.csv").write_text("x,y,z\n0,0,0\n5,5,5\n", encoding="utf-8")
    (tmp_path / "m.csv").write_text("x,y,z\n0,2,0\n5,7,6\n", encoding="utf-8")
    app = typer.Typer()
    app.command("evaluate")(evaluate_cmd)
    app.command("compare")(compare_cmd)
    out = tmp_path / "run" / "metrics.json"
    r = CliRunner().invoke(app, ["evaluate", "--fixed-labels", str(tmp_path / "fl.nii.gz"), "--moving-labels", str(tmp_path / "ml.nii.gz"),
                                 "--transform", str(tmp_path / "t.h5"), "--fixed-landmarks", str(tmp_path / "f.csv"),
                                 "--moving-landmarks", str(tmp_path / "m.csv"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert [p["final_mm"] for p in saved["tre"]["points"]] == pytest.approx([0.0, 1.0], abs=1e-4)
    assert saved["overlap"]["mean"]["dice"] == pytest.approx(m["overlap"]["mean"]["dice"])
    r = CliRunner().invoke(app, ["compare", str(out), str(out), "--csv", str(tmp_path / "c.csv")])
    assert r.exit_code == 0 and "overlap/mean/dice" in r.output and (tmp_path / "c.csv").exists()
    r = CliRunner().invoke(app, ["evaluate", "--fixed-landmarks", str(tmp_path / "f.csv"), "--transform", str(tmp_path / "t.h5"),
                                "-o", str(out)])
    assert isinstance(r.exception, MorphregError)


def test_write_metrics_turns_nan_into_null(tmp_path):
    path = write_metrics({"a": float("nan"), "b": np.float64(1.5)}, tmp_path / "m.json")
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": None, "b": 1.5}


# ----- cross-check with SimpleITK on real labels ----------------------------------------------------
def _sitk_surface(a: sitk.Image, b: sitk.Image) -> tuple[float, float, float]:
    """HD, HD95 (max of directed 95th percentiles) and ASSD from ITK's contours and Maurer distance maps."""
    ca, cb = sitk.LabelContour(a, fullyConnected=False), sitk.LabelContour(b, fullyConnected=False)
    da = sitk.GetArrayFromImage(sitk.Abs(sitk.SignedMaurerDistanceMap(ca, squaredDistance=False, useImageSpacing=True)))
    db = sitk.GetArrayFromImage(sitk.Abs(sitk.SignedMaurerDistanceMap(cb, squaredDistance=False, useImageSpacing=True)))
    sa, sb = sitk.GetArrayFromImage(ca) > 0, sitk.GetArrayFromImage(cb) > 0
    d_ab, d_ba = db[sa], da[sb]
    return (float(max(d_ab.max(), d_ba.max())), float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))),
            float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)))


@pytest.mark.realdata
@pytest.mark.parametrize("kind", ["translation", "nonrigid_anisotropic"])
def test_prostate_labels_match_simpleitk(kind):
    path = PROSTATE / "fixed_labels" / "obs000.nii.gz"
    if not path.exists():
        pytest.skip(f"real data absent: {path} (clone the project beside shared/)")
    from morphreg.image import read_image

    gland = read_image(path)
    gland = gland.with_data(gland.data[:1])
    if kind == "translation":
        grid, t = gland.grid, TranslationTransform(3, translation=[3.0, -2.0, 4.5])
    else:  # a smooth non-rigid warp onto an anisotropic grid
        grid = gland.grid.with_spacing([1.0, 1.5, 2.5])
        x = grid.points(dtype=torch.float64)
        u = torch.zeros(3, *grid.shape, dtype=torch.float64)
        u[0] = 3 * torch.sin(x[..., 1] / 9.0)
        u[2] = 2 * torch.cos(x[..., 0] / 7.0)
        t = DisplacementFieldTransform(u, grid, parameter=False)
        gland = warp(gland, None, grid, "nearest")
    moved = warp(gland, t, grid, "nearest")
    ov, sd = overlap(gland, moved)["labels"]["1"], surface(gland, moved)["labels"]["1"]
    a, b = to_sitk(gland), to_sitk(moved)
    lo = sitk.LabelOverlapMeasuresImageFilter()
    lo.Execute(a, b)
    hd = sitk.HausdorffDistanceImageFilter()
    hd.Execute(a, b)
    assert 0.5 < ov["dice"] < 0.98
    assert ov["dice"] == pytest.approx(lo.GetDiceCoefficient(1), abs=1e-12)
    assert ov["jaccard"] == pytest.approx(lo.GetJaccardCoefficient(1), abs=1e-12)
    assert sd["hausdorff_mm"] == pytest.approx(hd.GetHausdorffDistance(), abs=1e-4)
    s_hd, s_hd95, s_assd = _sitk_surface(a, b)
    assert sd["hausdorff_mm"] == pytest.approx(s_hd, abs=1e-4)
    assert sd["hd95_mm"] == pytest.approx(s_hd95, abs=1e-4)
    assert sd["assd_mm"] == pytest.approx(s_assd, abs=1e-4)


# ----- centroid TRE = |T(p) - q| (one definition: the benchmarks'), landmark channels ------------------------
def _sitk_centroid_tre(fixed_labels: Path, moving_labels: Path, transform: Path) -> list[float]:
    """Independent: SimpleITK centroids (physical) of each channel, p mapped by SimpleITK's transform."""
    import SimpleITK as sitk

    def centroids(path):
        img = sitk.ReadImage(str(path))
        vols = [sitk.VectorIndexSelectionCast(img, k) for k in range(img.GetNumberOfComponentsPerPixel())] \
            if img.GetNumberOfComponentsPerPixel() > 1 else \
            [img[(slice(None),) * 3 + (k,)] for k in range(img.GetSize()[3])]
        out = []
        for v in vols:
            stats = sitk.LabelShapeStatisticsImageFilter()
            stats.Execute(sitk.Cast(v > 0, sitk.sitkUInt8))
            out.append(np.asarray(stats.GetCentroid(1)))
        return out

    t = sitk.ReadTransform(str(transform))
    return [float(np.linalg.norm(np.asarray(t.TransformPoint(tuple(p))) - q))
            for p, q in zip(centroids(fixed_labels), centroids(moving_labels))]


def _stack_pair(tmp_path: Path, shift_mm) -> tuple[Path, Path, Path]:
    """3D one-hot stacks (gland-like ball + two point-like blobs) on two different grids, and a
    constant-displacement transform."""
    import SimpleITK as sitk

    def stack(size, spacing, origin, centres, radii):
        zz, yy, xx = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
        world = [origin[a] + [xx, yy, zz][a] * spacing[a] for a in range(3)]
        chans = [((world[0] - c[0]) ** 2 + (world[1] - c[1]) ** 2 + (world[2] - c[2]) ** 2 <= r * r).astype(np.uint8)
                 for c, r in zip(centres, radii)]
        img = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in chans])
        img.SetSpacing(tuple(spacing) + (1.0,))
        img.SetOrigin(tuple(origin) + (0.0,))
        return img

    centres = [(0.0, 0.0, 0.0), (6.0, -4.0, 3.0), (-5.0, 5.0, -2.0)]
    fixed = stack((30, 28, 26), (1.5, 1.5, 1.5), (-21.0, -20.0, -19.0), centres, (12, 3, 3))
    moved = [tuple(c + s for c, s in zip(ctr, shift_mm)) for ctr in centres]
    moving = stack((36, 34, 30), (1.2, 1.3, 1.4), (-20.0, -22.0, -21.0), moved, (12, 3, 3))
    paths = tmp_path / "fl.nii.gz", tmp_path / "ml.nii.gz", tmp_path / "t.tfm"
    sitk.WriteImage(fixed, str(paths[0]))
    sitk.WriteImage(moving, str(paths[1]))
    tr = sitk.TranslationTransform(3, (0.5 * shift_mm[0], shift_mm[1], 0.0))  # a partial correction
    sitk.WriteTransform(tr, str(paths[2]))
    return paths


def test_centroid_tre_is_t_of_p_minus_q_and_matches_simpleitk(tmp_path):
    from morphreg.evaluate import evaluate_registration
    from morphreg.image.io import read_image
    from morphreg.transforms import load_transform

    fl_path, ml_path, t_path = _stack_pair(tmp_path, (2.5, -1.0, 3.0))
    fl, ml = read_image(fl_path, labels=True), read_image(ml_path, labels=True)
    m = evaluate_registration(load_transform(t_path), fl, ml, landmark_channels="1-")
    assert m["structures"] == {"overlap": ["ch0"], "landmarks": ["ch1", "ch2"]}
    assert list(m["overlap"]["labels"]) == ["ch0"]
    ours = [p["final_mm"] for p in m["centroid_tre"]["points"]]
    expected = _sitk_centroid_tre(fl_path, ml_path, t_path)[1:]
    np.testing.assert_allclose(ours, expected, atol=1e-3)
    # Initial: |p - q|, each centroid on its own grid.
    np.testing.assert_allclose([p["initial_mm"] for p in m["centroid_tre"]["points"]],
                               [float(np.linalg.norm([2.5, -1.0, 3.0]))] * 2, atol=0.3)


@pytest.mark.realdata
def test_centroid_tre_on_prostate_obs005_matches_simpleitk(shared_data, tmp_path):
    """The issue's case: obs005 with a constant 2.5 / -1 / 3 mm displacement."""
    import SimpleITK as sitk

    from morphreg.evaluate import evaluate_registration
    from morphreg.image.io import read_image
    from morphreg.transforms import load_transform

    root = shared_data / "prostate_mr_trus"
    fl_path, ml_path = root / "fixed_labels" / "obs005.nii.gz", root / "moving_labels" / "obs005.nii.gz"
    sitk.WriteTransform(sitk.TranslationTransform(3, (2.5, -1.0, 3.0)), str(tmp_path / "t.tfm"))
    m = evaluate_registration(load_transform(tmp_path / "t.tfm"), read_image(fl_path), read_image(ml_path),
                              landmark_channels="1-")
    ours = [p["final_mm"] for p in m["centroid_tre"]["points"]]
    np.testing.assert_allclose(ours, _sitk_centroid_tre(fl_path, ml_path, tmp_path / "t.tfm")[1:], atol=1e-3)


@pytest.mark.parametrize("one_hot", [False, True])
def test_evaluation_on_structure_boxes_equals_whole_image_measures_and_reports_progress(one_hot):
    """evaluate_registration crops each structure to its joint box: Dice, volumes and surface distances
    equal overlap()/surface() on whole images (integer map and one-hot stack, a structure missing in
    one map); ``structures`` keeps the selected ones; every step reports its parts."""
    from morphreg.evaluate import evaluate_registration
    from morphreg.transforms import AffineTransform
    from morphreg.transforms.warp import warp

    grid = Grid((30, 26, 22), spacing=(1.2, 0.9, 1.6))
    rng = np.random.default_rng(0)
    fixed = np.zeros(grid.shape, np.int16)
    moving = np.zeros(grid.shape, np.int16)
    for value, (lo, hi) in {1: (2, 10), 2: (8, 20), 4: (14, 21)}.items():
        fixed[(slice(lo, hi),) * 3] = value
        moving[(slice(lo + 1, hi + rng.integers(0, 3)),) * 3] = value if value != 4 else 0  # 4 missing in moving
    if one_hot:
        fixed = np.stack([fixed == v for v in (1, 2, 4)]).astype(np.uint8)
        moving = np.stack([moving == v for v in (1, 2, 4)]).astype(np.uint8)
    fl, ml = _img(fixed, grid), _img(moving, grid)
    t = AffineTransform(3, center=grid.center())
    with torch.no_grad():
        t.translation.copy_(torch.tensor([0.6, -0.4, 0.8]))
    steps = []

    def progress(step, parts):
        steps.append([step, parts, 0])
        return lambda: steps[-1].__setitem__(2, steps[-1][2] + 1)

    m = evaluate_registration(t, fl, ml, progress=progress)
    warped = warp(ml, t, grid, "nearest")
    whole_ov, whole_sd = overlap(fl, warped), surface(fl, warped)
    assert list(m["overlap"]["labels"]) == list(whole_ov["labels"])
    for key, values in whole_ov["labels"].items():
        assert m["overlap"]["labels"][key] == pytest.approx(values, nan_ok=True)
        assert m["surface"]["labels"][key] == pytest.approx(whole_sd["labels"][key], nan_ok=True)
    assert [s[0].split(":")[0] for s in steps] == ["warping the moving labels", "overlap, surface distances",
                                                  "centroid TRE of 3 structures", "det J, folding and displacement"]
    assert steps[1][1:] == [6, 6]
    only = evaluate_registration(t, fl, ml, structures="0" if one_hot else "2")
    assert list(only["overlap"]["labels"]) == ["ch0" if one_hot else "2"]
    with pytest.raises(MorphregError, match="select no structure"):
        evaluate_registration(t, fl, ml, structures="7")
