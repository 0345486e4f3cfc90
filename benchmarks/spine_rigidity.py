"""The four settings of the CT-MR spine thesis (issue 13) on the synthetic spine phantom: unsupervised (US),
weakly supervised (WS), and each with the rigidity penalty inside the vertebrae (US-RP, WS-RP), trained by
``morphreg train`` from ``configs/spine_ct_mr/*.yaml`` on the same data and evaluated on held-out pairs.

Per setting (mean over the validation pairs): det J of the predicted map inside the vertebrae (max |det J - 1|,
on the bones eroded by one voxel, where the finite differences stay inside), the rigidity residual of each
vertebra (RMS of its mapped points about the best rigid fit, mm), |det J - 1| in the soft tissue (does it
deform?), the error against the known map inside the bones and in the soft tissue (mm), and the Dice of
body and vertebrae. Resumable: a finished run is reused (``--fresh`` retrains).

    python benchmarks/spine_rigidity.py --data /tmp/spine --runs /tmp/spine_runs [--pairs 12] [--steps N]
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SETTINGS = ("us", "ws", "us_rp", "ws_rp")
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "spine_ct_mr"


def rigid_residual(x: np.ndarray, y: np.ndarray) -> float:
    """RMS distance (mm) of y from the best rigid map of x (Kabsch), points (P, dim)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    u, _, vt = np.linalg.svd(xc.T @ yc)
    d = np.eye(x.shape[1])
    d[-1, -1] = np.sign(np.linalg.det(u @ vt))
    r = (u @ d @ vt).T
    return float(np.sqrt(((yc - xc @ r.T) ** 2).sum(1).mean()))


def evaluate(model: Path, rows: list[dict], folder: Path) -> dict:
    from morphreg.evaluate.overlap import dice
    from morphreg.image.io import read_image
    from morphreg.learn.model import load_model
    from morphreg.transforms.warp import warp

    net, _ = load_model(model)
    out = {k: [] for k in ("det_max_bone", "rigid_rms_mm", "det_dev_tissue", "error_bone_mm", "error_tissue_mm",
                           "dice_body", "dice_bones")}
    for row in rows:
        fixed, moving = read_image(folder / row["fixed"]), read_image(folder / row["moving"])
        labels, moving_labels = read_image(folder / row["fixed_labels"]), read_image(folder / row["moving_labels"])
        from morphreg.data.phantom import spine_phantom_pair

        truth = spine_phantom_pair(dim=fixed.dim, size=fixed.grid.size[0], seed=int(row["id"][5:])).true_transform
        transform = net.predict(fixed, moving)
        grid = fixed.grid
        with torch.no_grad():
            det = transform.jacobian_determinant(grid)[0].numpy()
            mapped = transform.map_grid(grid)[0].numpy()
            true = truth.map_grid(grid)[0].numpy()
        lab = labels.data[0].numpy()
        bone = torch.as_tensor(lab >= 2, dtype=torch.float32)[None, None]
        pool = F.max_pool2d if fixed.dim == 2 else F.max_pool3d
        inner = (-pool(-bone, 3, 1, 1))[0, 0].numpy() > 0
        tissue = lab == 1
        points = grid.points().numpy()
        error = np.linalg.norm(mapped - true, axis=-1)
        out["det_max_bone"].append(float(np.abs(det[inner] - 1).max()))
        out["rigid_rms_mm"].append(float(np.mean([rigid_residual(points[lab == b], mapped[lab == b])
                                                  for b in np.unique(lab) if b >= 2])))
        out["det_dev_tissue"].append(float(np.abs(det[tissue] - 1).mean()))
        out["error_bone_mm"].append(float(error[lab >= 2].mean()))
        out["error_tissue_mm"].append(float(error[tissue].mean()))
        warped = warp(moving_labels, transform, grid, "label").data[0].numpy()
        out["dice_body"].append(dice(warped > 0, lab > 0))
        out["dice_bones"].append(float(np.mean([dice(warped == b, lab == b) for b in np.unique(lab) if b >= 2])))
    return {k: float(np.mean(v)) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--val", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="override train.steps of the configs")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    from morphreg.data.phantom import write_spine_dataset

    if not (args.data / "val.csv").exists():
        write_spine_dataset(args.data, pairs=args.pairs, val=args.val)
    rows = list(csv.DictReader(open(args.data / "val.csv")))
    results = {}
    for setting in args.settings.split(","):
        run = args.runs / setting
        if args.fresh or not (run / "model.pt").exists():
            sets = [f"data.pairs={args.data / 'train.csv'}", f"data.val_pairs={args.data / 'val.csv'}"]
            sets += [f"train.steps={args.steps}"] if args.steps else []
            command = [sys.executable, "-m", "morphreg", "train", str(CONFIGS / f"{setting}.yaml"), "-o", str(run), "-q"]
            subprocess.run(command + [a for s in sets for a in ("--set", s)], check=True)
        results[setting] = evaluate(run / "model.pt", rows, args.data)
    keys = list(next(iter(results.values())))
    print("| setting | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for setting, r in results.items():
        print(f"| {setting.upper().replace('_', '-')} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
