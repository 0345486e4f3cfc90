"""Prostate MR -> TRUS benchmark: gland Dice and landmark-centroid TRE (mm) for morphreg (images
only, and label-driven with the gland masks) and the peers, evaluated with the same code.

    python benchmarks/prostate.py [--pairs 0-9] [--tools morphreg,morphreg-labels,ants,elastix]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import orientation_check, run_ants, run_dipy, run_elastix, set_threads  # noqa: E402


def pair_numbers(spec: str) -> list[int]:
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "prostate_mr_trus"


def pair_files(i: int) -> dict[str, Path]:
    name = f"obs{i:03d}.nii.gz"
    return {"fixed": ROOT / "fixed_images" / name, "moving": ROOT / "moving_images" / name,
            "fixed_label": ROOT / "fixed_labels" / name, "moving_label": ROOT / "moving_labels" / name}


def score(tool: str, i: int, transform, seconds: float, corr: float = float("nan")) -> dict:
    """One pair's record: gland Dice (channel 0) and landmark-centroid TRE (channels 1..), before and after,
    and folding, by the same evaluation code for every tool."""
    from common import evaluate
    from morphreg.image.io import read_image

    f = pair_files(i)
    # Channel 0 is the gland (Dice); channels 1.. are landmarks: TRE = |T(p) - q| for their
    # centroids p (fixed) and q (moving), each on its own grid (evaluate's centroid TRE).
    e = evaluate(transform, read_image(f["fixed_label"]), read_image(f["moving_label"]), landmark_channels="1-")
    ov, ov0 = e["overlap"]["labels"], e["initial"]["overlap"]["labels"]
    gland = next(iter(ov))
    return {"pair": f"obs{i:03d}", "tool": tool, "gland_dice_initial": ov0[gland]["dice"], "gland_dice": ov[gland]["dice"],
            "tre_initial_mm": e["centroid_tre"]["initial"]["mean_mm"], "tre_mm": e["centroid_tre"]["final"]["mean_mm"],
            "folding_percent": e["transform"]["jacobian"]["folding_percent"], "seconds": seconds, "orientation_corr": corr}


def run_tool(tool: str, i: int, threads: int = 2) -> dict:
    """Register pair ``i`` with a classical tool (morphreg, morphreg-labels, ants, elastix, dipy) and score it."""
    import torch

    from common import run_morphreg_cli
    from morphreg.image.io import read_image

    f = pair_files(i)
    corr = float("nan")
    if tool.startswith("morphreg"):
        extra = []
        if tool == "morphreg-labels":  # the 4D stacks as given; the gland channel drives
            extra = ["--fixed-labels", str(f["fixed_label"]), "--moving-labels", str(f["moving_label"]), "--label-channels", "0"]
        t, seconds, _ = run_morphreg_cli(f["fixed"], f["moving"], extra, threads)
    else:
        runner = {"ants": run_ants, "elastix": run_elastix, "dipy": run_dipy}[tool]
        r = runner(f["fixed"], f["moving"])
        fixed, moving = read_image(f["fixed"], dtype=torch.float32), read_image(f["moving"], dtype=torch.float32)
        t, seconds, corr = r.transform, r.seconds, orientation_check(r, fixed, moving)
    return score(tool, i, t, seconds, corr)


def print_record(rec: dict) -> None:
    print(f"{rec['pair']} {rec['tool']:16s} Dice {rec['gland_dice_initial']:.3f} -> {rec['gland_dice']:.3f}  "
          f"TRE {rec['tre_initial_mm']:5.1f} -> {rec['tre_mm']:5.1f} mm  folding {rec['folding_percent']:.2f} %  "
          f"{rec['seconds']:5.1f} s", flush=True)


def summary_table(records: list[dict], tools: list[str]) -> str:
    """Medians per tool as a markdown table."""
    from common import markdown, median

    rows = []
    for tool in tools:
        rs = [r for r in records if r["tool"] == tool]
        rows.append([tool, len(rs), median(r["gland_dice_initial"] for r in rs), median(r["gland_dice"] for r in rs),
                     median(r["tre_initial_mm"] for r in rs), median(r["tre_mm"] for r in rs),
                     sum(r["tre_mm"] > r["tre_initial_mm"] + 0.1 for r in rs), median(r["folding_percent"] for r in rs),
                     median(r["seconds"] for r in rs)])
    return markdown(["tool", "pairs", "median Dice before", "median Dice after", "median TRE before (mm)",
                     "median TRE after (mm)", "pairs with TRE worse by > 0.1 mm", "median folding %", "median time s"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", default="0-77")
    ap.add_argument("--tools", default="morphreg,morphreg-labels,ants,elastix")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    set_threads(args.threads)

    if not ROOT.exists():
        sys.exit(f"prostate data not found at {ROOT}")
    tools = args.tools.split(",")
    records = []
    for i in pair_numbers(args.pairs):
        for tool in tools:
            rec = run_tool(tool, i, args.threads)
            records.append(rec)
            print_record(rec)
    print()
    print(summary_table(records, tools))
    if args.json:
        args.json.write_text(json.dumps(records, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
