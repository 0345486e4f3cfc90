"""Can an image similarity find the prostate in MR -> TRUS at all? An exhaustive translation search.

For every pair, the MR (moving) is shifted over a grid of translations (default +-15 mm in 3 mm steps,
11^3 shifts) and each similarity of morphreg.metrics is evaluated against the TRUS (fixed) exactly as the
multimodal rigid stage sees them: 1/2 resolution, 1.5 mm Gaussian smoothing, inside the ultrasound
field of view restricted to its central region (``--roi``, as the ``multimodal`` preset). The reference
is the translation that matches the two gland centroids (from the labels, never seen by the metrics),
which alone brings the median landmark TRE from 11.6 to 5.2 mm; the best translation fitted to the
landmarks themselves (an oracle no registration has) is listed too, as a floor for rigid shifts.

Printed per metric: median TRE at the metric's best shift over the whole lattice and within ``--local-mm``
of no shift (what a local optimiser started at the image centres can reach at best), pairs where that is
worse than no shift, pairs whose best shift lies within 6 mm of the reference, and the median rank
(fraction of shifts scoring better, 0 = best) of the reference shift. An informative metric puts the
reference near rank 0.

    python benchmarks/prostate_landscape.py [--pairs 0-77] [--metrics mind,ngf,nmi,lncc] [--json out.json]
    python benchmarks/prostate_landscape.py --summarize half1.json half2.json
    python benchmarks/prostate_landscape.py --metrics none      # the reference rows only (seconds)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used (a fast --help)
    import torch

sys.path.insert(0, str(Path(__file__).parent))
from peers import set_threads  # noqa: E402
from prostate import pair_numbers  # noqa: E402


def shift_grid(range_mm: float, step_mm: float) -> np.ndarray:
    """(S, 3) translations (mm) on a cubic lattice, the zero shift included."""
    ax = np.arange(-range_mm, range_mm + 1e-6, step_mm)
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)


def landscape(fixed, moving, mask: torch.Tensor | None, shifts: np.ndarray, metrics: list[str], chunk: int = 64) -> dict[str, np.ndarray]:
    """Loss of each metric (lower = better) for the moving image shifted by each translation (mm);
    ``mask`` (1, 1, *fixed shape) or None weights the fixed voxels."""
    import torch

    from morphreg.metrics import similarity_loss
    from morphreg.image.sampling import sample_points

    pts = fixed.grid.points(dtype=torch.float32)
    f = fixed.data[None].float()
    m = None if mask is None else mask.float()
    losses = {name: similarity_loss(name) for name in metrics}
    out = {name: [] for name in metrics}
    for part in torch.as_tensor(shifts, dtype=torch.float32).split(chunk):
        moved = pts[None] + part.view(-1, *([1] * fixed.dim), fixed.dim)  # (S, *shape, dim)
        flat = moved.reshape(1, -1, *moved.shape[2:])
        warped = sample_points(moving, flat)[0].reshape(moving.channels, len(part), *pts.shape[:-1]).transpose(0, 1)
        for name, loss in losses.items():
            out[name] += [float(loss(f, warped[s:s + 1], m)) for s in range(len(part))]
    return {name: np.asarray(v) for name, v in out.items()}


def pair_inputs(root: Path, i: int, roi: float, shrink: int, sigma_mm: float):
    """TRUS level image, smoothed MR, similarity mask and the landmark / gland centroids of pair i."""
    import torch

    from morphreg.evaluate.landmarks import label_centroids
    from morphreg.image.io import read_image
    from morphreg.image.pyramid import pyramid_level
    from morphreg.optim.multires import StageInputs, level_data
    from morphreg.register.regions import field_of_view_region

    name = f"obs{i:03d}.nii.gz"
    full = read_image(root / "fixed_images" / name, dtype=torch.float32)
    fixed = pyramid_level(full, shrink, sigma_mm)
    moving = pyramid_level(read_image(root / "moving_images" / name, dtype=torch.float32), 1, sigma_mm)
    # The stage's mask: made on the full-resolution TRUS, taken to the level grid by the engine.
    mask = level_data(StageInputs(full, moving, field_of_view_region(full, roi)), fixed, moving).fixed_mask
    fc = label_centroids(read_image(root / "fixed_labels" / name))
    mc = label_centroids(read_image(root / "moving_labels" / name))
    # Channels correspond one to one; a channel empty in either image is left out (NaN centroid).
    keep = ~(np.isnan(fc.points).any(1) | np.isnan(mc.points).any(1))
    if not keep[0]:
        raise RuntimeError(f"{name}: empty gland channel")
    return fixed, moving, mask, fc.points[keep], mc.points[keep]


def summary_table(records: list[dict], metrics: list[str], local_mm: float) -> str:
    """Markdown table over pairs (see the module docstring)."""
    from common import markdown

    t0 = np.array([r["tre_initial"] for r in records])
    rows = [["no shift", len(records), float(np.median(t0)), 0, "-", "-"],
            ["gland-centroid shift (reference)", len(records), float(np.median([r["tre_reference"] for r in records])),
             int(sum(r["tre_reference"] > r["tre_initial"] + 0.1 for r in records)), len(records), 0.0]]
    if all("tre_landmark_translation" in r for r in records):
        rows.append(["best translation fitted to the landmarks (oracle)", len(records),
                     float(np.median([r["tre_landmark_translation"] for r in records])), 0, "-", "-"])
    for n in metrics:
        t = np.array([r[n]["tre"] for r in records])
        rows.append([f"best {n} shift", len(records), float(np.median(t)), int((t > t0 + 0.1).sum()),
                     int(sum(r[n]["to_reference_mm"] <= 6.0 for r in records)),
                     float(np.median([r[n]["reference_rank"] for r in records]))])
        t = np.array([r[n]["tre_local"] for r in records])
        rows.append([f"best {n} shift within {local_mm:g} mm", len(records), float(np.median(t)),
                     int((t > t0 + 0.1).sum()), "-", "-"])
    return markdown(["translation", "pairs", "median TRE (mm)", "pairs worse than no shift (> 0.1 mm)",
                     "pairs within 6 mm of reference", "median rank of reference (0 = best)"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="0-77")
    ap.add_argument("--metrics", default="mind,ngf,nmi,lncc")
    ap.add_argument("--range-mm", type=float, default=15.0)
    ap.add_argument("--step-mm", type=float, default=3.0)
    ap.add_argument("--roi", type=float, default=0.3, help="central region of the TRUS (as the multimodal preset)")
    ap.add_argument("--local-mm", type=float, default=6.0, help="radius of the local search about no shift")
    ap.add_argument("--shrink", type=int, default=2)
    ap.add_argument("--sigma-mm", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--summarize", type=Path, nargs="+", default=None,
                    help="only print the table over the records of earlier --json runs (e.g. two halves)")
    args = ap.parse_args()
    set_threads(args.threads)
    metrics = [m for m in args.metrics.split(",") if m and m != "none"]
    if args.summarize:
        records = [r for p in args.summarize for r in json.loads(p.read_text(encoding="utf-8"))]
        print(summary_table(records, metrics, args.local_mm))
        return

    from common import DATA

    root = DATA / "prostate_mr_trus"
    if not root.exists():
        sys.exit(f"prostate data not found at {root}")
    shifts = shift_grid(args.range_mm, args.step_mm)
    zero = int(np.argmin(np.linalg.norm(shifts, axis=1)))
    records = []
    for i in pair_numbers(args.pairs):
        fixed, moving, mask, p, q = pair_inputs(root, i, args.roi, args.shrink, args.sigma_mm)
        # Channel 0 is the gland; the reference shift matches its centroids (fixed -> moving = x + t).
        gland, p, q = q[0] - p[0], p[1:], q[1:]

        def tre(t):
            return float(np.linalg.norm(p + t - q, axis=1).mean())

        losses = landscape(fixed, moving, mask, shifts, metrics) if metrics else {}
        ref = int(np.argmin(np.linalg.norm(shifts - gland, axis=1)))  # lattice shift nearest the reference
        rec = {"pair": i, "tre_initial": tre(0.0), "tre_reference": tre(gland), "reference_mm": gland.tolist(),
               "tre_landmark_translation": tre((q - p).mean(0)), "landmarks": len(p)}
        for name, v in losses.items():
            best = shifts[int(np.argmin(v))]
            local = shifts[int(np.argmin(np.where(np.linalg.norm(shifts, axis=1) <= args.local_mm + 1e-6, v, np.inf)))]
            rec[name] = {"best_mm": best.tolist(), "tre": tre(best), "to_reference_mm": float(np.linalg.norm(best - gland)),
                         "local_mm": local.tolist(), "tre_local": tre(local),
                         "reference_rank": float((v < v[ref]).mean()), "zero_rank": float((v < v[zero]).mean())}
        records.append(rec)
        print(f"obs{i:03d} TRE initial {rec['tre_initial']:.1f} reference {rec['tre_reference']:.1f} | "
              + " ".join(f"{n} {rec[n]['tre']:.1f} (rank {rec[n]['reference_rank']:.2f})" for n in metrics), flush=True)

    print(f"\nshifts: {len(shifts)} ({args.step_mm} mm steps, +-{args.range_mm} mm), roi {args.roi}, "
          f"1/{args.shrink} resolution, smoothing {args.sigma_mm} mm")
    print(summary_table(records, metrics, args.local_mm))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
