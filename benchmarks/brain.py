"""Brain T1 inter-subject benchmark: morphreg vs ANTs SyN, elastix affine+B-spline, dipy SyN,
FireANTs (moments+affine+Greedy, CPU, own venv) and NiftyReg (reg_aladin+reg_f3d),
subject_a <-> subject_b (both directions), evaluated with the same independent code.

    python benchmarks/brain.py [--tools morphreg,morphreg:accurate,ants,elastix,dipy,fireants,niftyreg]
                               [--threads 2] [--preset P] [--device cuda] [--fireants-params JSON]

``morphreg:P`` runs the CLI with ``--preset P`` (several presets side by side in one run).
``fireants`` runs benchmarks/fireants_runner.py in the venv at $FIREANTS_PYTHON (an interpreter or a
venv folder; default /work/venvs/fireants) with FireANTs' tutorial settings; ``--fireants-params``
overrides them, e.g. '{"greedy_scales": [4, 2], "greedy_iterations": [200, 100]}' (its full-resolution
levels cost ~15 s per iteration on 2 CPU cores). ``niftyreg`` needs the PyPI ``niftyreg`` package's
binaries (or $NIFTYREG_BIN).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import orientation_check, run_ants, run_dipy, run_elastix, run_fireants, run_niftyreg, set_threads  # noqa: E402


COLUMNS = ["pair", "tool", "Dice before", "Dice after", "Dice (SimpleITK warp)", "folding %", "SDlogJ", "min detJ", "median detJ",
           "time s", "orient. corr"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tools", default="morphreg,ants,elastix,dipy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default=None, help="morphreg preset (default: the CLI's default)")
    ap.add_argument("--directions", default="b->a,a->b", help="moving->fixed pairs")
    ap.add_argument("--device", default="cpu", help="morphreg's device (cpu or cuda; the peers run on the CPU)")
    ap.add_argument("--fireants-params", default="{}", help="JSON overrides of fireants_runner.py's settings")
    ap.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = ap.parse_args()
    set_threads(args.threads)

    import torch

    from common import DATA, evaluate, markdown, run_morphreg_cli, sitk_dice
    from morphreg.image.io import read_image

    root = DATA / "brain_t1"
    if not root.exists():
        sys.exit(f"brain data not found at {root}")
    tools = args.tools.split(",")
    rows, records = [], []
    for direction in args.directions.split(","):
        mov, fix = direction.split("->")
        fixed_path, moving_path = root / f"subject_{fix}_t1.nii.gz", root / f"subject_{mov}_t1.nii.gz"
        fixed, moving = read_image(fixed_path, dtype=torch.float32), read_image(moving_path, dtype=torch.float32)
        fl_path, ml_path = root / f"subject_{fix}_labels.nii.gz", root / f"subject_{mov}_labels.nii.gz"
        fl, ml = read_image(fl_path), read_image(ml_path)
        for tool in tools:
            if tool.split(":")[0] == "morphreg":
                preset = tool.split(":")[1] if ":" in tool else args.preset
                extra = (["--preset", preset] if preset else []) + ["--device", args.device]
                t, seconds, summary = run_morphreg_cli(fixed_path, moving_path, extra, args.threads)
                corr, info = float("nan"), summary.get("timings", {})
            else:
                runners = {"ants": run_ants, "elastix": run_elastix, "dipy": run_dipy,
                           "fireants": lambda f, m: run_fireants(f, m, threads=args.threads,
                                                                 params=json.loads(args.fireants_params)),
                           "niftyreg": lambda f, m: run_niftyreg(f, m, threads=args.threads)}
                r = runners[tool](fixed_path, moving_path)
                t, seconds, corr, info = r.transform, r.seconds, orientation_check(r, fixed, moving), r.info
            e = evaluate(t, fl, ml)
            jac = e["transform"]["jacobian"]
            rec = {"direction": f"{mov}->{fix}", "tool": tool, "seconds": seconds,
                   "dice_initial": e["initial"]["overlap"]["mean"]["dice"], "dice": e["overlap"]["mean"]["dice"],
                   "dice_sitk": sitk_dice(t, fl_path, ml_path),
                   "folding_percent": jac["folding_percent"], "sdlogj": jac["sdlogj"], "median_detj": jac["median"], "min_detj": jac["min"],
                   "orientation_corr": corr, "timings": info}
            records.append(rec)
            rows.append([rec["direction"], tool, rec["dice_initial"], rec["dice"], rec["dice_sitk"], rec["folding_percent"], rec["sdlogj"],
                         rec["min_detj"], rec["median_detj"], seconds, corr])
            print(markdown(COLUMNS, [rows[-1]]).splitlines()[-1], flush=True)
    print()
    print(markdown(COLUMNS, rows))
    # Ratios against ANTs SyN, per direction (measured side by side in this run).
    print()
    ratio_rows = []
    for rec in records:
        ref = next((r for r in records if r["tool"] == "ants" and r["direction"] == rec["direction"]), None)
        if ref and rec["tool"] != "ants":
            ratio_rows.append([rec["direction"], rec["tool"], rec["seconds"] / ref["seconds"], rec["dice"] - ref["dice"]])
    if ratio_rows:
        print(markdown(["pair", "tool", "time / ANTs time", "Dice - ANTs Dice"], ratio_rows))
    split = time_split(records)
    if split:
        print()
        print(markdown(["pair", "tool", "whole call s", "inputs s", "linear stages s", "deformable s", "final warp s",
                        "start + writing s", "all but deformable s", "all but deformable / ANTs"], split))
    if args.json:
        args.json.write_text(json.dumps(records, indent=2, default=str), encoding="utf-8")


def time_split(records: list[dict]) -> list[list]:
    """Where a morphreg CLI call spends its time (summary.json timings; the rest of the wall time is
    process start and writing), and the cost of everything but the deformable stage against ANTs."""
    rows = []
    for rec in records:
        t = rec.get("timings") or {}
        if not t.get("stages_s"):
            continue
        ref = next((r for r in records if r["tool"] == "ants" and r["direction"] == rec["direction"]), None)
        fixed_cost = rec["seconds"] - t["stages_s"][-1]
        rows.append([rec["direction"], rec["tool"], rec["seconds"], t["io_s"], sum(t["stages_s"][:-1]), t["stages_s"][-1],
                     t["warp_s"], rec["seconds"] - t["total_s"], fixed_cost,
                     fixed_cost / ref["seconds"] if ref else float("nan")])
    return rows


if __name__ == "__main__":
    main()
