"""Multi-atlas segmentation of the prostate gland on the 78 MR volumes of ../shared/data/prostate_mr_trus
(issue 15, item 4): atlases obs000..obs039 (MR + gland = channel 0 of moving_labels), targets
obs040..obs077, every atlas registered to every target (40 x 38 = 1520 registrations) as Dask tasks
with the code of ``morphreg segment`` (register_atlas + fuse), then per target the Dice of

- each single atlas (-> "average single atlas": per target the mean over atlases; "best single atlas":
  the one atlas with the highest median Dice over the targets, chosen with hindsight, so it flatters
  single-atlas segmentation; "oracle": per target the best atlas, an upper bound nobody can pick),
- majority, weighted (local NCC) and STAPLE fusion of the same warped labels.

Nothing is tuned here: preset "default", fusion constants as shipped. Resumable: finished targets are
rows of OUT/targets.csv and are skipped on a rerun; their warped labels and vote weights are kept in
OUT/warped/ so that the tables can be recomputed (``--report-only``).

The 78 MR volumes are not 78 subjects: consecutive cases often share one patient's MR (identical gland
masks, images differing by noise), e.g. obs040/041/042. The split 0-39 / 40-77 separates them (no
patient is atlas and target), but duplicates would vote twice and be scored twice, so the tables are
also given with one volume per patient (patients found here as identical gland masks, not typed in).

    python benchmarks/multi_atlas.py -o /tmp/multi_atlas --workers 2 [--targets 40-77] [--atlases 0-39]
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prostate_mr_trus"
FUSIONS = ("majority", "weighted", "staple")


def _span(text: str) -> list[int]:
    a, b = text.split("-")
    return list(range(int(a), int(b) + 1))


def _gland(case: int) -> np.ndarray:
    from morphreg.image.io import read_image

    return read_image(DATA / "moving_labels" / f"obs{case:03d}.nii.gz", labels=True).data[0].numpy() != 0


def _finish_target(target: int, maps: dict, weights: dict, atlases: list[int], selections=()) -> dict:
    """Single-atlas and fused gland Dice of one target from its warped atlas labels; for each K of
    ``selections`` also the fusions of the K atlases with the highest mean vote weight (as
    ``segment(select=K)`` chooses them), as "<fusion>@K"."""
    from morphreg.evaluate.overlap import dice
    from morphreg.image.io import read_image
    from morphreg.population.fusion import fuse

    truth = _gland(target)
    grid = read_image(DATA / "moving_images" / f"obs{target:03d}.nii.gz").grid
    ids = [a for a in atlases if a in maps]
    row = {"target": target, "atlases_ok": len(ids)}
    for a in atlases:
        row[f"atlas{a:03d}"] = dice(maps[a].numpy() == 1, truth) if a in maps else float("nan")
    for method in FUSIONS:
        fused, _ = fuse([maps[a] for a in ids], grid, method, [weights[a] for a in ids])
        row[method] = dice(fused.numpy() == 1, truth)
    for k in selections:
        chosen = sorted(ids, key=lambda a: -float(weights[a].mean()))[:k]
        for method in FUSIONS:
            fused, _ = fuse([maps[a] for a in chosen], grid, method, [weights[a] for a in chosen])
            row[f"{method}@{k}"] = dice(fused.numpy() == 1, truth)
    return row


def _keep(path: Path, maps: dict, weights: dict) -> None:
    """The warped atlas labels (uint8) and vote weights (float16) of one target, to try other fusions later."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{f"labels{a:03d}": m.numpy().astype(np.uint8) for a, m in maps.items()},
                        **{f"weights{a:03d}": w.numpy().astype(np.float16) for a, w in weights.items()})


def main() -> None:
    from morphreg.population.cluster import as_finished, dask_client
    from morphreg.population.segment import Atlas, register_atlas

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--targets", default="40-77")
    parser.add_argument("--atlases", default="0-39")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--report-only", action="store_true", help="Only print the tables of the finished targets.")
    parser.add_argument("--tune-below", type=int, default=58, help="Targets below this case tune the atlas selection.")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"no data at {DATA}")
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "targets.csv"
    atlases, targets = _span(args.atlases), _span(args.targets)
    if args.report_only:
        return _report(args.out, targets, atlases, args.tune_below)
    columns = ["target", "atlases_ok", *FUSIONS, *(f"atlas{a:03d}" for a in atlases)]
    done = {}
    if table.is_file():
        with open(table, newline="") as f:
            done = {int(r["target"]): r for r in csv.DictReader(f)}
    todo = [t for t in targets if t not in done]
    atlas_of = {a: Atlas(f"obs{a:03d}", str(DATA / "moving_images" / f"obs{a:03d}.nii.gz"),
                         str(DATA / "moving_labels" / f"obs{a:03d}.nii.gz")) for a in atlases}
    jobs = [(t, a) for t in todo for a in atlases]
    print(f"{len(done)} targets done, {len(todo)} to do: {len(jobs)} registrations on {args.workers} workers", flush=True)
    maps: dict[int, dict] = {t: {} for t in todo}
    weights: dict[int, dict] = {t: {} for t in todo}
    seen: dict[int, int] = {t: 0 for t in todo}
    seconds: list[float] = []
    t0 = time.perf_counter()
    write_header = not table.is_file()
    with dask_client("local", args.workers) as client, open(table, "a", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        if write_header:
            writer.writeheader()

        def task(job):
            target, atlas = job
            rec = register_atlas(atlas_of[atlas], str(DATA / "moving_images" / f"obs{target:03d}.nii.gz"), args.preset,
                                 None, "mono", "0", True, 1, 0)
            return {**rec, "target": target, "atlas": atlas}

        for job, rec in as_finished(client, task, jobs, name="multi-atlas"):
            target, atlas = job
            seen[target] += 1
            if rec["status"] == "ok":
                maps[target][atlas] = torch.from_numpy(rec["labels"])
                weights[target][atlas] = torch.from_numpy(rec["weights"])
                seconds.append(rec["seconds"])
            else:
                print(f"obs{target:03d} <- obs{atlas:03d}: {rec['error']}", flush=True)
            if seen[target] == len(atlases):
                _keep(args.out / "warped" / f"obs{target:03d}.npz", maps[target], weights[target])
                row = _finish_target(target, maps.pop(target), weights.pop(target), atlases)
                writer.writerow(row)
                f.flush()
                done[target] = row
                elapsed = time.perf_counter() - t0
                print(f"obs{target:03d}: majority {row['majority']:.3f} weighted {row['weighted']:.3f} staple "
                      f"{row['staple']:.3f}; {len(done)}/{len(targets)} targets, {elapsed / 60:.1f} min, "
                      f"median registration {statistics.median(seconds):.2f} s", flush=True)
    _report(args.out, targets, atlases, args.tune_below)


def patients(cases: list[int]) -> list[list[int]]:
    """Cases grouped by patient: the same MR volume up to noise has an identical gland mask."""
    groups: list[list[int]] = []
    masks = {c: _gland(c) for c in cases}
    for c in cases:
        home = next((g for g in groups if np.array_equal(masks[g[0]], masks[c])), None)
        (home.append(c) if home is not None else groups.append([c]))
    return groups


def _load(path: Path) -> tuple[dict, dict]:
    data = np.load(path)
    maps = {int(k[6:]): torch.from_numpy(data[k].astype(np.int16)) for k in data.files if k.startswith("labels")}
    weights = {int(k[7:]): torch.from_numpy(data[k].astype(np.float32)) for k in data.files if k.startswith("weights")}
    return maps, weights


def _report(out: Path, targets: list[int], atlases: list[int], tune_below: int, selections=(5, 10, 15, 20)) -> None:
    """Tables over all target volumes and one volume per patient; then atlas selection: the fusion and K
    with the best median on the tuning targets (< ``tune_below``), reported on the others."""
    one_each = [g[0] for g in patients(atlases)]
    firsts = [g[0] for g in patients(targets)]
    for name, atlas_set in ((f"all {len(atlases)} atlas volumes", atlases), (f"{len(one_each)} atlases, one per patient", one_each)):
        rows = {t: _finish_target(t, *_load(out / "warped" / f"obs{t:03d}.npz"), atlas_set, selections)
                for t in targets if (out / "warped" / f"obs{t:03d}.npz").is_file()}
        _table(f"{name}, {len(rows)} target volumes", [rows[t] for t in rows], atlas_set)
        mine = [t for t in firsts if t in rows]
        _table(f"{name}, {len(mine)} target patients (first volume of each)", [rows[t] for t in mine], atlas_set)
        tune = [rows[t] for t in mine if t < tune_below]
        held = [rows[t] for t in mine if t >= tune_below]
        if not tune or not held:
            continue
        choices = [f"{m}@{k}" for k in selections for m in FUSIONS] + list(FUSIONS)
        scores = {c: float(np.median([r[c] for r in tune])) for c in choices}
        best = max(choices, key=scores.get)
        print(f"atlas selection tuned on {len(tune)} patients (< obs{tune_below:03d}): " +
              ", ".join(f"{c} {v:.3f}" for c, v in sorted(scores.items(), key=lambda kv: -kv[1])[:6]))
        _table(f"{name}, {len(held)} held-out patients (>= obs{tune_below:03d}); selected: {best}", held, atlas_set,
               extra=(best,))


def _table(title: str, rows: list[dict], atlases: list[int], extra=()) -> None:
    singles = np.array([[float(r[f"atlas{a:03d}"]) for a in atlases] for r in rows])
    best_atlas = int(np.nanargmax(np.nanmedian(singles, axis=0)))
    lines = [("average single atlas (per target: mean over atlases)", np.nanmean(singles, axis=1)),
             (f"best single atlas (obs{atlases[best_atlas]:03d}, chosen on these targets)", singles[:, best_atlas]),
             ("oracle: per target its best atlas (not a method)", np.nanmax(singles, axis=1))]
    lines += [(f"{m} fusion", np.array([float(r[m]) for r in rows])) for m in (*FUSIONS, *extra)]
    print(f"\nGland Dice, {title} (median [IQR], min):")
    print("| | median [IQR] | min |\n|---|---|---|")
    for name, v in lines:
        q1, med, q3 = np.nanpercentile(v, [25, 50, 75])
        print(f"| {name} | {med:.3f} [{q1:.3f}-{q3:.3f}] | {np.nanmin(v):.3f} |")
    single_medians = np.nanmedian(singles, axis=0)
    print(f"single-atlas medians over the targets: {np.nanmin(single_medians):.3f} .. {np.nanmax(single_medians):.3f}")


if __name__ == "__main__":
    main()
