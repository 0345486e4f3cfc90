"""``morphreg batch PAIRS.csv -o OUT``: one registration per CSV row, as Dask tasks.

Each row (columns ``fixed, moving`` and optionally ``id, fixed_labels, moving_labels, fixed_mask,
moving_mask, fixed_landmarks, moving_landmarks``; paths relative to the CSV) becomes one task that
writes ``OUT/<id>/`` through :func:`morphreg.core.files.output_folder`, so a folder appears only once
complete. ``OUT`` is a run folder (:func:`morphreg.core.files.run_folder`): new, empty or an earlier
batch's, held by one batch at a time. Each row's manifest records what made it (the inputs' paths,
sizes, times and sha256, the preset after ``--set`` with its stages, seed, channels and morphreg's
version); a rerun skips a row only when all of that matches and recomputes it otherwise, saying why
(a killed run leaves no row half-written). A row that fails is recorded with its one-line error in
``OUT/batch.json`` and the others go on. With labels, each folder gets ``metrics.json`` (independent
evaluation) and ``OUT/metrics.csv`` merges them.

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

from morphreg import __version__
from morphreg.core.files import (atomic_path, complete_output, file_fingerprint, output_folder, read_manifest, run_folder,
                                 unchanged)
from morphreg.core.tables import read_table
from morphreg.errors import MorphregError
from morphreg.population.cluster import as_finished, dask_client, dashboard, lost_record, recorded, set_threads

COLUMNS = ("id", "fixed", "moving", "fixed_labels", "moving_labels", "fixed_mask", "moving_mask", "fixed_landmarks",
           "moving_landmarks")
TABLES = ("batch.json", "metrics.csv")  # what a batch writes into OUT beside the row folders


@dataclass
class BatchRow:
    """One pair: ``id`` (the result folder's name) and absolute paths by column."""

    id: str
    paths: dict[str, str] = field(default_factory=dict)


def read_pairs(csv_path: str | Path) -> list[BatchRow]:
    """The rows of a pairs CSV (see the module docstring); one-line errors name the file and the row."""
    rows = [BatchRow(row_id, paths) for row_id, paths in read_table(csv_path, "pairs", COLUMNS[1:3], COLUMNS[3:])]
    for row in rows:
        if row.id in TABLES:
            raise MorphregError(f"row id {row.id!r} is the name of the batch's own table: choose another id", csv_path)
    return rows


def batch_settings(preset: str, overrides: dict | None, seed: int, label_channels: str | None,
                   landmark_channels: str | None) -> dict:
    """What every row's result depends on besides its files (JSON; checked now: a wrong preset or --set
    is a one-line error before any work)."""
    from morphreg.register.api import resolve_stages

    settings = {"preset": preset, "overrides": overrides or {}, "stages": resolve_stages(preset, overrides), "seed": seed,
                "label_channels": label_channels, "landmark_channels": landmark_channels, "morphreg": __version__}
    return json.loads(json.dumps(settings, default=str))


def register_row(row: BatchRow, out: str, settings: dict, threads: int = 1) -> dict:
    """Register one row into ``out/<id>`` (runs inside a worker); its manifest records the inputs'
    fingerprints (taken before they are read) and ``settings``. Never raises for a bad row: returns
    ``{"id", "status": "ok" | "failed", "error", "seconds", and the metrics' medians when labels}``."""
    record: dict = {"id": row.id, "status": "failed", "error": None}
    with recorded(record):
        set_threads(threads)
        from morphreg.register import register

        p = row.paths
        made_from = {"inputs": {column: file_fingerprint(path) for column, path in p.items()}, "settings": settings}
        result = register(p["fixed"], p["moving"], settings["preset"], fixed_mask=p.get("fixed_mask"),
                          moving_mask=p.get("moving_mask"), fixed_labels=p.get("fixed_labels"),
                          moving_labels=p.get("moving_labels"), fixed_landmarks=p.get("fixed_landmarks"),
                          moving_landmarks=p.get("moving_landmarks"), label_channels=settings["label_channels"],
                          seed=settings["seed"], **settings["overrides"])
        metrics = _metrics(result, p, settings["landmark_channels"]) if "fixed_labels" in p else None
        with output_folder(Path(out) / row.id, list(p.values()), made_from=made_from) as tmp:
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


def stale_reason(row: BatchRow, folder: Path, settings: dict) -> str | None:
    """Why the finished result ``folder`` of ``row`` is not the one this run would make (None: it is)."""
    made_from = (read_manifest(folder) or {}).get("made_from")
    if not isinstance(made_from, dict):
        return "made without a record of its inputs"
    before = made_from.get("settings", {})
    changed = [key for key in settings if before.get(key) != settings[key]]
    if changed:
        return f"settings changed ({', '.join(changed)})"
    inputs = made_from.get("inputs", {})
    if set(inputs) != set(row.paths):
        return "other columns"
    for column, path in row.paths.items():
        if not unchanged(inputs[column], path):
            return f"{column} changed" if inputs[column].get("path") == str(Path(path).resolve()) else f"{column} is another file"
    return None


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
              on_start=None, on_row=None, on_stale=None) -> BatchReport:
    """Run every row not finished yet with these settings (see the module docstring); writes
    OUT/batch.json and, with labels, OUT/metrics.csv. Hooks: ``on_stale({id: reason})`` (finished rows
    to recompute, before any work), ``on_start(n_todo, dashboard)``, ``on_row(record)``."""
    csv_path = Path(csv_path)
    rows = read_pairs(csv_path)
    settings = batch_settings(preset, overrides, seed, label_channels, landmark_channels)
    inputs = [csv_path, *(p for r in rows for p in r.paths.values())]
    with run_folder(out, "batch", inputs, TABLES, recognise=_earlier_batch_folder) as folder:
        out = folder.path
        t0 = time.perf_counter()
        finished = [r for r in rows if complete_output(out / r.id)]
        stale = {r.id: why for r in finished if (why := stale_reason(r, out / r.id, settings))}
        if stale and on_stale is not None:
            on_stale(stale)
        records = {r.id: _done_record(r, out / r.id) for r in finished if r.id not in stale}
        todo = [r for r in rows if r.id not in records]
        dashboard_link = None
        if todo:
            with dask_client(scheduler, workers) as client:
                dashboard_link = dashboard(client)
                if on_start is not None:
                    on_start(len(todo), dashboard_link)
                for row, rec in as_finished(client, register_row, todo, str(out), settings, threads_per_worker,
                                            name="morphreg-batch", on_lost=lambda row, exc: lost_record("id", row.id, exc)):
                    records[row.id] = {**rec, **({"recomputed": stale[row.id]} if row.id in stale else {})}
                    if on_row is not None:
                        on_row(rec)
        elif on_start is not None:
            on_start(0, None)
        report = BatchReport([records[r.id] for r in rows], dashboard_link, time.perf_counter() - t0)
        _write_tables(out, report)
    return report


def _earlier_batch_folder(folder: Path) -> set[str] | None:
    """The tables of a batch folder written before batch folders had a manifest: a batch.json of rows,
    and besides it only metrics.csv and finished results (None for anything else)."""
    try:
        summary = json.loads((folder / "batch.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("rows"), list):
        return None
    ids = {r.get("id") for r in summary["rows"] if isinstance(r, dict)}
    for entry in folder.iterdir():
        if entry.name not in TABLES and not (entry.name in ids and complete_output(entry)) \
                and not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            return None
    return {name for name in TABLES if (folder / name).is_file()}


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
