"""``morphreg template`` and ``morphreg segment`` (issue 15, items 2-3) and label fusion, on tiny
synthetic images and a Dask LocalCluster."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from _cli import cli, one_line_error
from morphreg.data.phantom import phantom_image, smooth_deformation
from morphreg.evaluate.overlap import dice
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.io import read_image, write_image
from morphreg.population.fusion import fuse, label_map, local_weights
from morphreg.population.segment import segment
from morphreg.population.template import build_template
from morphreg.transforms.warp import warp

QUICK_AFFINE = ["--preset", "affine", "--set", "levels=[[2,null,40],[1,null,40]]"]
RADII_MM = (5.0, 7.0, 9.0, 11.0, 13.0)  # mean 9 mm


def _disc(radius: float, grid: Grid) -> Image:
    x, y = (torch.as_tensor(grid.points(), dtype=torch.float32) - torch.as_tensor(grid.center(), dtype=torch.float32)).unbind(-1)
    return Image(100.0 * ((x * x + y * y).sqrt() < radius).float(), grid)


def _radius_mm(path) -> float:
    image = read_image(path)
    data = image.data[0]
    return float(np.sqrt((data > data.max() / 2).sum().item() * np.prod(image.spacing) / np.pi))


@pytest.fixture()
def discs(tmp_path):
    grid = Grid((40, 40), (-39.0, -39.0), (2.0, 2.0))
    paths = []
    for i, r in enumerate(RADII_MM):
        paths.append(tmp_path / f"disc{i}.nii.gz")
        write_image(_disc(r, grid), paths[-1])
    return paths


def test_template_converges_to_the_mean_shape_and_resumes(discs, tmp_path, capfd):
    # Started from the smallest disc (5 mm), the template must reach the population's mean radius (9 mm).
    out = tmp_path / "t" / "template.nii.gz"
    code, text, _ = cli(capfd, "template", *discs, "-o", out, "--initial", discs[0], "-k", "2", "--quiet", *QUICK_AFFINE)
    assert code == 0, text
    work = tmp_path / "t" / "template_iterations"
    assert _radius_mm(work / "template_00.nii.gz") == pytest.approx(5.0, abs=0.6)
    assert _radius_mm(out) == pytest.approx(9.0, abs=0.6)
    with open(work / "convergence.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["registered"]) for r in rows] == [5, 5]
    assert float(rows[1]["mean_update_mm"]) < float(rows[0]["mean_update_mm"])  # the first update does the work
    # A rerun asking for one more iteration continues (iterations 1-2 are not recomputed).
    stamp = (work / "template_02.nii.gz").stat().st_mtime_ns
    code, text, _ = cli(capfd, "template", *discs, "-o", out, "--initial", discs[0], "-k", "3", "--quiet", *QUICK_AFFINE)
    assert code == 0, text
    assert (work / "template_02.nii.gz").stat().st_mtime_ns == stamp and (work / "template_03.nii.gz").is_file()
    assert _radius_mm(out) == pytest.approx(9.0, abs=0.6)
    # Fewer iterations asked of the finished run: that iteration's template, in the output's own format.
    code, text, _ = cli(capfd, "template", *discs, "-o", tmp_path / "t" / "template.mha", "--initial", discs[0], "-k", "1",
                        "--quiet", *QUICK_AFFINE)
    assert code == 0, text
    assert (tmp_path / "t" / "template.mha").read_bytes().startswith(b"ObjectType")  # a MetaImage, not a gzip
    torch.testing.assert_close(read_image(tmp_path / "t" / "template.mha").data, read_image(work / "template_01.nii.gz").data)
    # Other settings on the same folder: refused in one line, nothing changed.
    code, _, err = cli(capfd, "template", *discs, "-o", out, "--initial", discs[0], "-k", "3", "--step", "0.5", *QUICK_AFFINE)
    assert code == 2 and "other images or settings" in one_line_error(err, "template_iterations")


def test_without_the_shape_update_the_template_keeps_its_start(discs, tmp_path):
    # The control of the test above: step 0 leaves the template nearer the 5 mm disc it started from.
    report = build_template(discs, tmp_path / "still.nii.gz", iterations=2, preset="affine",
                            overrides={"levels": [[2, None, 40], [1, None, 40]]}, step=0.0, initial=discs[0])
    assert _radius_mm(report.template) < 8.0  # measured 7.65 (blurred averages), against 9.0 +- 0.6 above


def test_template_input_errors_are_one_line(discs, tmp_path, capfd):
    code, _, err = cli(capfd, "template", discs[0], "-o", tmp_path / "t.nii.gz")
    assert code == 2 and "at least two images" in one_line_error(err)
    code, _, err = cli(capfd, "template", *discs, "-o", discs[1])
    assert code == 2 and "never writes over an input" in one_line_error(err)
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing\n\n")
    code, _, err = cli(capfd, "template", "--list", listing, "-o", tmp_path / "t.nii.gz")
    assert code == 2 and "names no image" in one_line_error(err, "list.txt")


# ----- multi-atlas segmentation -------------------------------------------------------------------------
def _atlases(folder, n: int = 5, decoy: bool = False):
    """A 2D phantom deformed n + 1 ways (smooth, 4 mm): atlases 0..n-1 and the target (with its truth);
    ``decoy``: one more atlas whose image is noise (its labels are right, but it cannot be registered)."""
    grid = Grid((48, 48), (-47.0, -47.0), (2.0, 2.0))
    image, labels = phantom_image(grid, 0)
    rows = []
    for k in range(n + 1):
        with torch.no_grad():
            t = smooth_deformation(grid, 4.0, seed=10 + k)
            img, lab = warp(image, t, grid, "linear"), warp(labels, t, grid, "label")
        write_image(img, folder / f"image{k}.nii.gz")
        write_image(lab, folder / f"labels{k}.nii.gz")
        rows.append({"id": f"a{k}", "image": f"image{k}.nii.gz", "labels": f"labels{k}.nii.gz"})
    if decoy:
        noise = torch.from_numpy(np.random.default_rng(5).random(grid.shape).astype(np.float32))
        write_image(Image(noise, grid), folder / "decoy.nii.gz")
        rows.insert(n, {"id": "decoy", "image": "decoy.nii.gz", "labels": "labels0.nii.gz"})
    table = folder / "atlases.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "image", "labels"])
        writer.writeheader()
        writer.writerows(rows[:n + decoy])
    return table, folder / f"image{n}.nii.gz", read_image(folder / f"labels{n}.nii.gz", labels=True)


def _mean_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    values = [v for v in torch.unique(b).tolist() if v != 0]
    return float(np.mean([dice((a == v).numpy(), (b == v).numpy()) for v in values]))


def test_multi_atlas_fusion_beats_the_average_single_atlas_and_selection_drops_a_decoy(tmp_path):
    table, target, truth = _atlases(tmp_path, decoy=True)
    result = segment(target, table, "majority", preset="affine", overrides={"levels": [[2, None, 40], [1, None, 40]]},
                     workers=2, select=5, keep_warped=True)
    singles = [_mean_dice(m.data[0], truth.data[0]) for m in result.warped.values()]
    fused = _mean_dice(result.labels.data[0], truth.data[0])
    assert len(singles) == 5 and not result.failed
    assert [a["id"] for a in result.atlases if not a["selected"]] == ["decoy"]  # selection drops the noise atlas
    assert fused > np.mean(singles) + 0.02, (fused, singles)
    conf = result.confidence.data[0]
    assert float(conf.min()) >= 0.2 and float(conf.max()) == 1.0  # 5 voters: the winner has at least 1/5


def test_segment_cli_writes_labels_confidence_and_records(tmp_path, capfd):
    table, target, truth = _atlases(tmp_path, n=3)
    (tmp_path / "broken.nii.gz").write_bytes((tmp_path / "image0.nii.gz").read_bytes()[:200])
    with open(table, "a") as f:
        f.write("bad,broken.nii.gz,labels0.nii.gz\n")
    out = tmp_path / "seg" / "gland.nii.gz"
    code, text, _ = cli(capfd, "segment", target, "--atlases", table, "-o", out, "--fusion", "staple", "--quiet",
                        *QUICK_AFFINE)
    assert code == 3 and "3 of 4 atlases fused (staple)" in text  # the broken atlas is left out, the rest fuse
    seg = read_image(out)
    assert seg.is_label and seg.grid.shape == truth.grid.shape
    assert read_image(tmp_path / "seg" / "gland_confidence.nii.gz").data.max() <= 1.0
    record = json.loads((tmp_path / "seg" / "gland.json").read_text())
    assert record["failed"] == 1 and [a["status"] for a in record["atlases"]] == ["ok", "ok", "ok", "failed"]
    assert "broken.nii.gz" in record["atlases"][3]["error"]
    code, _, err = cli(capfd, "segment", target, "--atlases", table, "-o", target)
    assert code == 2 and "never writes over an input" in one_line_error(err)
    code, _, err = cli(capfd, "segment", target, "--atlases", table, "-o", out, "--fusion", "mean")
    assert code == 2 and "--fusion" in one_line_error(err)
    table.write_text("image,label\nimage0.nii.gz,labels0.nii.gz\n")
    code, _, err = cli(capfd, "segment", target, "--atlases", table, "-o", out)
    assert code == 2 and "unknown column(s) label" in one_line_error(err, "atlases.csv")


# ----- fusion on its own ---------------------------------------------------------------------------------
def test_staple_is_simpleitks_multilabel_staple():
    rng = np.random.default_rng(0)
    truth = np.zeros((30, 40), np.int16)
    truth[8:22, 10:30], truth[12:18, 14:20] = 1, 2
    maps = []
    for _ in range(5):
        m = truth.copy()
        noisy = rng.random(m.shape) < 0.2
        m[noisy] = rng.integers(0, 3, noisy.sum())
        maps.append(torch.from_numpy(m))
    fused, _ = fuse(maps, Grid((40, 30), (0.0, 0.0), (1.0, 1.0)), "staple")
    reference = sitk.GetArrayFromImage(sitk.MultiLabelSTAPLE([sitk.GetImageFromArray(m.numpy().astype(np.uint16))
                                                              for m in maps]))
    decided = reference <= 2
    assert decided.mean() > 0.95 and np.array_equal(fused.numpy()[decided], reference[decided])
    assert (fused.numpy() == truth).mean() > 0.97  # 20 % of each map is noise


def test_weighted_voting_follows_the_atlas_that_matches_the_target_locally():
    grid = Grid((32, 32), (0.0, 0.0), (1.5, 1.5))
    rng = np.random.default_rng(1)
    target = Image(torch.from_numpy(rng.normal(size=(32, 32)).astype(np.float32)), grid)
    good_labels = torch.ones(32, 32, dtype=torch.int16)
    wrong_labels = torch.full((32, 32), 2, dtype=torch.int16)
    noise = [Image(torch.from_numpy(rng.normal(size=(32, 32)).astype(np.float32)), grid) for _ in range(2)]
    weights = [local_weights(target, target)] + [local_weights(target, n) for n in noise]
    maps = [good_labels, wrong_labels, wrong_labels]
    assert (fuse(maps, grid, "majority")[0] == 2).all()
    fused, confidence = fuse(maps, grid, "weighted", weights)
    assert (fused == 1).float().mean() > 0.95 and float(confidence.median()) > 0.8


def test_label_map_of_a_one_hot_stack():
    grid = Grid((4, 3), (0.0, 0.0), (1.0, 1.0))
    stack = torch.zeros(3, 3, 4, dtype=torch.uint8)
    stack[0, :, :2], stack[1, 0, :], stack[2, 2, 3] = 1, 1, 1
    assert label_map(Image(stack, grid)).data[0].tolist() == [[2, 2, 2, 2], [1, 1, 0, 0], [1, 1, 0, 3]]
    assert label_map(Image(stack, grid), "0").data[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
