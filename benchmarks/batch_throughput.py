"""Throughput of ``morphreg batch`` on the prostate MR -> TRUS pairs with 1 and 2 local Dask workers
(issue 15, item 5): pairs per minute and the speed-up, same rows, same preset, in one run.

    python benchmarks/batch_throughput.py [--pairs 0-19] [--workers 1,2] [--preset labels]

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, markdown  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", default="0-19")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--preset", default="labels")
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
        for workers in (int(w) for w in args.workers.split(",")):
            out = Path(tmp) / f"out{workers}"
            cmd = ["morphreg", "batch", str(table), "-o", str(out), "--preset", args.preset, "--workers", str(workers),
                   "--threads-per-worker", "1", "--label-channels", "0", "--landmark-channels", "1-", "--quiet"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            summary = json.loads((out / "batch.json").read_text())
            n = len(summary["rows"]) - summary["failed"]
            rate = 60 * n / seconds
            base = base or rate
            rows.append([workers, n, summary["failed"], seconds, rate, rate / base, summary["medians"].get("dice"),
                         summary["medians"].get("tre_mm")])
            print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-300:], flush=True)
    print(markdown(["workers", "pairs done", "failed", "wall s", "pairs / min", "speed-up", "median Dice",
                    "median TRE mm"], rows))


if __name__ == "__main__":
    main()
