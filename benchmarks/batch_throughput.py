"""Throughput of ``morphreg batch`` on the prostate MR -> TRUS pairs with 1 and 2 local Dask workers
(issue 15, item 5): pairs per minute and the speed-up, same rows, same preset, in one run.

    python benchmarks/batch_throughput.py [--pairs 0-77] [--workers 1,2] [--preset labels] [--separate]

``--separate`` adds a run against a scheduler and two single-thread workers started as separate
processes on 127.0.0.1 (``dask scheduler`` / ``dask worker``): the path a real cluster takes.

Each worker gets 1 torch/ITK thread, so 2 workers use the machine's 2 cores. The label-driven preset
(gland channel 0) is used by default: it is what a study would run on these pairs.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, markdown  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", default="0-19")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--preset", default="labels")
    ap.add_argument("--separate", action="store_true", help="Also run against a separately started scheduler.")
    args = ap.parse_args()
    root = DATA / "prostate_mr_trus"
    if not root.exists():
        sys.exit(f"prostate data not found at {root}")
    lo, hi = (int(x) for x in args.pairs.split("-"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "pairs.csv"
        with open(table, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "fixed", "moving", "fixed_labels", "moving_labels"])
            for i in range(lo, hi + 1):
                name = f"obs{i:03d}.nii.gz"
                writer.writerow([f"obs{i:03d}"] + [str(root / d / name) for d in
                                                   ("fixed_images", "moving_images", "fixed_labels", "moving_labels")])
        base = None
        runs = [(f"local x{w}", w, None) for w in (int(w) for w in args.workers.split(","))]
        runs += [("dask scheduler + 2 dask worker processes", 2, "separate")] if args.separate else []
        for name, workers, kind in runs:
            out = Path(tmp) / f"out{len(rows)}"
            cmd = ["morphreg", "batch", str(table), "-o", str(out), "--preset", args.preset, "--threads-per-worker", "1",
                   "--label-channels", "0", "--landmark-channels", "1-", "--quiet"]
            with (separate_cluster(Path(tmp), workers) if kind else local(workers)) as where:
                start = time.perf_counter()
                proc = subprocess.run(cmd + where, capture_output=True, text=True)
                seconds = time.perf_counter() - start
            summary = json.loads((out / "batch.json").read_text())
            n = len(summary["rows"]) - summary["failed"]
            rate = 60 * n / seconds
            base = base or rate
            rows.append([name, n, summary["failed"], seconds, rate, rate / base, summary["medians"].get("dice"),
                         summary["medians"].get("tre_mm")])
            print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-300:], flush=True)
    print(markdown(["cluster", "pairs done", "failed", "wall s", "pairs / min", "speed-up", "median Dice",
                    "median TRE mm"], rows))


@contextmanager
def local(workers: int):
    yield ["--workers", str(workers)]


@contextmanager
def separate_cluster(folder: Path, workers: int):
    """A scheduler and ``workers`` single-thread worker processes on 127.0.0.1; yields the batch options.
    The time to start them is not counted (a real cluster is already running)."""
    bin_dir = Path(sys.executable).parent
    scheduler_file = folder / "scheduler.json"
    scheduler = subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [scheduler]
    try:
        deadline = time.time() + 60
        while not scheduler_file.is_file() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        procs += [subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
        from dask.distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=120)
        yield ["--scheduler", address]
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
