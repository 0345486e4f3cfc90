"""Fault injection: the CLI never destroys a user's data and always ends with an honest exit code.

Each case runs the real entry point (``morphreg.cli.main.main``, in process; a ``morphreg``
subprocess where signals are sent) and checks the exit code, a one-line message naming the right
path, no traceback, unchanged inputs (sha256) and no file left behind. One case per fault class of
the output-safety issue, plus the classes that already worked (so they keep working).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from _cli import cli, one_line_error
from _presets import preset_case
from morphreg.core.files import UMASK, output_folder
from morphreg.data.phantom import make_phantom_pair
from morphreg.image.io import write_image
from morphreg.register import register
from morphreg.register.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")


# ----- helpers ----------------------------------------------------------------------------------------
def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones too), by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture()
def pair_files(tmp_path) -> Path:
    """A small 2D phantom pair (and its label maps) as NIfTI files in tmp_path/in."""
    folder = tmp_path / "in"
    pair = make_phantom_pair(dim=2, size=32, spacing=1.5, seed=0)
    write_image(pair.fixed, folder / "fixed.nii.gz")
    write_image(pair.moving, folder / "moving.nii.gz")
    write_image(pair.fixed_labels, folder / "fixed_labels.nii.gz")
    write_image(pair.moving_labels, folder / "moving_labels.nii.gz")
    return folder


def register_args(inputs: Path, out: Path, *extra) -> list:
    return ["register", inputs / "fixed.nii.gz", inputs / "moving.nii.gz", "-o", out, "-p", "rigid", "-q", *extra]


@pytest.fixture()
def result_dir(tmp_path, pair_files, capfd) -> Path:
    """A finished 'register -p rigid' result folder."""
    out = tmp_path / "result"
    code, _, err = cli(capfd, *register_args(pair_files, out))
    assert code == 0, err
    return out


# ----- 1. never delete or overwrite what morphreg did not write ------------------------------------------
def test_output_folder_holding_the_inputs_is_refused(tmp_path, pair_files, capfd):
    before = digest(pair_files)
    code, _, err = cli(capfd, *register_args(pair_files, pair_files))
    assert code == 2
    one_line_error(err, str(pair_files), "holds the input")
    assert digest(pair_files) == before and entries(tmp_path) == {"in"}


def test_output_equal_to_an_input_is_refused(tmp_path, pair_files, result_dir, capfd):
    before = digest(pair_files)
    moving = pair_files / "moving.nii.gz"
    code, _, err = cli(capfd, "apply", result_dir / "transform.h5", moving, "-r", pair_files / "fixed.nii.gz", "-o", moving)
    assert code == 2
    one_line_error(err, str(moving), "is the input")
    labels = pair_files / "fixed_labels.nii.gz"
    code, _, err = cli(capfd, "evaluate", "-t", result_dir / "transform.h5", "--fixed-labels", labels,
                       "--moving-labels", pair_files / "moving_labels.nii.gz", "-o", labels)
    assert code == 2
    one_line_error(err, str(labels), "is the input")
    # Through a symbolic link too.
    link = tmp_path / "link.nii.gz"
    link.symlink_to(moving)
    code, _, err = cli(capfd, "apply", result_dir / "transform.h5", moving, "-r", pair_files / "fixed.nii.gz", "-o", link)
    assert code == 2 and digest(pair_files) == before


def test_non_empty_foreign_folder_needs_overwrite_and_keeps_other_files(tmp_path, pair_files, capfd):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes", encoding="utf-8")
    (out / "warped.nii.gz").write_text("my own file of that name", encoding="utf-8")
    code, _, err = cli(capfd, *register_args(pair_files, out))
    assert code == 2
    one_line_error(err, str(out), "--overwrite")
    assert (out / "warped.nii.gz").read_text(encoding="utf-8") == "my own file of that name"
    code, _, err = cli(capfd, *register_args(pair_files, out, "--overwrite"))
    assert code == 0, err
    assert (out / "notes.txt").read_text(encoding="utf-8") == "my notes"
    assert sitk.ReadImage(str(out / "warped.nii.gz")).GetSize() == (32, 32)
    assert entries(tmp_path) == {"in", "mine"}


def test_previous_result_is_replaced_whole_and_only_when_the_new_one_is_complete(tmp_path, pair_files, result_dir, capfd):
    (result_dir / "report.html").write_text("<html>old</html>", encoding="utf-8")  # as an earlier --report wrote
    manifest = json.loads((result_dir / ".morphreg.json").read_text(encoding="utf-8"))
    manifest["files"].append("report.html")
    (result_dir / ".morphreg.json").write_text(json.dumps(manifest), encoding="utf-8")
    before = digest(result_dir)
    # A failing run (an empty mask) into the result folder changes nothing.
    empty = pair_files.parent / "empty_mask.nii.gz"
    write_image(make_phantom_pair(dim=2, size=32, spacing=1.5).fixed_labels.with_data(torch.zeros(1, 32, 32, dtype=torch.int16)), empty)
    code, _, err = cli(capfd, *register_args(pair_files, result_dir, "--fixed-mask", empty))
    assert code == 2
    one_line_error(err, str(empty), "empty")
    assert digest(result_dir) == before
    # A successful run replaces the whole previous result (the old report does not survive).
    code, _, err = cli(capfd, *register_args(pair_files, result_dir, "-p", "affine"))
    assert code == 0, err
    assert "report.html" not in entries(result_dir)
    assert json.loads((result_dir / "summary.json").read_text(encoding="utf-8"))["preset"] == "affine"
    assert {p for p in entries(tmp_path) if p.startswith(".")} == set()


def test_files_added_by_morphreg_keep_a_result_folder_replaceable(tmp_path, pair_files, result_dir, capfd):
    code, _, err = cli(capfd, "evaluate", "-t", result_dir / "transform.h5", "--fixed-labels", pair_files / "fixed_labels.nii.gz",
                       "--moving-labels", pair_files / "moving_labels.nii.gz", "-o", result_dir / "metrics.json")
    assert code == 0, err
    listed = json.loads((result_dir / ".morphreg.json").read_text(encoding="utf-8"))["files"]
    assert "metrics.json" in listed
    code, _, err = cli(capfd, *register_args(pair_files, result_dir))
    assert code == 0, err
    (result_dir / "mine.txt").write_text("a user's file", encoding="utf-8")
    code, _, err = cli(capfd, *register_args(pair_files, result_dir))
    assert code == 2
    one_line_error(err, "mine.txt")


def test_a_users_folder_that_looks_like_an_old_result_is_not_replaced(tmp_path, pair_files, capfd):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.json").write_text('{"my": "study summary"}', encoding="utf-8")
    (out / "report.html").write_text("<html>my report</html>", encoding="utf-8")
    before = digest(out)
    code, _, err = cli(capfd, *register_args(pair_files, out))
    assert code == 2
    one_line_error(err, "not a morphreg result")
    assert digest(out) == before


def test_output_through_a_symbolic_link_replaces_the_folder_it_points_to(tmp_path, pair_files, result_dir, capfd):
    link = tmp_path / "link"
    link.symlink_to(result_dir)
    code, _, err = cli(capfd, *register_args(pair_files, link, "-p", "affine"))
    assert code == 0, err
    assert link.is_symlink() and (link / "summary.json").is_file()
    assert json.loads((result_dir / "summary.json").read_text(encoding="utf-8"))["preset"] == "affine"


def test_current_folder_as_output_is_refused(tmp_path, pair_files, capfd, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    code, _, err = cli(capfd, *register_args(pair_files, "."))
    assert code == 2
    one_line_error(err, "current folder")


def test_report_rebuilt_in_place(tmp_path, result_dir, capfd):
    for _ in range(2):
        code, _, err = cli(capfd, "report", result_dir, "-o", result_dir / "report.html")
        assert code == 0, err
    code, _, err = cli(capfd, "report", result_dir, "-o", result_dir / "summary.json")
    assert code == 2
    one_line_error(err, "summary.json", "is the input")


def test_signal_while_a_previous_result_is_being_replaced(tmp_path, pair_files, result_dir, capfd, monkeypatch):
    """SIGTERM arrives between the renames that swap the result: the swap completes, then the run exits
    143; the folder holds the complete new result and no temporary is left."""
    import morphreg.core.files as files

    real_replace = os.replace
    sent = []

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        if not sent and str(dst).endswith("result"):  # the old result just moved aside
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(files.os, "replace", replace_then_signal)
    code, _, err = cli(capfd, *register_args(pair_files, result_dir, "-p", "affine"))
    assert sent and code == 143, err
    one_line_error(err, "SIGTERM")
    assert json.loads((result_dir / "summary.json").read_text(encoding="utf-8"))["preset"] == "affine"
    assert {p for p in entries(tmp_path) if p.startswith(".")} == set()


def test_stale_temporary_folder_of_a_killed_run_is_removed(tmp_path, pair_files, capfd):
    stale = tmp_path / ".out.morphreg-killed.tmp"
    stale.mkdir()
    (stale / "warped.nii.gz").write_bytes(b"half")
    code, _, err = cli(capfd, *register_args(pair_files, tmp_path / "out"))
    assert code == 0, err
    assert entries(tmp_path) == {"in", "out"}


# ----- 2. signals -----------------------------------------------------------------------------------------
SLOW_WRITE = """
import sys, time
from morphreg.register.result import Result
write = Result.write
def slow_write(self, folder, *args, **kwargs):
    write(self, folder, *args, **kwargs)
    (folder / "WRITING").touch()
    time.sleep(60)
Result.write = slow_write
from morphreg.cli.main import main
main(sys.argv[1:])
"""


def _wait_for(pattern_parent: Path, prefix: str, marker: str | None, proc, timeout: float = 120.0) -> None:
    """Until a temporary output folder (``prefix``*) exists in ``pattern_parent`` (and holds ``marker``)."""
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()
        tmps = [p for p in pattern_parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
        if tmps and (marker is None or any((t / marker).exists() for t in tmps)):
            return
        time.sleep(0.05)
    raise AssertionError("the run never reached the point to interrupt")


@pytest.mark.parametrize("sig, during", [(signal.SIGINT, "registration"), (signal.SIGTERM, "registration"),
                                         (signal.SIGINT, "writing"), (signal.SIGTERM, "writing")])
def test_signal_exits_128_plus_signal_with_no_output_and_no_temporaries(tmp_path, pair_files, sig, during):
    out = tmp_path / "out"
    pair = make_phantom_pair(dim=3, size=40, spacing=1.5, seed=0)
    write_image(pair.fixed, pair_files / "fixed3.nii.gz")
    write_image(pair.moving, pair_files / "moving3.nii.gz")
    before = digest(pair_files)
    args = ["register", str(pair_files / "fixed3.nii.gz"), str(pair_files / "moving3.nii.gz"), "-o", str(out), "-q"]
    command = [sys.executable, "-c", SLOW_WRITE, *args] if during == "writing" else \
        [sys.executable, "-c", "from morphreg.cli.main import main; main()", *args]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path.parent / "cache")}  # a crash log, if any, stays out of ~
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for(tmp_path, ".out.morphreg-", "WRITING" if during == "writing" else None, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    one_line_error(err, f"interrupted by {signal.Signals(sig).name}")
    assert entries(tmp_path) == {"in"}  # no output, no temporary folder, no lock file
    assert digest(pair_files) == before


# ----- 3. usage errors and bugs ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (["info"], "Missing argument"),
    (["register", "a.nii", "b.nii"], "Missing option"),
    (["nonsense"], "No such command"),
    (["register", "a.nii", "b.nii", "-o", "x", "--seed", "abc"], "--seed"),
])
def test_usage_errors_exit_2_in_one_line(capfd, args, says):
    code, _, err = cli(capfd, *args)
    assert code == 2
    one_line_error(err, says)


def test_version(capfd):
    code, out, _ = cli(capfd, "--version")
    assert code == 0 and out.startswith("morphreg ")


def test_unexpected_exception_is_one_line_with_a_crash_log(tmp_path, pair_files, capfd, monkeypatch):
    import morphreg.register

    def broken(*args, **kwargs):
        raise ZeroDivisionError("deliberately broken")

    monkeypatch.setattr(morphreg.register, "register", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, _, err = cli(capfd, *register_args(pair_files, tmp_path / "out"))
    assert code == 1
    line = one_line_error(err, "internal error", "ZeroDivisionError", "--debug")
    logs = list((tmp_path / "cache" / "morphreg" / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line
    assert "Traceback" in logs[0].read_text(encoding="utf-8") and "broken" in logs[0].read_text(encoding="utf-8")
    assert not (tmp_path / "out").exists()
    code, _, err = cli(capfd, *register_args(pair_files, tmp_path / "out"), "--debug")
    assert code == 1 and "Traceback" in err and "ZeroDivisionError" in err


# ----- 4. / 5. truncated files, NaN / inf in every format -------------------------------------------------
def _truncate(path: Path, share: float = 0.5) -> Path:
    data = path.read_bytes()
    out = path.with_name("truncated_" + path.name)
    out.write_bytes(data[: int(len(data) * share)])
    return out


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_truncated_image_is_refused(tmp_path, pair_files, capfd, suffix):
    img = sitk.ReadImage(str(pair_files / "moving.nii.gz"))
    full = pair_files / f"whole{suffix}"
    sitk.WriteImage(img, str(full), suffix != ".nii")
    bad = _truncate(full, 0.7)
    code, _, err = cli(capfd, *register_args(pair_files, tmp_path / "out")[:2], bad, "-o", tmp_path / "out", "-q")
    assert code == 2
    one_line_error(err, str(bad))
    assert not (tmp_path / "out").exists()


def test_truncated_transform_is_refused_without_hdf5_noise(tmp_path, pair_files, result_dir, capfd):
    bad = _truncate(result_dir / "transform.h5")
    code, _, err = cli(capfd, "apply", bad, pair_files / "moving.nii.gz", "-r", pair_files / "fixed.nii.gz",
                       "-o", tmp_path / "w.nii.gz")
    assert code == 2
    line = one_line_error(err, str(bad), "HDF5")
    assert "HDF5-DIAG" not in err and len(line) < 300


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxels_are_refused_in_every_format(tmp_path, pair_files, capfd, suffix, value):
    img = sitk.ReadImage(str(pair_files / "fixed.nii.gz"), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img)
    arr[10, 12] = value
    bad_img = sitk.GetImageFromArray(arr)
    bad_img.CopyInformation(img)
    bad = pair_files / f"bad{suffix}"
    sitk.WriteImage(bad_img, str(bad))
    code, _, err = cli(capfd, "register", bad, pair_files / "moving.nii.gz", "-o", tmp_path / "out", "-q")
    assert code == 2
    one_line_error(err, str(bad), "1 NaN/inf")
    code, out, _ = cli(capfd, "info", bad)
    assert code == 0 and "non-finite voxels" in out


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_displacement_field_with_a_nan_vector_is_refused(tmp_path, pair_files, result_dir, capfd, suffix):
    field = sitk.ReadImage(str(result_dir / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    arr = sitk.GetArrayFromImage(field)
    arr[16, 16, 0] = np.nan
    bad_field = sitk.GetImageFromArray(arr, isVector=True)
    bad_field.CopyInformation(field)
    bad = tmp_path / f"nan_field{suffix}"
    sitk.WriteImage(bad_field, str(bad))
    code, _, err = cli(capfd, "apply", bad, pair_files / "moving.nii.gz", "-r", pair_files / "fixed.nii.gz",
                       "-o", tmp_path / "w.nii.gz")
    assert code == 2
    one_line_error(err, str(bad), "NaN/inf")
    assert not (tmp_path / "w.nii.gz").exists()


def test_nifti_payload_check_reads_big_endian_and_nifti2(tmp_path):
    """The on-disk check parses the header itself: byte order and NIfTI-2 must not fool it."""
    from morphreg.image.nifti import check_nifti_payload

    arr = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    arr[1, 1, 1] = np.nan
    header = np.zeros(348, np.uint8).tobytes()
    hdr = bytearray(header)
    hdr[0:4] = (348).to_bytes(4, "big")
    hdr[40:56] = np.array([3, 4, 3, 2, 1, 1, 1, 1], ">i2").tobytes()
    hdr[70:74] = np.array([16, 32], ">i2").tobytes()
    hdr[108:112] = np.array([352], ">f4").tobytes()
    hdr[344:348] = b"n+1\0"
    path = tmp_path / "big.nii"
    path.write_bytes(bytes(hdr) + b"\0" * 4 + arr.tobytes())
    assert check_nifti_payload(path) == 1
    with gzip.open(tmp_path / "big.nii.gz", "wb") as f:
        f.write(bytes(hdr) + b"\0" * 4 + arr.tobytes()[:50])
    with pytest.raises(Exception, match="truncated: 50 of 96"):
        check_nifti_payload(tmp_path / "big.nii.gz")
    # NIfTI-2 (540-byte header, int64 dims, vox_offset at 168), little-endian, float64 with one inf.
    hdr2 = bytearray(544)
    hdr2[0:4] = (540).to_bytes(4, "little")
    hdr2[4:12] = b"n+2\0\r\n\x1a\n"
    hdr2[12:16] = np.array([64, 64], "<i2").tobytes()
    hdr2[16:80] = np.array([3, 5, 4, 3, 1, 1, 1, 1], "<i8").tobytes()
    hdr2[168:176] = np.array([544], "<i8").tobytes()
    values = np.ones(60, "<f8")
    values[[3, 50]] = [np.inf, np.nan]
    (tmp_path / "two.nii").write_bytes(bytes(hdr2) + values.tobytes())
    assert check_nifti_payload(tmp_path / "two.nii") == 2
    (tmp_path / "two_short.nii").write_bytes(bytes(hdr2) + values.tobytes()[:100])
    with pytest.raises(Exception, match="truncated: 100 of 480"):
        check_nifti_payload(tmp_path / "two_short.nii")
    # An uncompressed file named .nii.gz (ITK reads it) is checked, not called corrupt.
    (tmp_path / "plain.nii.gz").write_bytes(bytes(hdr2) + values.tobytes())
    assert check_nifti_payload(tmp_path / "plain.nii.gz") == 2
    img = sitk.GetImageFromArray(np.where(np.arange(60).reshape(3, 4, 5) == 7, np.inf, 1.0).astype(np.float64))
    sitk.WriteImage(img, str(tmp_path / "f8.nii"))
    assert check_nifti_payload(tmp_path / "f8.nii") == 1


# ----- 6. determinism -----------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", list(PRESETS))
def test_same_seed_same_threads_gives_bitwise_the_same_result(preset):
    """Whatever state the global random generator is in (a new process), the seed decides."""
    pair, kw = preset_case(preset)
    fields, warped = [], []
    for global_seed in (101, 202):
        torch.manual_seed(global_seed)
        r = register(pair.fixed, pair.moving, preset, seed=7, **kw)
        fields.append(r.transform.displacement(pair.fixed.grid).detach())
        warped.append(r.warped.data)
    assert torch.equal(fields[0], fields[1]) and torch.equal(warped[0], warped[1])
    assert float(fields[0].abs().max()) > 0  # it did register something


def test_register_leaves_the_callers_random_state_alone():
    pair = make_phantom_pair(dim=2, size=32, spacing=1.5)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    register(pair.fixed, pair.moving, "rigid", seed=9, levels=[[2, None, 3]])
    assert torch.equal(torch.rand(3), expected)


# ----- 7. file-system errors --------------------------------------------------------------------------
def test_parent_path_that_is_a_file(tmp_path, pair_files, capfd):
    code, _, err = cli(capfd, *register_args(pair_files, pair_files / "fixed.nii.gz" / "out"))
    assert code == 2
    one_line_error(err, "fixed.nii.gz is a file")
    code, _, err = cli(capfd, *register_args(pair_files, tmp_path / "afile"))
    assert code == 0, err
    code, _, err = cli(capfd, "apply", tmp_path / "afile" / "transform.h5", pair_files / "moving.nii.gz", "-r",
                       pair_files / "fixed.nii.gz", "-o", pair_files / "moving.nii.gz" / "w.nii.gz")
    assert code == 2
    one_line_error(err, "moving.nii.gz is a file")


def test_evaluate_into_a_folder(tmp_path, pair_files, result_dir, capfd):
    (tmp_path / "folder").mkdir()
    code, _, err = cli(capfd, "evaluate", "-t", result_dir / "transform.h5", "--fixed-labels", pair_files / "fixed_labels.nii.gz",
                       "--moving-labels", pair_files / "moving_labels.nii.gz", "-o", tmp_path / "folder")
    assert code == 2
    one_line_error(err, str(tmp_path / "folder"), "is a folder")


def test_unwritable_output_location(tmp_path, pair_files, capfd):
    if os.geteuid() == 0:  # root writes anywhere chmod allows nothing; sysfs refuses new entries even to root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without /sys: no unwritable folder to try")
        target = Path("/sys/kernel/morphreg-out")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "out"
    code, _, err = cli(capfd, *register_args(pair_files, target))
    assert code == 2
    one_line_error(err, str(target.parent), "cannot write")


# ----- 8. masks and labels on other grids -----------------------------------------------------------------
def test_masks_on_another_grid_are_resampled_with_a_note(tmp_path, pair_files, capfd):
    mask = sitk.ReadImage(str(pair_files / "fixed_labels.nii.gz")) > 0
    coarse = sitk.Resample(mask, [16, 16], sitk.Transform(), sitk.sitkNearestNeighbor, mask.GetOrigin(), [3.0, 3.0],
                           mask.GetDirection())
    sitk.WriteImage(coarse, str(pair_files / "coarse_mask.nii.gz"))
    out = tmp_path / "out"
    code, _, err = cli(capfd, *register_args(pair_files, out, "--fixed-mask", pair_files / "coarse_mask.nii.gz",
                                             "--moving-mask", pair_files / "coarse_mask.nii.gz"))
    assert code == 0, err
    notes = json.loads((out / "summary.json").read_text(encoding="utf-8"))["notes"]
    assert len(notes) == 2 and all("coarse_mask.nii.gz" in n and "resampled" in n for n in notes)
    far = sitk.Resample(mask, [16, 16], sitk.Transform(), sitk.sitkNearestNeighbor, (500.0, 500.0), [3.0, 3.0],
                        mask.GetDirection())
    sitk.WriteImage(sitk.Cast(far, sitk.sitkUInt8) + 1, str(pair_files / "far_mask.nii.gz"))
    code, _, err = cli(capfd, *register_args(pair_files, tmp_path / "out2", "--moving-mask", pair_files / "far_mask.nii.gz"))
    assert code == 2
    one_line_error(err, "far_mask.nii.gz", "does not overlap")


# ----- 9. evaluate refuses label inputs that do not correspond --------------------------------------------
def _one_hot(labels: Path, channels: int, out: Path) -> Path:
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    stack = np.stack([(arr == k + 1) for k in range(channels)], -1).astype(np.uint8)  # 2D: a vector image
    sitk.WriteImage(sitk.GetImageFromArray(stack, isVector=True), str(out))
    return out


def test_evaluate_refuses_label_inputs_that_do_not_correspond(tmp_path, pair_files, result_dir, capfd):
    six = _one_hot(pair_files / "fixed_labels.nii.gz", 6, tmp_path / "six.nii.gz")
    three = _one_hot(pair_files / "moving_labels.nii.gz", 3, tmp_path / "three.nii.gz")
    cases = [(six, three, "6 (fixed"), (pair_files / "fixed_labels.nii.gz", three, "one-hot stack of 3")]
    for fixed_labels, moving_labels, says in cases:
        code, _, err = cli(capfd, "evaluate", "-t", result_dir / "transform.h5", "--fixed-labels", fixed_labels,
                           "--moving-labels", moving_labels, "-o", tmp_path / "m.json")
        assert code == 2
        one_line_error(err, str(moving_labels), says)
    assert not (tmp_path / "m.json").exists()


# ----- 10. messages name the right file -----------------------------------------------------------------
def test_vector_and_4d_images_are_refused_at_reading(tmp_path, pair_files, capfd):
    img = sitk.ReadImage(str(pair_files / "fixed.nii.gz"))
    sitk.WriteImage(sitk.Compose(img, img), str(pair_files / "vector.mha"))
    png = sitk.Compose(*[sitk.Cast(sitk.RescaleIntensity(img, 0, 255), sitk.sitkUInt8)] * 3)
    sitk.WriteImage(png, str(pair_files / "rgb.png"))
    for bad, as_moving in [("vector.mha", False), ("rgb.png", True)]:
        pair = [pair_files / "fixed.nii.gz", pair_files / bad] if as_moving else [pair_files / bad, pair_files / "moving.nii.gz"]
        code, _, err = cli(capfd, "register", *pair, "-o", tmp_path / "out", "-q")
        assert code == 2
        one_line_error(err, str(pair_files / bad), "channels")


def test_folder_without_dicom_is_one_line_without_gdcm_warning(tmp_path, capfd):
    (tmp_path / "nodicom").mkdir()
    (tmp_path / "nodicom" / "readme.txt").write_text("no images here", encoding="utf-8")
    code, _, err = cli(capfd, "info", tmp_path / "nodicom")
    assert code == 2
    one_line_error(err, str(tmp_path / "nodicom"), "DICOM")
    assert "WARNING" not in err


def test_float_mask_of_one_half_is_used_not_called_empty(tmp_path, pair_files, capfd):
    labels = sitk.ReadImage(str(pair_files / "fixed_labels.nii.gz"))
    sitk.WriteImage(sitk.Cast(labels > 0, sitk.sitkFloat32) * 0.5, str(pair_files / "half.nii.gz"))
    code, _, err = cli(capfd, *register_args(pair_files, tmp_path / "out", "--fixed-mask", pair_files / "half.nii.gz"))
    assert code == 0, err


def test_dimension_mismatches_name_both_files(tmp_path, pair_files, result_dir, capfd):
    pair = make_phantom_pair(dim=3, size=16, spacing=3.0)
    write_image(pair.moving, pair_files / "vol.nii.gz")
    code, _, err = cli(capfd, "register", pair_files / "fixed.nii.gz", pair_files / "vol.nii.gz", "-o", tmp_path / "o", "-q")
    assert code == 2
    one_line_error(err, "vol.nii.gz", "fixed.nii.gz", "3D", "2D")
    code, _, err = cli(capfd, "apply", result_dir / "transform.h5", pair_files / "vol.nii.gz", "-r", pair_files / "fixed.nii.gz",
                       "-o", tmp_path / "w.nii.gz")
    assert code == 2
    one_line_error(err, "transform.h5", "vol.nii.gz")


def test_tiny_image_error_names_the_files(tmp_path, capfd):
    tiny = sitk.Image([2, 2, 2], sitk.sitkFloat32) + 1.0
    tiny[0, 0, 0] = 5.0
    sitk.WriteImage(tiny, str(tmp_path / "tiny.nii.gz"))
    code, _, err = cli(capfd, "register", tmp_path / "tiny.nii.gz", tmp_path / "tiny.nii.gz", "-o", tmp_path / "out", "-q")
    assert code == 2
    one_line_error(err, "tiny.nii.gz")
    assert not (tmp_path / "out").exists()


# ----- 11. permissions and concurrent runs ----------------------------------------------------------------
def test_outputs_get_the_permissions_of_the_umask(tmp_path, pair_files):
    out = tmp_path / "out"
    proc = subprocess.run(["sh", "-c", f"umask 002 && exec {sys.executable} -c 'from morphreg.cli.main import main; main()' "
                           f"register {pair_files / 'fixed.nii.gz'} {pair_files / 'moving.nii.gz'} -o {out} -p rigid -q"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o775
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o664}
    assert (tmp_path / "w.nii.gz").exists() is False
    assert UMASK == os.umask(UMASK)  # the module read the umask without changing it


def test_second_run_into_the_same_folder_is_refused_while_the_first_writes(tmp_path, pair_files, capfd):
    out = tmp_path / "out"
    with output_folder(out) as first:
        (first / "partial.txt").write_text("first run, still working", encoding="utf-8")
        code, _, err = cli(capfd, *register_args(pair_files, out))
        assert code == 2
        one_line_error(err, str(out), "another morphreg run")
        with output_folder(tmp_path / "other") as second:  # other folders are not blocked
            (second / "x.txt").write_text("x", encoding="utf-8")
    assert (out / "partial.txt").exists() and (tmp_path / "other" / "x.txt").exists()
    assert sorted(p for p in entries(tmp_path) if p.startswith(".")) == []


# ----- classes that already worked: keep them working -----------------------------------------------------
def test_missing_and_corrupt_inputs(tmp_path, pair_files, capfd):
    (pair_files / "garbage.nii.gz").write_bytes(b"this is not an image" * 10)
    for name, says in [("absent.nii.gz", "not found"), ("garbage.nii.gz", "")]:
        code, _, err = cli(capfd, "register", pair_files / name, pair_files / "moving.nii.gz", "-o", tmp_path / "out", "-q")
        assert code == 2
        one_line_error(err, str(pair_files / name), says)
    assert not (tmp_path / "out").exists()


def test_empty_mask_and_integer_images(tmp_path, pair_files, capfd):
    empty = sitk.ReadImage(str(pair_files / "fixed_labels.nii.gz")) * 0
    sitk.WriteImage(empty, str(pair_files / "empty.nii.gz"))
    code, _, err = cli(capfd, *register_args(pair_files, tmp_path / "out", "--moving-mask", pair_files / "empty.nii.gz"))
    assert code == 2
    one_line_error(err, "empty.nii.gz", "empty")
    ints = sitk.Cast(sitk.ReadImage(str(pair_files / "moving.nii.gz")) * 1000, sitk.sitkInt16)
    sitk.WriteImage(ints, str(pair_files / "int16.nii.gz"))
    code, _, err = cli(capfd, "register", pair_files / "fixed.nii.gz", pair_files / "int16.nii.gz", "-o", tmp_path / "out",
                       "-p", "rigid", "-q")
    assert code == 0, err
