"""``morphreg batch PAIRS.csv -o OUT``: register every row of a table on Dask (see morphreg.population.batch)."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


console = Console(soft_wrap=True)
SOME_ROWS_FAILED = 3  # exit code when the batch ran but some rows failed (the message says how many)


def batch_cmd(
    pairs: Path = typer.Argument(..., help="CSV with columns fixed, moving [, id, fixed_labels, moving_labels, fixed_mask, "
                                 "moving_mask, fixed_landmarks, moving_landmarks]; paths relative to the CSV."),
    output: Path = typer.Option(..., "-o", "--output", help="Batch folder: one result folder per row (OUT/<id>/), "
                                "batch.json, and metrics.csv when labels are given. A rerun skips finished rows."),
    preset: str = typer.Option("default", "--preset", "-p", help="Registration preset of every row."),
    set_: list[str] = typer.Option(None, "--set", help="Change a preset parameter (as in 'morphreg register')."),
    scheduler: str = typer.Option("local", "--scheduler", help="'local' (a Dask LocalCluster here) or the address of "
                                  "a running Dask scheduler, e.g. tcp://10.0.0.5:8786."),
    workers: int = typer.Option(1, "--workers", min=1, help="Local worker processes (one registration each at a time)."),
    threads_per_worker: int = typer.Option(1, "--threads-per-worker", min=1, help="torch and ITK threads in each worker."),
    label_channels: str = typer.Option(None, "--label-channels", help="Label channels that drive the registration."),
    landmark_channels: str = typer.Option(None, "--landmark-channels", help="Label channels scored as landmarks (TRE)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every registration."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Register many pairs as Dask tasks: resumable, one failing row does not stop the others."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from morphreg.population.batch import run_batch
    from morphreg.register.presets import parse_overrides

    overrides = parse_overrides(set_)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=quiet)
    task = None

    def on_start(n_todo: int, dashboard: str | None) -> None:
        nonlocal task
        if dashboard:
            console.print(f"Dask dashboard: {dashboard}")
        progress.start()
        task = progress.add_task("registering", total=n_todo)

    def on_row(record: dict) -> None:
        progress.advance(task)
        if record["status"] != "ok":
            progress.console.print(f"[red]{record['id']}: {record['error']}[/red]")

    try:
        report = run_batch(pairs, output, preset, overrides, scheduler, workers, threads_per_worker, label_channels,
                           landmark_channels, seed, on_start, on_row)
    finally:
        progress.stop()
    skipped = sum(1 for r in report.rows if r.get("skipped"))
    console.print(f"{len(report.rows)} rows: {len(report.rows) - len(report.failed) - skipped} registered, {skipped} "
                  f"already done, {len(report.failed)} failed -> {output} ({report.seconds:.1f} s)")
    if report.failed:
        raise typer.Exit(SOME_ROWS_FAILED)

