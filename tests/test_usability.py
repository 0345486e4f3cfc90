"""What a new user hits (one test per item of the usability issue that is not covered elsewhere:
output safety and usage errors are in test_faults.py, the README tour and the guide in test_docs.py, the
declared dependencies and start-up in test_packaging.py)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from _cli import cli, one_line_error
from morphreg.data.phantom import make_phantom_pair
from morphreg.image.io import read_image, write_image
from morphreg.register import register
from morphreg.register.modality import modality_evidence
from morphreg.register.presets import PRESETS, parse_override
from morphreg.transforms import AffineTransform
from morphreg.transforms.warp import warp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def ct_pair(tmp_path) -> Path:
    """A 2D phantom pair stored as int16 'CT' (the normal type of CT), names that do not say labels."""
    pair = make_phantom_pair(dim=2, size=40, spacing=1.5, seed=0)
    folder = tmp_path / "ct"
    for name, image in (("fixed", pair.fixed), ("moving", pair.moving)):
        scaled = (image.data * 1000 - 500).round().to(torch.int16)
        write_image(image.with_data(scaled), folder / f"{name}.mha")
    write_image(pair.fixed_labels, folder / "fixed_labels.nii.gz")
    write_image(pair.moving_labels, folder / "moving_labels.nii.gz")
    return folder


# ----- 1. integer intensity images are intensity images ---------------------------------------------------
def test_int16_ct_is_warped_linearly_like_register_does(tmp_path, ct_pair, capfd):
    out = tmp_path / "out"
    code, _, err = cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", out, "-p", "rigid", "-q")
    assert code == 0, err
    for extra in ([], ["--interpolation", "linear"]):
        code, _, err = cli(capfd, "apply", out / "transform.h5", ct_pair / "moving.mha", "-r", ct_pair / "fixed.mha",
                           "-o", tmp_path / "w.nii.gz", *extra)
        assert code == 0, err
        applied = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "w.nii.gz")))
        registered = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.mha")))
        assert applied.dtype == np.float32 and np.abs(applied - registered).max() < 1e-3
    code, out_text, _ = cli(capfd, "info", ct_pair / "moving.mha")
    assert "intensity image" in out_text and "labels" not in out_text.split("kind")[1]
    code, out_text, _ = cli(capfd, "info", ct_pair / "fixed_labels.nii.gz")
    assert "label map" in out_text and re.search(r"\d+ non-zero", out_text)
    code, _, err = cli(capfd, "apply", out / "transform.h5", ct_pair / "moving_labels.nii.gz", "-r", ct_pair / "fixed.mha",
                       "-o", tmp_path / "wl.nii.gz")
    assert code == 0 and sitk.ReadImage(str(tmp_path / "wl.nii.gz")).GetPixelID() == sitk.sitkInt16


# ----- 3. modality detection and the default on pairs of different contrast ------------------------------
def _inverted(image):
    return image.with_data(image.data.max() - image.data)


@pytest.mark.parametrize("dim", [2, 3])
def test_modality_detection_on_synthetic_pairs(dim):
    pair = make_phantom_pair(dim=dim, size=40 if dim == 2 else 28, spacing=1.5, seed=0)
    assert modality_evidence(pair.fixed, pair.moving)["modality"] == "mono"
    inverted = modality_evidence(pair.fixed, _inverted(pair.moving))
    assert inverted["modality"] == "multi" and inverted["same_outline"]
    monotone = pair.moving.with_data((pair.moving.data - pair.moving.data.min()).sqrt())  # same contrast order
    assert modality_evidence(pair.fixed, monotone)["modality"] == "mono"


def test_default_on_an_inverted_contrast_registers_and_stays_plausible():
    pair = make_phantom_pair(dim=2, size=48, spacing=1.5, seed=0)
    r = register(pair.fixed, _inverted(pair.moving), "default")
    assert r.preset == "multicontrast" and r.modality == "multi"
    fl, ml = pair.fixed_labels.data[0], pair.moving_labels.data[0]
    wl = warp(pair.moving_labels, r.transform, pair.fixed.grid, "label").data[0]
    dice = [float(2 * ((fl == v) & (x == v)).sum() / ((fl == v).sum() + (x == v).sum())) for x in (ml, wl) for v in (1, 2)]
    assert np.mean(dice[2:]) > np.mean(dice[:2]) + 0.1  # measured 0.80 -> 0.94
    assert r.folding_percent == 0.0


@pytest.mark.realdata
def test_modality_of_the_real_pairs(shared_data):
    head = shared_data / "ct_head_2d"
    t1, t2 = read_image(head / "fixed.mha"), read_image(head / "moving.mha")
    assert modality_evidence(t1, t2)["modality"] == "multi" and modality_evidence(t1, t2)["same_outline"]
    moved = warp(t1, AffineTransform(2, translation=[10.0, 5.0]), t1.grid, "linear")
    assert modality_evidence(t1, moved)["modality"] == "mono"
    for i in (0, 30, 60):
        us = read_image(shared_data / "prostate_mr_trus" / "fixed_images" / f"obs{i:03d}.nii.gz")
        mr = read_image(shared_data / "prostate_mr_trus" / "moving_images" / f"obs{i:03d}.nii.gz")
        e = modality_evidence(us, mr)
        assert e["modality"] == "multi" and not e["same_outline"]
    brain = shared_data / "brain_t1"
    assert modality_evidence(read_image(brain / "subject_a_t1.nii.gz"), read_image(brain / "subject_b_t1.nii.gz"))["modality"] == "mono"


@pytest.mark.realdata
def test_default_on_the_t1_t2_head_pair_does_not_distort(shared_data, tmp_path, capfd):
    head = shared_data / "ct_head_2d"
    code, out, err = cli(capfd, "register", head / "fixed.mha", head / "moving.mha", "-o", tmp_path / "out", "-q")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["preset"] == "multicontrast" and summary["folding_percent"] == 0.0
    j = summary["quality"]["jacobian"]
    assert 0.1 <= j["min"] and j["max"] <= 10  # the old default reached det J 29 here (and folded)
    moved = [s for s in summary["stages"] if not s.get("diverged")]
    assert [s["model"] for s in moved][:2] == ["rigid", "affine"]


# ----- 4. / 5. the report and the console say what happened ---------------------------------------------
def test_discarded_stage_and_identity_are_warned_on_console_and_in_report(tmp_path, ct_pair, capfd):
    # A stage limited to 0 mm of motion by its own check is always discarded: the result is the identity.
    guard = {"similarity": "ncc", "max_move_mm": 0.0}
    out = tmp_path / "out"
    code, text, err = cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", out, "-p", "rigid",
                          "--set", f"guard={json.dumps(guard)}", "--fixed-labels", ct_pair / "fixed_labels.nii.gz",
                          "--moving-labels", ct_pair / "moving_labels.nii.gz", "--report", "-q")
    assert code == 0, err
    assert "stage 0 rigid: ncc + labels, objective" in text and "discarded" in text
    assert "warning: stage 0 (rigid) was discarded" in text and "warning: the result is the identity" in text
    assert "-> " + str(out) in text  # -q still says where the result went
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "class='warn'" in html and "was discarded" in html and "identity transform" in html
    assert "No warnings" not in html and "No timing information" not in html
    assert "stage 0: rigid (discarded)" in html and "ct/moving.mha" in html  # the folder is in the title
    assert "alt='contours'" in html  # label outlines drawn when labels are given


def test_console_names_the_objective_and_its_direction(tmp_path, ct_pair, capfd):
    code, text, _ = cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", tmp_path / "o", "-p", "affine", "-q")
    assert code == 0
    assert re.search(r"final objective \(ncc, lower is better\) -?\d", text)
    assert len(re.findall(r"stage \d (rigid|affine): ncc, objective .* -> .* \(lower is better\), [\d.]+ s", text)) == 2


def test_extreme_det_j_and_inverse_error_are_warnings():
    from morphreg.evaluate.warnings import quality_warnings

    kinds = [w["kind"] for w in quality_warnings({"jacobian": {"folding_percent": 0.0, "min": 0.05, "max": 3.0},
                                                  "displacement": {"max_mm": 4.0},
                                                  "inverse_consistency": {"mean_mm": 0.1, "max_mm": 5.0}}, 1.0)]
    assert kinds == ["det_j", "inverse"]
    assert quality_warnings({"jacobian": {"folding_percent": 0.0, "min": 0.5, "max": 2.0}, "displacement": {"max_mm": 3.0},
                             "inverse_consistency": {"mean_mm": 0.1, "max_mm": 1.0}}, 1.0) == []
    # Measured thresholds: a few extreme voxels (a good brain SyN: 0.01 %) and an inverse error only at the border
    # are not alarms; 0.5 % of extreme voxels, an interior p99 of 1.5 voxels, or a halved volume are.
    trusted = {"jacobian": {"folding_percent": 0.0, "min": 0.043, "max": 11.1, "median": 1.0, "extreme_percent": 0.011},
               "displacement": {"max_mm": 9.0},
               "inverse_consistency": {"mean_mm": 0.12, "max_mm": 6.2,
                                       "interior": {"margin_voxels": 5, "mean_mm": 0.06, "p99_mm": 0.55, "max_mm": 4.4}}}
    assert quality_warnings(trusted, 1.0) == []
    bad = {"jacobian": {**trusted["jacobian"], "extreme_percent": 0.5, "median": 0.545},
           "displacement": {"max_mm": 46.0},
           "inverse_consistency": {**trusted["inverse_consistency"], "interior": {"margin_voxels": 5, "mean_mm": 0.3, "p99_mm": 1.5}}}
    texts = {w["kind"]: w["text"] for w in quality_warnings(bad, 1.0)}
    assert list(texts) == ["det_j", "volume", "inverse"]
    assert "0.5 % of voxels" in texts["det_j"] and "median det J 0.545" in texts["volume"] and "p99 1.5 mm" in texts["inverse"]
    identity = quality_warnings({"jacobian": {"folding_percent": 0.0, "median": 1.0}, "displacement": {"max_mm": 0.0}}, 1.0)
    assert identity[0]["kind"] == "identity" and "--fixed-labels" in identity[0]["text"] and "morphreg models" in identity[0]["text"]
    # summary.json keeps NaN as null: the messages must still be written.
    from morphreg.evaluate.warnings import stage_warnings

    text = stage_warnings([{"index": 1, "model": "svf", "diverged": True, "initial_objective": None, "final_objective": None},
                           {"index": 2, "model": "rigid", "diverged": True, "guard": {"accepted": False, "similarity": "lncc",
                                                                                  "before": None, "after": 1.0}}])
    assert "n/a -> n/a" in text[0]["text"] and "lncc n/a -> 1" in text[1]["text"]


# ----- 8. evaluate says which grid it measured on ----------------------------------------------------------
def test_evaluate_without_reference_says_which_grid(tmp_path, ct_pair, capfd):
    out = tmp_path / "out"
    assert cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", out, "-p", "syn", "-q")[0] == 0
    code, text, _ = cli(capfd, "evaluate", "-t", out / "displacement.mha", "-o", tmp_path / "m.json")
    assert code == 0 and "measured on the transform's own grid" in text
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert metrics["reference_grid"]["source"] == "the transform's own grid"
    assert any("--reference" in n for n in metrics["notes"])
    code, text, _ = cli(capfd, "evaluate", "-t", out / "transform.h5", "-r", ct_pair / "fixed.mha", "-o", tmp_path / "m2.json")
    assert code == 0 and "measured on the reference grid: 40 x 40" in text


# ----- 10. the controls ANTs / elastix users expect -----------------------------------------------------
def test_set_overrides_parse_yaml_and_reach_the_stages(tmp_path, ct_pair, capfd):
    assert parse_override("2.levels=[[4,1vox,20]]") == {"2.levels": [[4, "1vox", 20]]}
    assert parse_override("bspline.model_params.control_spacing_mm=15") == {"bspline.model_params": {"control_spacing_mm": 15}}
    out = tmp_path / "out"
    code, _, err = cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", out, "-p", "syn", "-q",
                       "--set", "levels=[[2,null,5]]", "--set", "svf.penalties=[{name: diffusion, weight: 0.7}]",
                       "--set", "optimizer.lr=0.25")
    assert code == 0, err
    stages = json.loads((out / "summary.json").read_text(encoding="utf-8"))["stages"]
    assert all(len(s["levels"]) == 1 and s["levels"][0][2] == 5 and s["optimizer"]["lr"] == 0.25 for s in stages)
    assert stages[2]["penalties"] == [{"name": "diffusion", "weight": 0.7}]
    assert stages[2]["optimizer"]["name"] == "adam"  # a sub-key changes, the rest of the dict stays
    code, _, err = cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", tmp_path / "x", "--set", "lvls=3")
    assert code == 2
    one_line_error(err, "lvls=3", "levels")


def test_preset_file_round_trip_and_presets_command(tmp_path, ct_pair, capfd):
    code, listing, _ = cli(capfd, "presets", "list")
    assert code == 0 and all(name in listing for name in PRESETS)
    code, text, _ = cli(capfd, "presets", "show", "affine")
    assert code == 0 and "&id" not in text
    assert yaml.safe_load(text)["stages"] == PRESETS["affine"]
    mine = yaml.safe_load(text)
    mine["stages"][1]["levels"] = [[4, None, 5], [2, None, 3]]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(mine), encoding="utf-8")
    code, _, err = cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", tmp_path / "out",
                       "--preset-file", tmp_path / "mine.yaml", "-q")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["stages"][1]["levels"][-1][2] == 3 and "mine.yaml" in summary["preset"]
    (tmp_path / "bad.yaml").write_text("stages:\n- {model: rigid, iterations: 3}\n", encoding="utf-8")
    code, _, err = cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", tmp_path / "o2",
                       "--preset-file", tmp_path / "bad.yaml")
    assert code == 2
    one_line_error(err, "bad.yaml", "iterations")


def test_initial_transform_threads_and_format(tmp_path, ct_pair, capfd):
    first = tmp_path / "first"
    assert cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", first, "-p", "rigid", "-q")[0] == 0
    start = json.loads((first / "summary.json").read_text(encoding="utf-8"))["stages"][0]["final_objective"]
    out = tmp_path / "second"
    code, _, err = cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", out, "-p", "affine", "-q",
                       "--initial-transform", first / "transform.h5", "--threads", "2", "--format", "nrrd")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert math.isclose(summary["stages"][0]["initial_objective"], start, rel_tol=1e-4)  # it started there
    assert summary["inputs"]["initial_transform"] == str(first / "transform.h5")
    assert (out / "warped.nrrd").is_file() and (out / "displacement.nrrd").is_file()
    assert (first / "warped.mha").is_file()  # auto: the fixed image's format
    assert torch.get_num_threads() == 2  # --threads reached torch (the module runs with 1 otherwise)
    torch.set_num_threads(1)
    code, _, err = cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", tmp_path / "x", "--format", "png")
    assert code == 2
    one_line_error(err, "--format")


@pytest.mark.parametrize("setting, named", [
    ("1.levels=[[4,null,-5]]", "iterations = -5"), ("levels=[[0.5,0,10]]", "shrink = 0.5"),
    ("optimizer.lr=-0.1", "optimizer.lr = -0.1"), ("svf.penalties=[{name: diffusion, weight: -1}]", "weight = -1"),
    ("svf.model_params.field_shrink=0", "field_shrink = 0"), ("svf.similarity_params={lncc: {window: 2.5}}", "window = 2.5"),
    ("optimizer.tolerance=.nan", "tolerance = nan"), ("levels=[[2,-1vox,5]]", "sigma = '-1vox'"),
])
def test_numeric_settings_out_of_range_are_refused_before_work(tmp_path, ct_pair, capfd, setting, named):
    out = tmp_path / "out"
    code, stdout, err = cli(capfd, "register", ct_pair / "fixed.mha", ct_pair / "moving.mha", "-o", out, "-p", "syn",
                            "--set", setting)
    assert code == 2 and not out.exists() and "objective" not in stdout
    assert named in one_line_error(err, "stage", "must be")


def test_every_preset_passes_the_range_checks():
    from morphreg.register.api import resolve_stages
    from morphreg.register.presets import PRESETS

    for name in PRESETS:
        resolve_stages(name)
