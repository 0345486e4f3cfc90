"""The MR -> TRUS prostate model shipped inside the package (issue 14): found by name, card written by
benchmarks/prostate_model.py, predicts better than the initial alignment on real held-out pairs, and is in
the wheel (so an installed morphreg has it, not only a checkout)."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from _cli import cli
from morphreg.learn.model import load_model
from morphreg.learn.zoo import shipped_models

REPO = Path(__file__).resolve().parents[1]
NAME = "prostate-mr-trus"


def test_the_prostate_model_is_shipped_small_with_its_card():
    path = shipped_models()[NAME]
    assert "prostate" in path.name and path.stat().st_size < 20e6
    net, card = load_model(path)
    assert net.space.dim == 3 and card["name"] == NAME
    for key in ("data", "preprocessing", "loss", "training", "limits"):
        assert card[key], key
    validation = card["summary"]["validation"]
    assert validation["learned"]["pairs"] >= 1 and np.isfinite(validation["learned"]["median_tre_mm"])
    assert card["training"]["steps"] > 0 and card["training"]["seconds"] > 0
    assert json.loads((path.parent / f"{NAME}.json").read_text()) == json.loads(json.dumps(card))  # the same card
    # Its instance optimisation is the label-driven affine on its own segmentations (read from the shipped card's
    # loss; by name it used to fall back to the slower image-driven refinement: 19 s, 6.36 mm).
    from morphreg.learn.predict import instance_stage, refines_on_segmentations, trained_loss

    assert refines_on_segmentations(net, card)
    # Both card shapes give the same training loss to the image-driven refinement too.
    stage = instance_stage({"loss": {"similarity": "mind", "penalties": [{"name": "bending", "weight": 2.0}]}}, 5)
    assert stage["similarity"] == "mind" and stage["penalties"][0]["name"] == "bending"
    assert trained_loss({"config": {"loss": card["loss"]}}) == trained_loss(card) == card["loss"]


@pytest.mark.realdata
@pytest.mark.parametrize("options", [(), ("--instance-optimization", "40")], ids=["network", "instance-optimization"])
def test_the_shipped_model_improves_the_first_three_validation_pairs(shared_data, tmp_path, capfd, options):
    # The first three held-out pairs (obs068-070, chosen by that rule, never trained on): the CLI by name, then
    # the mean TRE and gland Dice against the initial alignment, scored like the benchmarks.
    from morphreg.evaluate.run import evaluate_registration
    from morphreg.image.io import read_image
    from morphreg.transforms import load_transform

    root = shared_data / "prostate_mr_trus"
    tre, tre0, dice, dice0 = [], [], [], []
    for case in ("obs068", "obs069", "obs070"):
        out = tmp_path / case
        code, text, _ = cli(capfd, "predict", NAME, root / "fixed_images" / f"{case}.nii.gz",
                            root / "moving_images" / f"{case}.nii.gz", "-o", out, *options)
        assert code == 0, text
        if options:  # the refinement is the label-driven affine on the network's segmentations: it says so
            assert "final objective (labels, lower is better)" in text and "another grid" not in text, text
        e = evaluate_registration(load_transform(out / "transform.h5"), read_image(root / "fixed_labels" / f"{case}.nii.gz"),
                                  read_image(root / "moving_labels" / f"{case}.nii.gz"), centroid_landmarks=True,
                                  landmark_channels="1-")
        gland = next(iter(e["overlap"]["labels"]))
        dice.append(e["overlap"]["labels"][gland]["dice"])
        dice0.append(e["initial"]["overlap"]["labels"][gland]["dice"])
        tre.append(e["centroid_tre"]["final"]["mean_mm"])
        tre0.append(e["centroid_tre"]["initial"]["mean_mm"])
        assert e["transform"]["jacobian"]["folding_percent"] == 0.0
    assert np.mean(tre) < np.mean(tre0) and np.mean(dice) > np.mean(dice0), (tre0, tre, dice0, dice)


@pytest.mark.slow
def test_the_model_is_in_the_wheel_and_found_by_name_from_it(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("morphreg-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        assert f"morphreg/models/{NAME}.pt" in z.namelist()
        z.extractall(tmp_path / "site")
    code = ("from morphreg.learn.zoo import resolve_model; from morphreg.learn.model import load_model; "
            f"p = resolve_model('{NAME}'); load_model(p); print(p)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert Path(found.stdout.strip()).is_relative_to(tmp_path / "site")


def test_models_command_shows_the_whole_card_as_text_and_json(capfd):
    """Every section of the card, in full (a limit's last words too), as text; --json gives the card itself."""
    _, card = load_model(shipped_models()[NAME])
    code, text, _ = cli(capfd, "models")
    assert code == 0
    for section in ("summary", "data", "preprocessing", "network", "loss", "training", "limits"):
        assert f"\n{section}\n" in text, section
    assert all(limit.split()[-1] in text for limit in card["limits"])
    assert "learned+io20" in text and "{" not in text  # validation rows as a table, not JSON
    assert json.loads(cli(capfd, "models", "--json")[1])[NAME] == json.loads(json.dumps(card))
