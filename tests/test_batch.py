"""``morphreg batch`` on Dask (issue 15, item 1): tiny synthetic pairs, a LocalCluster and a scheduler
with a worker started as separate processes."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cli import cli
from morphreg.data.phantom import make_phantom_pair
from morphreg.image.io import write_image

QUICK = ["--preset", "affine", "--set", "levels=[[2,null,4]]"]


def _pairs(folder: Path, n: int = 3, broken: bool = False) -> Path:
    """n synthetic 2D pairs with labels; ``broken``: one more row whose moving image is truncated."""
    rows = []
    for i in range(n):
        pair = make_phantom_pair(dim=2, size=24, spacing=2.0, seed=i)
        names = {}
        for key, image in [("fixed", pair.fixed), ("moving", pair.moving), ("fixed_labels", pair.fixed_labels),
                           ("moving_labels", pair.moving_labels)]:
            names[key] = f"case{i}_{key}.nii.gz"
            write_image(image, folder / names[key])
        rows.append({"id": f"case{i}", **names})
    if broken:
        (folder / "bad_moving.nii.gz").write_bytes((folder / "case0_moving.nii.gz").read_bytes()[:300])
        rows.append({**rows[0], "id": "bad", "moving": "bad_moving.nii.gz"})
    table = folder / "pairs.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "fixed", "moving", "fixed_labels", "moving_labels"])
        writer.writeheader()
        writer.writerows(rows)
    return table


def test_batch_on_a_local_cluster_writes_every_result_and_resumes(tmp_path, capfd):
    table = _pairs(tmp_path)
    out = tmp_path / "out"
    code, text, _ = cli(capfd, "batch", table, "-o", out, "--workers", "2", "--quiet", *QUICK)
    assert code == 0, text
    for i in range(3):
        assert (out / f"case{i}" / "transform.h5").is_file() and (out / f"case{i}" / "metrics.json").is_file()
    summary = json.loads((out / "batch.json").read_text())
    assert summary["failed"] == 0 and 0 < summary["medians"]["dice"] <= 1
    with open(out / "metrics.csv") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ["case0", "case1", "case2"]
    # A run killed half way: one row's folder never appeared (a folder appears only once complete).
    stamp = {i: (out / f"case{i}" / "summary.json").stat().st_mtime_ns for i in (0, 2)}
    os.rename(out / "case1", tmp_path / "gone")
    code, text, _ = cli(capfd, "batch", table, "-o", out, "--quiet", *QUICK)
    assert code == 0 and "1 registered, 2 already done" in text
    assert (out / "case1" / "transform.h5").is_file()
    assert all((out / f"case{i}" / "summary.json").stat().st_mtime_ns == stamp[i] for i in (0, 2))  # not recomputed


def test_a_broken_row_is_reported_and_the_others_finish(tmp_path, capfd):
    table = _pairs(tmp_path, n=2, broken=True)
    out = tmp_path / "out"
    code, text, _ = cli(capfd, "batch", table, "-o", out, "--quiet", *QUICK)
    assert code == 3 and "1 failed" in text
    rows = {r["id"]: r for r in json.loads((out / "batch.json").read_text())["rows"]}
    assert rows["bad"]["status"] == "failed" and "bad_moving.nii.gz" in rows["bad"]["error"]
    assert rows["case0"]["status"] == rows["case1"]["status"] == "ok"
    assert not (out / "bad").exists()


def test_a_bad_table_is_one_line(tmp_path, capfd):
    table = tmp_path / "pairs.csv"
    table.write_text("fixed,moving,labels\na.nii.gz,b.nii.gz,c.nii.gz\n")
    code, _, err = cli(capfd, "batch", table, "-o", tmp_path / "out")
    assert code == 2 and "unknown column(s) labels" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capfd, "batch", _pairs(tmp_path, n=1), "-o", tmp_path / "out2", "--scheduler", "nowhere")
    assert code == 2 and "--scheduler" in err


@pytest.mark.slow
def test_batch_template_segment_against_a_scheduler_and_worker_started_as_separate_processes(tmp_path, capfd):
    table = _pairs(tmp_path, n=2)
    scheduler_file = tmp_path / "scheduler.json"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    scheduler = subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    worker = None
    try:
        deadline = time.time() + 60
        while not scheduler_file.is_file() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        worker = subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        code, text, _ = cli(capfd, "batch", table, "-o", tmp_path / "out", "--scheduler", address, "--quiet", *QUICK)
        assert code == 0, text
        assert all((tmp_path / "out" / f"case{i}" / "transform.h5").is_file() for i in range(2))
        # template and segment take the same path to the cluster.
        images = [tmp_path / f"case{i}_fixed.nii.gz" for i in range(2)]
        code, text, _ = cli(capfd, "template", *images, "-o", tmp_path / "t.nii.gz", "-k", "1", "--scheduler", address,
                            "--quiet", *QUICK)
        assert code == 0 and (tmp_path / "t.nii.gz").is_file(), text
        (tmp_path / "atlases.csv").write_text("image,labels\ncase0_moving.nii.gz,case0_moving_labels.nii.gz\n"
                                              "case1_moving.nii.gz,case1_moving_labels.nii.gz\n")
        code, text, _ = cli(capfd, "segment", images[0], "--atlases", tmp_path / "atlases.csv", "-o", tmp_path / "s.nii.gz",
                            "--scheduler", address, "--quiet", *QUICK)
        assert code == 0 and (tmp_path / "s.nii.gz").is_file(), text
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
