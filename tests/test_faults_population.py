"""Fault injection for batch, template, segment, train, predict and ensemble (issue 36): foreign
folders, folders that hold the inputs, reruns with changed settings or inputs, concurrent runs, kill -9
and SIGINT part-way, exit codes and one-line messages. Every case checks the exit code, the message and
that the inputs (sha256) are unchanged; the signal cases also that a rerun finishes and leaves nothing
temporary behind."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _cli import cli, one_line_error
from morphreg.core.files import complete_output, run_folder
from morphreg.data.phantom import make_phantom_pair, phantom_image
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.io import read_image, write_image

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--preset", "affine", "--set", "levels=[[2,null,4]]"]
RUN = [sys.executable, "-c", "from morphreg.cli.main import main; main()"]


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if "morphreg-" in p.name)


def _write_pairs(folder: Path, n: int, dim: int = 2, size: int = 24) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        pair = make_phantom_pair(dim=dim, size=size, spacing=2.0, seed=i)
        for key, image in [("fixed", pair.fixed), ("moving", pair.moving), ("fixed_labels", pair.fixed_labels),
                           ("moving_labels", pair.moving_labels)]:
            write_image(image, folder / f"case{i}_{key}.nii.gz")
        rows.append({"id": f"case{i}", **{k: f"case{i}_{k}.nii.gz" for k in ("fixed", "moving", "fixed_labels",
                                                                           "moving_labels")}})
    table = folder / "pairs.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return table


@pytest.fixture()
def pairs(tmp_path) -> Path:
    return _write_pairs(tmp_path / "in", 2)


# ----- batch ----------------------------------------------------------------------------------------------
def test_batch_refuses_a_users_folder_and_one_holding_its_inputs(tmp_path, pairs, capfd):
    # The reproduction: the pairs, their table and the user's metrics.csv in the output folder.
    d = tmp_path / "d"
    d.mkdir()
    for f in pairs.parent.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / "metrics.csv").write_text("subject,ml\nA,31\n")
    before = digest(d)
    code, _, err = cli(capfd, "batch", d / "pairs.csv", "-o", d, "-q", *QUICK)
    assert code == 2
    one_line_error(err, str(d), "not a morphreg batch folder")
    assert digest(d) == before
    # A folder of the user's without the inputs: refused as well, and so is a registration result.
    e = tmp_path / "e"
    e.mkdir()
    (e / "metrics.csv").write_text("subject,ml\nA,31\n")
    code, _, err = cli(capfd, "batch", pairs, "-o", e, "-q", *QUICK)
    assert code == 2 and (e / "metrics.csv").read_text() == "subject,ml\nA,31\n"
    code, _, _ = cli(capfd, "register", pairs.parent / "case0_fixed.nii.gz", pairs.parent / "case0_moving.nii.gz", "-o",
                     tmp_path / "r", "-p", "rigid", "--set", "levels=[[2,null,4]]", "-q")
    assert code == 0
    code, _, err = cli(capfd, "batch", pairs, "-o", tmp_path / "r", "-q", *QUICK)
    assert code == 2 and "registration result" in one_line_error(err)


def test_batch_checks_the_preset_before_starting_dask(tmp_path, pairs, capfd):
    t0 = time.perf_counter()
    code, _, err = cli(capfd, "batch", pairs, "-o", tmp_path / "out", "-p", "nosuchpreset")
    assert code == 2 and "unknown preset 'nosuchpreset'" in one_line_error(err)
    code, _, err = cli(capfd, "batch", pairs, "-o", tmp_path / "out", "-p", "affine", "--set", "similarity=nosuch")
    assert code == 2
    one_line_error(err)
    assert not (tmp_path / "out").exists() and time.perf_counter() - t0 < 10  # no cluster was started


def test_batch_recomputes_rows_made_with_other_settings_or_inputs(tmp_path, pairs, capfd):
    out = tmp_path / "out"
    assert cli(capfd, "batch", pairs, "-o", out, "-q", *QUICK)[0] == 0
    stamp = lambda i: (out / f"case{i}" / "summary.json").stat().st_mtime_ns  # noqa: E731
    first = [stamp(0), stamp(1)]
    code, text, _ = cli(capfd, "batch", pairs, "-o", out, "-q", "-p", "rigid", "--seed", "7", "--set", "levels=[[2,null,4]]")
    assert code == 0 and "recomputing 2 finished row(s), settings changed (preset, stages, seed)" in text, text
    assert "2 registered (2 of them again), 0 already done" in text
    summary = json.loads((out / "case0" / "summary.json").read_text())
    assert summary["preset"] == "rigid" and [stamp(0), stamp(1)] != first
    # Same settings: nothing to do. A touched input (same content) is not a change; new content is.
    second = [stamp(0), stamp(1)]
    os.utime(pairs.parent / "case0_fixed.nii.gz")
    code, text, _ = cli(capfd, "batch", pairs, "-o", out, "-q", "-p", "rigid", "--seed", "7", "--set", "levels=[[2,null,4]]")
    assert code == 0 and "0 registered, 2 already done" in text and [stamp(0), stamp(1)] == second
    moving = pairs.parent / "case1_moving.nii.gz"
    moving.write_bytes((pairs.parent / "case0_moving.nii.gz").read_bytes())
    code, text, _ = cli(capfd, "batch", pairs, "-o", out, "-q", "-p", "rigid", "--seed", "7", "--set", "levels=[[2,null,4]]")
    assert code == 0 and "recomputing 1 finished row(s), moving changed: case1" in text, text
    assert stamp(0) == second[0] and stamp(1) != second[1]
    made_from = json.loads((out / "case1" / ".morphreg.json").read_text())["made_from"]
    assert made_from["inputs"]["moving"]["sha256"] == hashlib.sha256(moving.read_bytes()).hexdigest()


def test_a_second_batch_into_one_folder_is_refused_and_a_users_table_is_never_replaced(tmp_path, pairs, capfd):
    out = tmp_path / "out"
    with run_folder(out, "batch"):  # a batch holding the folder
        code, _, err = cli(capfd, "batch", pairs, "-o", out, "-q", *QUICK)
        assert code == 2
        one_line_error(err, str(out), "another morphreg run")
    (out / "metrics.csv").write_text("mine\n")  # dropped into a batch folder by its user
    code, _, err = cli(capfd, "batch", pairs, "-o", out, "-q", *QUICK)
    assert code == 2 and "metrics.csv" in one_line_error(err) and (out / "metrics.csv").read_text() == "mine\n"
    assert not (out / "case0").exists()


def _wait_until(condition, proc, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run never reached the point to interrupt")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_batch_interrupted_part_way_resumes_to_the_same_result(tmp_path, sig, capfd):
    table = _write_pairs(tmp_path / "in", 3)
    before = digest(tmp_path / "in")
    out = tmp_path / "out"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen([*RUN, "batch", str(table), "-o", str(out), "-q", *QUICK], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _wait_until(lambda: any(complete_output(out / f"case{i}") for i in range(3)), proc)
        os.killpg(proc.pid, sig)  # as Ctrl-C does: to the command and its Dask workers
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == (128 + sig if sig == signal.SIGINT else -sig), err
    if sig == signal.SIGINT:
        one_line_error(err, "interrupted by SIGINT")
    rows = [d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert rows and all(complete_output(d) for d in rows)  # every row folder there is complete
    assert digest(tmp_path / "in") == before
    code, text, _ = cli(capfd, "batch", table, "-o", out, "-q", *QUICK)
    assert code == 0 and f"{len(rows)} already done" in text, text
    assert all(complete_output(out / f"case{i}") for i in range(3)) and temporaries(tmp_path) == []
    assert digest(tmp_path / "in") == before


# ----- template -------------------------------------------------------------------------------------------
@pytest.fixture()
def images(tmp_path) -> list[Path]:
    grid = Grid((32, 32), (-31.0, -31.0), (2.0, 2.0))
    image, _ = phantom_image(grid, 0)
    paths = []
    for k in range(3):
        from morphreg.data.phantom import smooth_deformation
        from morphreg.transforms.warp import warp

        with torch.no_grad():
            moved = warp(image, smooth_deformation(grid, 3.0, seed=20 + k), grid, "linear")
        paths.append(tmp_path / "in" / f"image{k}.nii.gz")
        write_image(moved, paths[-1])
    return paths


TEMPLATE_QUICK = ["-p", "syn", "--set", "levels=[[2,1vox,6]]", "-q"]


@pytest.mark.slow
def test_template_with_two_workers_is_bitwise_reproducible(tmp_path, images, capfd):
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run / "template.nii.gz"
        code, text, _ = cli(capfd, "template", *images, "-o", out, "-k", "2", "--workers", "2", *TEMPLATE_QUICK)
        assert code == 0, text
        outputs.append(out)
    a, b = (read_image(o).data for o in outputs)
    assert torch.equal(a, b)
    for k in (1, 2):
        first, second = (read_image(o.parent / "template_iterations" / f"template_0{k}.nii.gz").data for o in outputs)
        assert torch.equal(first, second), k


def test_template_refusals_leave_nothing_behind(tmp_path, images, capfd):
    before = digest(tmp_path / "in")
    # A 2D image among 3D ones fails before any iteration: no empty <name>_iterations/ is left.
    pair = make_phantom_pair(dim=3, size=12, spacing=2.0, seed=0)
    write_image(pair.fixed, tmp_path / "in" / "volume.nii.gz")
    code, _, err = cli(capfd, "template", images[0], tmp_path / "in" / "volume.nii.gz", "-o", tmp_path / "t" / "t.nii.gz",
                       *TEMPLATE_QUICK)
    assert code == 2 and "3D image in a 2D population" in one_line_error(err)
    assert not (tmp_path / "t" / "t_iterations").exists()
    # A folder of the user's where the iterations would go: refused, untouched.
    work = tmp_path / "u" / "t_iterations"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    code, _, err = cli(capfd, "template", *images, "-o", tmp_path / "u" / "t.nii.gz", *TEMPLATE_QUICK)
    assert code == 2 and "not a morphreg template folder" in one_line_error(err, str(work))
    assert [p.name for p in work.iterdir()] == ["notes.txt"]
    # A second template run while one holds the folder.
    with run_folder(tmp_path / "v" / "t_iterations", "template"):
        code, _, err = cli(capfd, "template", *images, "-o", tmp_path / "v" / "t.nii.gz", *TEMPLATE_QUICK)
        assert code == 2 and "another morphreg run" in one_line_error(err)
    assert digest(tmp_path / "in") == {**before, "volume.nii.gz": digest(tmp_path / "in")["volume.nii.gz"]}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_template_stopped_after_its_first_iteration_continues_to_the_same_template(tmp_path, images, capfd, sig):
    straight = tmp_path / "straight" / "t.nii.gz"
    assert cli(capfd, "template", *images, "-o", straight, "-k", "2", *TEMPLATE_QUICK)[0] == 0
    out = tmp_path / "killed" / "t.nii.gz"
    work = out.parent / "t_iterations"
    before = digest(tmp_path / "in")
    proc = subprocess.Popen([*RUN, "template", *map(str, images), "-o", str(out), "-k", "2", *TEMPLATE_QUICK],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_until(lambda: (work / "template_01.nii.gz").is_file(), proc)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == (130 if sig == signal.SIGINT else -sig), err
    assert not out.exists() and digest(tmp_path / "in") == before
    code, text, _ = cli(capfd, "template", *images, "-o", out, "-k", "2", *TEMPLATE_QUICK)
    assert code == 0, text
    assert torch.equal(read_image(out).data, read_image(straight).data)
    assert temporaries(tmp_path) == []


# ----- segment --------------------------------------------------------------------------------------------
def _atlas_table(folder: Path, n: int = 2) -> tuple[Path, Path]:
    pair = make_phantom_pair(dim=2, size=24, spacing=2.0, seed=3)
    write_image(pair.fixed, folder / "target.nii.gz")
    rows = []
    for k in range(n):
        p = make_phantom_pair(dim=2, size=24, spacing=2.0, seed=k)
        write_image(p.moving, folder / f"atlas{k}.nii.gz")
        write_image(p.moving_labels, folder / f"atlas{k}_labels.nii.gz")
        rows.append(f"atlas{k}.nii.gz,atlas{k}_labels.nii.gz")
    (folder / "atlases.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    return folder / "target.nii.gz", folder / "atlases.csv"


def test_segment_never_replaces_a_users_file_beside_its_output(tmp_path, capfd):
    target, atlases = _atlas_table(tmp_path)
    (tmp_path / "seg.json").write_text('{"mine": true}')
    code, _, err = cli(capfd, "segment", target, "--atlases", atlases, "-o", tmp_path / "seg.nii.gz", "-q", *QUICK)
    assert code == 2 and "seg.json" in one_line_error(err) and (tmp_path / "seg.json").read_text() == '{"mine": true}'
    (tmp_path / "seg.json").unlink()
    (tmp_path / "seg_confidence.nii.gz").write_bytes(b"mine")
    code, _, err = cli(capfd, "segment", target, "--atlases", atlases, "-o", tmp_path / "seg.nii.gz", "-q", *QUICK)
    assert code == 2 and "seg_confidence.nii.gz" in one_line_error(err)
    (tmp_path / "seg_confidence.nii.gz").unlink()
    code, text, _ = cli(capfd, "segment", target, "--atlases", atlases, "-o", tmp_path / "seg.nii.gz", "-q", *QUICK)
    assert code == 0, text
    code, text, _ = cli(capfd, "segment", target, "--atlases", atlases, "-o", tmp_path / "seg.nii.gz", "-q", *QUICK)
    assert code == 0, text  # its own files are replaced by a rerun


def test_segment_names_a_2d_atlas_for_a_3d_target_and_notes_labels_on_another_grid(tmp_path, capfd):
    target, atlases = _atlas_table(tmp_path)
    volume = make_phantom_pair(dim=3, size=12, spacing=2.0, seed=0)
    write_image(volume.fixed, tmp_path / "target3d.nii.gz")
    code, text, _ = cli(capfd, "segment", tmp_path / "target3d.nii.gz", "--atlases", atlases, "-o", tmp_path / "s3.nii.gz",
                        "-q", *QUICK)
    assert code == 2 and "a 2D atlas file for a 3D target" in text and "atlas0.nii.gz" in text, text
    labels = read_image(tmp_path / "atlas0_labels.nii.gz", labels=True)
    shifted = Grid(labels.grid.size, labels.grid.origin + 2.0, labels.grid.spacing, labels.grid.direction)
    write_image(Image(labels.data, shifted), tmp_path / "atlas0_labels.nii.gz")
    code, text, _ = cli(capfd, "segment", target, "--atlases", atlases, "-o", tmp_path / "s.nii.gz", "-q", *QUICK)
    assert code == 0 and "atlas0_labels.nii.gz lie on another grid than the atlas image" in text, text


@pytest.mark.slow
def test_segment_interrupted_writes_nothing_and_leaves_inputs(tmp_path):
    (tmp_path / "in").mkdir()
    target, atlases = _atlas_table(tmp_path / "in", n=3)
    before = digest(tmp_path / "in")
    proc = subprocess.Popen([*RUN, "segment", str(target), "--atlases", str(atlases), "-o", str(tmp_path / "seg.nii.gz"),
                             "-q", "-p", "syn", "--set", "levels=[[1,1vox,400]]"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(6)  # inside the registrations (each runs for longer)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    one_line_error(err, "interrupted by SIGINT")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"] and digest(tmp_path / "in") == before


# ----- train ----------------------------------------------------------------------------------------------
TRAIN_CONFIG = """# my training recipe (comments are mine)
data: {pairs: pairs.csv}
model: {dim: 2, size: [16, 16], spacing: [3.0, 3.0], encoder: [4, 8], decoder: [8, 8, 4]}
loss: {similarity: mse, penalties: [{name: diffusion, weight: 0.1}]}
train: {steps: 4, batch_size: 1, lr: 1e-3, checkpoint_every: 2, validate_every: 2}
"""


@pytest.fixture()
def recipe(tmp_path, pairs) -> Path:
    config = pairs.parent / "train.yaml"
    config.write_text(TRAIN_CONFIG)
    return config


def test_train_refuses_a_folder_holding_its_inputs_even_with_resume(recipe, capfd):
    before = digest(recipe.parent)
    for extra in ([], ["--resume"]):
        code, _, err = cli(capfd, "train", recipe, "-o", recipe.parent, "-q", *extra)
        assert code == 2, err
        one_line_error(err, str(recipe.parent))
        assert digest(recipe.parent) == before  # the commented config is not rewritten, no checkpoint lands


def test_train_lock_missing_checkpoint_and_a_run_of_another_kind(tmp_path, recipe, capfd):
    run = tmp_path / "run"
    code, text, _ = cli(capfd, "train", recipe, "-o", run, "-q")
    assert code == 0, text
    assert json.loads((run / ".morphreg.json").read_text())["kind"] == "train"
    from morphreg.learn.config import load_config

    assert load_config(run / "config.yaml").train.lr == 0.001  # 1e-3 is a float, not the string YAML 1.1 makes of it
    with run_folder(run, "train"):  # a run still training
        code, _, err = cli(capfd, "train", recipe, "-o", run, "-q", "--resume", "--set", "train.steps=6")
        assert code == 2
        one_line_error(err, str(run), "another morphreg run")
    before = digest(run)
    (run / "checkpoint.pt").unlink()
    before.pop("checkpoint.pt")
    code, _, err = cli(capfd, "train", recipe, "-o", run, "-q", "--resume", "--set", "train.steps=6")
    assert code == 2 and "checkpoint.pt is missing" in one_line_error(err, str(run))
    assert digest(run) == before  # model.pt and metrics.csv kept
    code, _, err = cli(capfd, "train", recipe, "-o", run, "-q")
    assert code == 2 and "not empty" in one_line_error(err)


def test_train_and_predict_device_errors_are_usage_errors(tmp_path, recipe, capfd):
    code, _, err = cli(capfd, "train", recipe, "-o", tmp_path / "run", "--set", "train.device=gpu")
    assert code == 2 and "train.device: 'gpu' is not a device" in one_line_error(err)
    if not torch.cuda.is_available():
        code, _, err = cli(capfd, "train", recipe, "-o", tmp_path / "run", "--set", "train.device=cuda")
        assert code == 2 and "no CUDA device" in one_line_error(err)
    assert not (tmp_path / "run").exists()
    inputs = recipe.parent
    for device, says in [("gpu", "is not a device")] + ([("cuda", "no CUDA device")] if not torch.cuda.is_available() else []):
        code, _, err = cli(capfd, "predict", "prostate-mr-trus", inputs / "case0_fixed.nii.gz", inputs / "case0_moving.nii.gz",
                           "-o", tmp_path / "p", "--device", device)
        assert code == 2 and says in one_line_error(err, "--device")
    assert not (tmp_path / "p").exists()


def test_a_2d_image_in_a_3d_training_table_names_the_file_and_row(tmp_path, recipe, capfd):
    volume = make_phantom_pair(dim=3, size=12, spacing=2.0, seed=0)
    write_image(volume.fixed, tmp_path / "in" / "v_fixed.nii.gz")
    write_image(volume.moving, tmp_path / "in" / "v_moving.nii.gz")
    (tmp_path / "in" / "mixed.csv").write_text("fixed,moving\nv_fixed.nii.gz,v_moving.nii.gz\ncase0_fixed.nii.gz,"
                                               "case0_moving.nii.gz\n")
    code, _, err = cli(capfd, "train", recipe, "-o", tmp_path / "run", "--set", f"data.pairs={tmp_path / 'in' / 'mixed.csv'}",
                       "--set", "model.dim=3", "--set", "model.size=[8,8,8]", "--set", "model.spacing=[3,3,3]")
    assert code == 2
    one_line_error(err, "case0_fixed.nii.gz", "row 2 of", "mixed.csv", "a 2D image", "3D model")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_train_stopped_part_way_resumes_with_every_metrics_row_once(tmp_path, recipe, capfd, sig):
    run = tmp_path / "run"
    config = recipe.parent / "long.yaml"
    config.write_text(TRAIN_CONFIG.replace("steps: 4", "steps: 300").replace("checkpoint_every: 2", "checkpoint_every: 5"))
    before = digest(recipe.parent)
    proc = subprocess.Popen([*RUN, "train", str(config), "-o", str(run), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(lambda: (run / "checkpoint.pt").is_file(), proc)
        time.sleep(0.3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == (130 if sig == signal.SIGINT else -sig), err  # stopped part-way, not finished
    if sig == signal.SIGINT:
        one_line_error(err, "interrupted by SIGINT")
    assert digest(recipe.parent) == before
    code, text, _ = cli(capfd, "train", config, "-o", run, "-q", "--resume")
    assert code == 0, text
    with open(run / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 301))
    assert temporaries(tmp_path) == []


# ----- ensemble -------------------------------------------------------------------------------------------
def test_ensemble_refuses_one_model_twice_and_an_output_that_is_not_a_model_file(tmp_path, capfd):
    from morphreg.learn.zoo import shipped_models

    model = next(iter(shipped_models().values()))
    copy = tmp_path / "copy.pt"
    copy.write_bytes(model.read_bytes())
    code, _, err = cli(capfd, "ensemble", model, copy, "-o", tmp_path / "e.pt")
    assert code == 2 and "the same model twice" in one_line_error(err)
    code, _, err = cli(capfd, "ensemble", model, model, "-o", tmp_path / "x.txt")
    assert code == 2 and "suffix .pt" in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.pt"]
