"""The MR -> TRUS prostate model (issue 14): score a trained model on held-out pairs next to the classical
tools, and (``--ship RUN [RUN ...]``) write the shipped model ``src/morphreg/models/prostate-mr-trus.pt`` with a
model card made from these figures and the runs' config and metrics (nothing typed by hand). Several runs of one
recipe (different train.seed) ship as one ensemble model (``morphreg.learn.model.ensemble``: their shifts and
segmentations averaged).

Learned rows: ``morphreg.learn.predict`` on images already in memory, so the time is network + warp (+ the
instance optimisation), without process start or file reading; scored by the same code as every tool
(``prostate.score``: gland Dice, landmark-centroid TRE, folding).

    python benchmarks/prostate_model.py --model RUN/model.pt [--pairs 68-77] [--instance 0,50]
        [--peers morphreg,morphreg-labels,ants,elastix | --peer-records PROSTATE.json ...] [--json OUT.json]
        [--name deepreg-recipe] [--segmentations] [--ship RUN [RUN ...] [--cv CV_RUNS]]
    python benchmarks/prostate_model.py --recard --instance 0,20 --segmentations --cv CV_RUNS   # new figures, same model

``--segmentations`` also scores the network's own gland segmentations of both images against the expert glands
(Dice, centroid error and its mean vector): the network's shift is the difference of those two centroids.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from prostate import ROOT, pair_numbers, pair_files, print_record, run_tool, score, summary_table  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "morphreg" / "models"
NAME = "prostate-mr-trus"


def run_learned(model: str, i: int, instance_steps: int, name: str = "learned") -> dict:
    import torch

    from morphreg.image.io import read_image
    from morphreg.learn.predict import predict

    f = pair_files(i)
    fixed, moving = read_image(f["fixed"], dtype=torch.float32), read_image(f["moving"], dtype=torch.float32)
    start = time.perf_counter()
    result = predict(model, fixed, moving, instance_steps=instance_steps)
    seconds = time.perf_counter() - start
    tool = name + (f"+io{instance_steps}" if instance_steps else "")
    return score(tool, i, result.transform, seconds)


def segmentation_errors(net, i: int) -> dict:
    """Pair ``i``: the network's gland segmentation of each image (its first map > 0.5, on the model grid) against
    the expert gland: Dice on the model grid and the centroid error (network - expert, world LPS mm). Why: the
    network's shift is the difference of its two gland centroids, so these errors are what limits it."""
    import torch

    from morphreg.evaluate.landmarks import label_centroids
    from morphreg.evaluate.overlap import dice
    from morphreg.image.io import read_image
    from morphreg.image.resample import resample

    f = pair_files(i)
    fixed, moving = read_image(f["fixed"], dtype=torch.float32), read_image(f["moving"], dtype=torch.float32)
    _, maps = net.predict_with_segmentations(fixed, moving)
    record = {"pair": f"obs{i:03d}"}
    for side, probability, label_file in (("trus", maps[0], f["fixed_label"]), ("mr", maps[1], f["moving_label"])):
        labels = read_image(label_file)
        expert = labels.with_data((labels.data[:1] > 0.5).to(torch.uint8))
        network = probability.with_data((probability.data > 0.5).to(torch.uint8))
        on_model_grid = resample(expert.with_data(expert.data.float()), network.grid).data[0] > 0.5
        record[f"{side}_dice"] = dice(network.data[0].numpy() > 0, on_model_grid.numpy())
        error = label_centroids(network).points[0] - label_centroids(expert).points[0]
        record[f"{side}_centroid_error_mm"] = error.tolist()
    return record


def segmentation_summary(records: list[dict]) -> dict:
    """Per image (trus, mr): median Dice, median and mean centroid error (mm) and its mean vector (a bias)."""
    import numpy as np

    from common import median

    out = {"pairs": len(records)}
    for side in ("trus", "mr"):
        errors = np.array([r[f"{side}_centroid_error_mm"] for r in records])
        norms = np.linalg.norm(errors, axis=1)
        out[side] = {"median_dice": median(r[f"{side}_dice"] for r in records), "median_centroid_error_mm":
                     median(norms), "mean_centroid_error_mm": float(np.nanmean(norms)),
                     "mean_error_vector_mm": np.round(np.nanmean(errors, axis=0), 2).tolist()}
    return out


def measured_segmentations(model: str, pairs: list[int]) -> dict:
    """:func:`segmentation_summary` of ``model`` (a file or a shipped model's name) on ``pairs``, printed per pair."""
    import numpy as np

    from morphreg.learn.model import load_model
    from morphreg.learn.zoo import resolve_model

    net, _ = load_model(resolve_model(model))
    records = []
    for i in pairs:
        records.append(segmentation_errors(net, i))
        print(records[-1]["pair"], *(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {np.round(v, 1)}"
                                     for k, v in records[-1].items() if k != "pair"), flush=True)
    return segmentation_summary(records)


def medians(records: list[dict], tool: str) -> dict:
    from common import median

    rs = [r for r in records if r["tool"] == tool]
    return {"pairs": len(rs), "median_tre_mm": median(r["tre_mm"] for r in rs),
            "median_gland_dice": median(r["gland_dice"] for r in rs),
            "max_folding_percent": max((r["folding_percent"] for r in rs), default=float("nan")),
            "median_seconds": median(r["seconds"] for r in rs),
            "pairs_worse_tre": sum(r["tre_mm"] > r["tre_initial_mm"] + 0.1 for r in rs)}


def cross_validation(runs: Path | None) -> dict | str:
    """Medians over the pairs scored by ``prostate_cv.py --runs RUNS`` (its folds' scores.json), per tool."""
    if runs is None:
        return "not run (5 patient-grouped folds = 5 trainings: benchmarks/prostate_cv.py)"
    import yaml

    scored = sorted(runs.glob("fold*/scores.json"))
    if not scored:
        sys.exit(f"{runs}: no fold scored yet (prostate_cv.py writes fold<k>/scores.json)")
    records = [r for path in scored for r in json.loads(path.read_text())]
    config = yaml.safe_load((scored[0].parent / "model" / "config.yaml").read_text())
    from common import median

    tools = list(dict.fromkeys(r["tool"] for r in records))
    first = [r for r in records if r["tool"] == tools[0]]
    return {"folds": f"{len(scored)} of 5 patient-grouped folds (benchmarks/prostate_cv.py), each trained on the "
                     "other folds' pairs and scored on its own", "steps_per_fold": config["train"]["steps"],
            "initial": {"median_tre_mm": median(r["tre_initial_mm"] for r in first),
                        "median_gland_dice": median(r["gland_dice_initial"] for r in first)},
            **{t: medians(records, t) for t in tools}}


def validation(records: list[dict], pairs: list[int], segmentations: dict | None = None) -> dict:
    """The card's validation block: the initial alignment and each tool's medians on ``pairs`` (and the quality
    of the network's own gland segmentations, :func:`segmentation_summary`, when measured)."""
    from common import median

    tools = sorted({r["tool"] for r in records}, key=lambda t: (not t.startswith("learned"), t))
    first = [r for r in records if r["tool"] == tools[0]]  # the initial alignment is the same for every tool
    initial = {"median_tre_mm": median(r["tre_initial_mm"] for r in first),
               "median_gland_dice": median(r["gland_dice_initial"] for r in first)}
    block = {"pairs": f"obs{pairs[0]:03d}-obs{pairs[-1]:03d} (never trained on)", "initial": initial,
             **{t: medians(records, t) for t in tools}}
    return block | ({"network_segmentations": segmentations} if segmentations else {})


def training_block(runs: list[Path]) -> dict:
    """The card's training figures of one run, or of the runs of an ensemble (their seeds; seconds summed)."""
    import torch
    import yaml

    configs = [yaml.safe_load((run / "config.yaml").read_text()) for run in runs]
    rows = [list(csv.DictReader(open(run / "metrics.csv"))) for run in runs]
    train = configs[0]["train"]
    block = {"steps": int(rows[0][-1]["step"]) if rows[0] else 0, "batch_size": train["batch_size"], "lr": train["lr"],
             "schedule": train["lr_schedule"], "seconds": sum(float(r[-1]["seconds"]) for r in rows if r),
             "hardware": f"{platform.machine()} CPU, {train.get('threads') or os.cpu_count()} of {os.cpu_count()} cores "
                         f"(train.threads), torch {torch.__version__}",
             "recipe": "configs/prostate_mr_trus.yaml (morphreg train; continue with --resume)"}
    if len(runs) > 1:
        block |= {"members": len(runs), "seeds": [c["train"]["seed"] for c in configs],
                  "recipe": "configs/prostate_mr_trus.yaml, once per seed (morphreg train --set train.seed=S), the "
                            "runs joined with morphreg ensemble; seconds: all runs together"}
    return block


def model_card(runs: list[Path], records: list[dict], pairs: list[int], cv_runs: Path | None = None,
               segmentations: dict | None = None) -> dict:
    """The card: data, preprocessing, losses, training, validation figures (from ``records``), cross-validation
    figures (from ``cv_runs``), limits; ``runs``: one run folder, or those of an ensemble's members."""
    import yaml

    config = yaml.safe_load((runs[0] / "config.yaml").read_text())
    pairs_csv = Path(config["data"]["pairs"]).parts  # resolved by the run: shown from configs/ on, not this machine's path
    trained_on = Path(*pairs_csv[pairs_csv.index("configs"):]) if "configs" in pairs_csv else Path(*pairs_csv[-2:])
    return {
        "name": NAME,
        "summary": {
            "task": "MR (moving) -> TRUS (fixed) prostate registration from the images alone",
            "validation": validation(records, pairs, segmentations),
            "cross_validation": cross_validation(cv_runs),
        },
        "data": "DeepReg's public, heavily blurred demo version of the SmartTarget MR-TRUS data "
                f"(../shared/data/prostate_mr_trus): trained on the pairs of {trained_on}, scored on "
                f"obs{pairs[0]:03d}-obs{pairs[-1]:03d}; consecutive cases may share one patient's MR, and no patient "
                "straddles obs067/obs068",
        "preprocessing": {"model_grid_size": config["model"]["size"], "model_grid_spacing_mm": config["model"]["spacing"],
                          "intensity_percentiles": config["model"]["percentiles"],
                          "grid": "centred on the TRUS image, along its axes; both images resampled onto it"},
        "network": {k: config["model"][k] for k in ("kind", "affine", "linear", "keypoints", "keypoint_maps", "encoder",
                                                    "decoder", "steps", "cascade")
                    if k in config["model"]},
        "loss": config["loss"],
        "augmentation": config["data"]["augment"],
        "training": training_block(runs),
        "limits": ["trained and scored on the blurred demo images only; not validated on clinical images",
                   f"{len(pairs)} validation pairs" + ("" if cv_runs else "; no cross-validation yet"),
                   "the model grid covers 72 x 96 x 72 mm around the TRUS centre: MR anatomy outside it is not seen",
                   "the network translates only (the shift between its two gland segmentations): rotation and shape "
                   "differences remain; --instance-optimization N adds the label-driven affine on those segmentations",
                   "its gland segmentations are coarse (computed at 3 mm); where one is poor, the shift is too"]
        + ([f"an ensemble of {len(runs)} networks: {len(runs)} network passes per pair"] if len(runs) > 1 else []),
    }


def ship(model: str, card: dict) -> Path:
    """Write the network of ``model`` (a model file) as the shipped model, with ``card`` inside it and beside it."""
    from morphreg.learn.model import load_model, save_model

    net, _ = load_model(model)
    path = save_model(net, SHIPPED / f"{NAME}.pt", card=card)
    (SHIPPED / f"{NAME}.json").write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def updated_card(records: list[dict], pairs: list[int], cv_runs: Path | None, segmentations: dict | None = None) -> dict:
    """The shipped model's card with its validation (``records``) and cross-validation (``cv_runs``) figures
    measured again; the rest (data, network, loss, training, tools not in ``records``) is the card it was
    shipped with."""
    from morphreg.learn.model import load_model

    _, card = load_model(SHIPPED / f"{NAME}.pt")
    now, before = validation(records, pairs, segmentations), card["summary"]["validation"]
    # rows of tools not scored again (a peer trained in an earlier session) stay when the pairs are the same
    summary = {**card["summary"], "validation": {**before, **now} if before.get("pairs") == now["pairs"] else now}
    if cv_runs is not None:
        summary["cross_validation"] = cross_validation(cv_runs)
    limits = [x.replace("; no cross-validation yet", "") if cv_runs is not None else x for x in card["limits"]]
    return {**card, "summary": summary, "limits": limits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=NAME, help="a model file or a shipped model's name")
    ap.add_argument("--pairs", default="68-77")
    ap.add_argument("--instance", default="0", help="instance optimisation steps, comma-separated (0 = none)")
    ap.add_argument("--peers", default="", help="classical tools on the same pairs (prostate.py names)")
    ap.add_argument("--peer-records", type=Path, action="append", default=[],
                    help="a --json file of prostate.py (or of this script) on the same pairs: its tools join the table "
                         "(timed in that run); repeatable")
    ap.add_argument("--name", default="learned", help="the model's row name (e.g. deepreg-recipe for the peer recipe)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--ship", type=Path, nargs="+", default=[],
                    help="a run folder, or several (one recipe, different seeds: shipped as their ensemble): ship its "
                         "model with the card from these figures")
    ap.add_argument("--cv", type=Path, default=None, help="the RUNS folder of prostate_cv.py: its figures join the card")
    ap.add_argument("--recard", action="store_true",
                    help="score the shipped model and rewrite its card's validation (and, with --cv, cross-validation) "
                         "figures; the network and the rest of the card stay")
    ap.add_argument("--segmentations", action="store_true",
                    help="also measure the network's own gland segmentations against the expert ones (Dice, centroid "
                         "error; a gland-segmenting model only); they join the card with --ship / --recard")
    args = ap.parse_args()
    from peers import set_threads

    set_threads(args.threads)
    if not ROOT.exists():
        sys.exit(f"prostate data not found at {ROOT}")
    if args.recard and (args.ship or args.model != NAME):
        sys.exit("--recard rewrites the shipped model's card: give neither --ship nor another --model")
    model = args.model
    if args.ship:  # score exactly what ships: one run's model, or the runs' models joined
        from morphreg.learn.model import save_ensemble

        files = [run / "model.pt" for run in args.ship]
        model = str(files[0] if len(files) == 1 else save_ensemble(files, args.ship[0] / "ensemble.pt"))
    pairs = pair_numbers(args.pairs)
    steps = [int(s) for s in args.instance.split(",")]
    peers = [p for p in args.peers.split(",") if p]
    records = []
    for i in pairs:
        for n in steps:
            records.append(run_learned(model, i, n, args.name))
            print_record(records[-1])
        for tool in peers:
            records.append(run_tool(tool, i, args.threads))
            print_record(records[-1])
    tools = [args.name + (f"+io{n}" if n else "") for n in steps] + peers
    if args.peer_records:
        wanted = {f"obs{i:03d}" for i in pairs}
        earlier = [r for path in args.peer_records for r in json.loads(path.read_text()) if r["pair"] in wanted]
        records += earlier
        tools += list(dict.fromkeys(r["tool"] for r in earlier))
    print()
    print(summary_table(records, tools))
    if args.json:
        args.json.write_text(json.dumps(records, indent=2, default=str), encoding="utf-8")
    segmentations = measured_segmentations(model, pairs) if args.segmentations else None
    if segmentations:
        print(json.dumps(segmentations, indent=1))
    if args.ship:
        card = model_card(args.ship, records, pairs, args.cv, segmentations)
        print("shipped", ship(model, card))
    elif args.recard:
        print("card rewritten", ship(str(SHIPPED / f"{NAME}.pt"), updated_card(records, pairs, args.cv, segmentations)))


if __name__ == "__main__":
    main()
