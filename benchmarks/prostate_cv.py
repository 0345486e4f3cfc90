"""5-fold cross-validation of the prostate recipe (issue 14), folded by *patient*: the 78 pairs are 54
patients (consecutive cases can share one MR; ``multi_atlas.patients`` finds them from the gland masks), so
a fold never trains on the MR of a patient it scores.

Each fold writes ``RUNS/fold<k>/{train,val}.csv`` (paths to ../shared/data), trains
``configs/prostate_mr_trus.yaml`` on them with ``morphreg train`` (``--resume`` when the run exists, so a fold
continues across sessions in chunks of --minutes), then scores its held-out pairs with ``prostate.score``.

    python benchmarks/prostate_cv.py --runs RUNS [--folds 0-4] [--minutes 110] [--instance 0,40] [--set train.steps=2500 ...]
    python benchmarks/prostate_cv.py --runs RUNS --report        # the table over the folds scored so far
    python benchmarks/prostate_cv.py --runs HALF --train-fraction 0.5   # a learning-curve point: each fold trains on
        every other patient of its training pairs and is scored on all its held-out pairs
    python benchmarks/prostate_cv.py --runs ENS --ensemble RUNS_A RUNS_B [--instance 0,20]   # no training: each
        fold's networks of RUNS_A, RUNS_B (e.g. two train.seed) joined as one ensemble model and scored
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from prostate import ROOT, pair_files, pair_numbers, summary_table  # noqa: E402
from prostate_model import run_learned  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "prostate_mr_trus.yaml"
FOLDS = 5


def folds(cases: list[int], k: int = FOLDS) -> list[list[int]]:
    """``k`` lists of cases; whole patients go round-robin, largest groups first (folds of similar size)."""
    from multi_atlas import patients

    out: list[list[int]] = [[] for _ in range(k)]
    for group in sorted(patients(cases), key=lambda g: (-len(g), g[0])):
        min(out, key=len).extend(group)
    return [sorted(f) for f in out]


def patient_subset(cases: list[int], fraction: float) -> list[int]:
    """About ``fraction`` of ``cases``, whole patients only, spread evenly over the patients in case order (0.5:
    every other patient), so a learning-curve point keeps the data's mix and never splits a patient."""
    from multi_atlas import patients

    groups = sorted(patients(cases), key=lambda g: g[0])
    kept = [g for i, g in enumerate(groups) if int((i + 1) * fraction) > int(i * fraction)]
    return sorted(c for g in kept for c in g)


def write_tables(run: Path, train: list[int], val: list[int]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    for name, cases in (("train", train), ("val", val)):
        with open(run / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "fixed", "moving", "fixed_labels", "moving_labels"])
            for i in cases:
                p = pair_files(i)
                writer.writerow([f"obs{i:03d}", p["fixed"], p["moving"], p["fixed_label"], p["moving_label"]])


def train(run: Path, minutes: float, sets: list[str]) -> bool:
    """Train (or continue) the fold's run for at most ``minutes``; True when it finished its steps."""
    model = run / "model"
    command = [sys.executable, "-m", "morphreg", "train", str(CONFIG), "-o", str(model), "-q",
               "--set", f"data.pairs={run / 'train.csv'}", "--set", f"data.val_pairs={run / 'val.csv'}"]
    command += [a for s in sets for a in ("--set", s)] + (["--resume"] if (model / "config.yaml").exists() else [])
    try:
        subprocess.run(command, check=True, timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        return False  # stopped; the last checkpoint is where --resume continues
    return True


def join_fold(run: Path, members: list[Path]) -> None:
    """The fold's ensemble model ``run/model/model.pt`` (with the first member's config.yaml) of the same fold's
    finished models in ``members`` (RUNS folders)."""
    from morphreg.learn.model import save_ensemble

    models = [m / run.name / "model" for m in members]
    missing = [str(m) for m in models if not (m / "model.pt").exists()]
    if missing:
        sys.exit(f"no model yet in {', '.join(missing)}")
    (run / "model").mkdir(parents=True, exist_ok=True)
    save_ensemble([m / "model.pt" for m in models], run / "model" / "model.pt")
    (run / "model" / "config.yaml").write_text((models[0] / "config.yaml").read_text(), encoding="utf-8")


def score_fold(run: Path, cases: list[int], instance: list[int]) -> list[dict]:
    """The fold's held-out pairs scored with the fold's model, for each number of instance optimisation steps
    (0 = the network alone), as prostate_model.py scores the shipped model."""
    records = [run_learned(str(run / "model" / "model.pt"), i, steps) for i in cases for steps in instance]
    (run / "scores.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--folds", default=f"0-{FOLDS - 1}")
    ap.add_argument("--minutes", type=float, default=110.0, help="stop each training after this long (resume later)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config overrides for every fold")
    ap.add_argument("--instance", default="0", help="instance optimisation steps to score, comma-separated (0 = none)")
    ap.add_argument("--ensemble", type=Path, nargs="+", default=[],
                    help="RUNS folders of finished CV runs: score each fold's models joined as one ensemble (no training)")
    ap.add_argument("--rescore", action="store_true", help="score the folds' finished models again (no training)")
    ap.add_argument("--train-fraction", type=float, default=1.0,
                    help="train each fold on this fraction of its training patients (a learning-curve point)")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if not 0 < args.train_fraction <= 1:
        sys.exit(f"--train-fraction {args.train_fraction}: give a fraction in (0, 1]")
    if not ROOT.exists():
        sys.exit(f"prostate data not found at {ROOT}")
    cases = pair_numbers("0-77")
    parts = folds(cases)
    instance = [int(s) for s in args.instance.split(",")]
    if not args.report:
        for k in pair_numbers(args.folds):
            run = args.runs / f"fold{k}"
            training = [c for c in cases if c not in parts[k]]
            write_tables(run, patient_subset(training, args.train_fraction) if args.train_fraction < 1 else training,
                         parts[k])
            if args.ensemble:
                join_fold(run, args.ensemble)
            if args.ensemble or args.rescore or train(run, args.minutes, args.sets):
                score_fold(run, parts[k], instance)
            else:
                print(f"fold {k}: stopped after {args.minutes} min; rerun to continue", flush=True)
                return
    records = [r for k in range(FOLDS) if (args.runs / f"fold{k}" / "scores.json").exists()
               for r in json.loads((args.runs / f"fold{k}" / "scores.json").read_text())]
    print(f"{len({r['pair'] for r in records})} of 78 pairs scored")
    print(summary_table(records, list(dict.fromkeys(r["tool"] for r in records))))


if __name__ == "__main__":
    main()
