"""``morphreg batch PAIRS.csv -o OUT``: one registration per CSV row, as Dask tasks.

Each row (columns ``fixed, moving`` and optionally ``id, fixed_labels, moving_labels, fixed_mask,
moving_mask, fixed_landmarks, moving_landmarks``; paths relative to the CSV) becomes one task that
writes ``OUT/<id>/`` through :func:`morphreg.core.files.output_folder`, so a folder appears only once
complete. A rerun skips rows whose folder is complete and recomputes the others (a killed run leaves
none half-written). A row that fails is recorded with its one-line error in ``OUT/batch.json`` and
the others go on. With labels, each folder gets ``metrics.json`` (independent evaluation) and
``OUT/metrics.csv`` merges them.

Scale-out is Dask's: a ``LocalCluster`` of ``workers`` processes by default, or any running
scheduler (``tcp://HOST:PORT``, e.g. started by dask-jobqueue on SLURM). Each worker runs one task
at a time with ``threads`` intra-op threads for torch and ITK, so workers x threads <= cores does
not oversubscribe.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from morphreg.core.files import atomic_path, complete_output, output_folder
from morphreg.population.cluster import as_finished, dask_client, dashboard, lost_record, recorded, set_threads
from morphreg.core.tables import read_table

COLUMNS = ("id", "fixed", "moving", "fixed_labels", "moving_labels", "fixed_mask", "moving_mask", "fixed_landmarks",
           "moving_landmarks")


@dataclass
class BatchRow:
    """One pair: ``id`` (the result folder's name) and absolute paths by column."""

    id: str
    paths: dict[str, str] = field(default_factory=dict)


def read_pairs(csv_path: str | Path) -> list[BatchRow]:
    """The rows of a pairs CSV (see the module docstring); one-line errors name the file and the row."""
    return [BatchRow(row_id, paths) for row_id, paths in read_table(csv_path, "pairs", COLUMNS[1:3], COLUMNS[3:])]


def register_row(row: BatchRow, out: str, preset: str = "default", overrides: dict | None = None,
                 threads: int = 1, label_channels: str | None = None, landmark_channels: str | None = None,
                 seed: int = 0) -> dict:
    """Register one row into ``out/<id>`` (runs inside a worker). Never raises for a bad row: returns
    ``{"id", "status": "ok" | "failed", "error", "seconds", and the metrics' medians when labels}``."""
    record: dict = {"id": row.id, "status": "failed", "error": None}
    with recorded(record):
        set_threads(threads)
        from morphreg.register import register

        p = row.paths
        result = register(p["fixed"], p["moving"], preset, fixed_mask=p.get("fixed_mask"), moving_mask=p.get("moving_mask"),
                          fixed_labels=p.get("fixed_labels"), moving_labels=p.get("moving_labels"),
                          fixed_landmarks=p.get("fixed_landmarks"), moving_landmarks=p.get("moving_landmarks"),
                          label_channels=label_channels, seed=seed, **(overrides or {}))
        metrics = _metrics(result, p, landmark_channels) if "fixed_labels" in p else None
        with output_folder(Path(out) / row.id, list(p.values())) as tmp:
            result.write(tmp)
            if metrics is not None:
                (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_plain), encoding="utf-8")
        record.update(status="ok", folding_percent=result.folding_percent, final_metric=result.final_metric,
                      **_metric_headline(metrics))
    return record


def _metrics(result, paths: dict, landmark_channels: str | None) -> dict:
    from morphreg.evaluate import evaluate_registration
    from morphreg.image.io import read_image

    fl, ml = read_image(paths["fixed_labels"], labels=True), read_image(paths["moving_labels"], labels=True)
    return evaluate_registration(result.transform, fl, ml, landmark_channels=landmark_channels)


def _plain(x):
    return None if isinstance(x, float) and not math.isfinite(x) else str(x)


def _metric_headline(metrics: dict | None) -> dict:
    """Mean Dice before / after and the mean TRE (landmarks, else structure centroids) of metrics.json."""
    if not metrics:
        return {}
    tre = metrics.get("tre") or metrics.get("centroid_tre") or {}
    return {"dice": metrics.get("overlap", {}).get("mean", {}).get("dice"),
            "dice_initial": metrics.get("initial", {}).get("overlap", {}).get("mean", {}).get("dice"),
            "tre_mm": tre.get("final", {}).get("mean_mm")}


def _done_record(row: BatchRow, folder: Path) -> dict:
    """The record of a row finished by an earlier run (from its files)."""
    rec = {"id": row.id, "status": "ok", "error": None, "skipped": True}
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        rec.update(folding_percent=summary.get("folding_percent"), final_metric=summary.get("final_metric"))
        if (folder / "metrics.json").is_file():
            metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            rec.update(_metric_headline(metrics))
    except (OSError, ValueError):
        pass
    return rec


@dataclass
class BatchReport:
    rows: list[dict]
    dashboard: str | None
    seconds: float

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]


def run_batch(csv_path: str | Path, out: str | Path, preset: str = "default", overrides: dict | None = None,
              scheduler: str = "local", workers: int = 1, threads_per_worker: int = 1,
              label_channels: str | None = None, landmark_channels: str | None = None, seed: int = 0,
              on_start=None, on_row=None) -> BatchReport:
    """Run every row not finished yet (see the module docstring); writes OUT/batch.json and, with
    labels, OUT/metrics.csv. ``on_start(n_todo, dashboard)`` / ``on_row(record)``: progress hooks."""
    rows = read_pairs(csv_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = {r.id: _done_record(r, out / r.id) for r in rows if complete_output(out / r.id)}
    todo = [r for r in rows if r.id not in done]
    records = dict(done)
    dashboard_link = None
    if todo:
        with dask_client(scheduler, workers) as client:
            dashboard_link = dashboard(client)
            if on_start is not None:
                on_start(len(todo), dashboard_link)
            for row, rec in as_finished(client, register_row, todo, str(out), preset, overrides, threads_per_worker,
                                        label_channels, landmark_channels, seed, name="morphreg-batch",
                                        on_lost=lambda row, exc: lost_record("id", row.id, exc)):
                records[row.id] = rec
                if on_row is not None:
                    on_row(rec)
    elif on_start is not None:
        on_start(0, None)
    report = BatchReport([records[r.id] for r in rows], dashboard_link, time.perf_counter() - t0)
    _write_tables(out, report)
    return report


def _write_tables(out: Path, report: BatchReport) -> None:
    ok = [r for r in report.rows if r["status"] == "ok"]
    medians = {}
    for key in ("dice_initial", "dice", "tre_mm", "folding_percent"):
        values = [r[key] for r in ok if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if values:
            medians[key] = statistics.median(values)
    summary = {"rows": report.rows, "failed": len(report.failed), "medians": medians, "seconds": report.seconds,
               "dashboard": report.dashboard}
    with atomic_path(out / "batch.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=_plain), encoding="utf-8")
    if any("dice" in r for r in ok):
        columns = ["id", "status", "dice_initial", "dice", "tre_mm", "folding_percent", "seconds", "error"]
        with atomic_path(out / "metrics.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(report.rows)
