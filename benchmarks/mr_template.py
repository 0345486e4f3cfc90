"""An MR prostate template from obs000..obs039 of ../shared/data/prostate_mr_trus (issue 15, item 4),
built by the ``morphreg template`` command on a local Dask cluster; prints the convergence table.

One volume per patient: consecutive cases often share one patient's MR (see multi_atlas.py), and a
patient counted twice would pull the mean shape towards itself.

    python benchmarks/mr_template.py -o /tmp/mr_template [--iterations 4] [--workers 2] [--cases 0-39]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from multi_atlas import DATA, _span, patients  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cases", default="0-39")
    ap.add_argument("--preset", default="default")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [g[0] for g in patients(_span(args.cases))]
    listing = args.out / "images.txt"
    listing.write_text("".join(f"{DATA / 'moving_images' / f'obs{c:03d}.nii.gz'}\n" for c in cases))
    cmd = ["morphreg", "template", "--list", str(listing), "-o", str(args.out / "mr_template.nii.gz"), "--iterations",
           str(args.iterations), "--workers", str(args.workers), "--preset", args.preset, "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout[-3000:], proc.stderr[-2000:], flush=True)
    print(f"{len(cases)} patients, whole command {time.perf_counter() - start:.0f} s on {args.workers} workers")
    table = (args.out / "mr_template_iterations" / "convergence.csv").read_text().splitlines()
    print("| " + " | ".join(table[0].split(",")) + " |\n|" + "---|" * len(table[0].split(",")))
    for line in table[1:]:
        print("| " + " | ".join(f"{float(v):.3g}" if "." in v else v for v in line.split(",")) + " |")


if __name__ == "__main__":
    main()
