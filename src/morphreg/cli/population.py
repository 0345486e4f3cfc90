"""The population commands on Dask: ``batch`` (many pairs), ``template`` (groupwise template) and
``segment`` (multi-atlas segmentation); see :mod:`morphreg.population`."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from morphreg.errors import MorphregError


console = Console(soft_wrap=True)
SOME_ROWS_FAILED = 3  # exit code when a command ran but some of its registrations failed (it says how many)
# The Dask and run options every population command has (typer reads these declarations, never changes them).
SCHEDULER = typer.Option("local", "--scheduler", help="'local' (a Dask LocalCluster here) or the address of a running "
                         "Dask scheduler, e.g. tcp://10.0.0.5:8786.")
WORKERS = typer.Option(1, "--workers", min=1, help="Local worker processes (one registration each at a time).")
THREADS = typer.Option(1, "--threads-per-worker", min=1, help="torch and ITK threads in each worker.")
SET = typer.Option(None, "--set", help="Change a preset parameter (as in 'morphreg register').")
SEED = typer.Option(0, "--seed", help="Seed of every registration.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")


class TaskProgress:
    """A rich bar of finished Dask tasks (none with --quiet): ``start`` prints the dashboard address,
    ``done`` advances and prints a failed task's error. Use as a context manager (stops the bar)."""

    def __init__(self, quiet: bool, description: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=console, disable=quiet)
        self.description, self.task = description, None

    def start(self, total: int, dashboard: str | None) -> None:
        if dashboard:
            console.print(f"Dask dashboard: {dashboard}")
        self.bar.start()
        self.task = self.bar.add_task(self.description, total=total)

    def done(self, record: dict) -> None:
        self.bar.advance(self.task)
        if record["status"] != "ok":
            self.bar.console.print(f"[red]{record.get('id') or record.get('image')}: {record['error']}[/red]")
        elif record.get("note"):
            self.bar.console.print(f"{record.get('id') or record.get('image')}: {record['note']}")

    def __enter__(self) -> TaskProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()


def batch_cmd(
    pairs: Path = typer.Argument(..., help="CSV with columns fixed, moving [, id, fixed_labels, moving_labels, fixed_mask, "
                                 "moving_mask, fixed_landmarks, moving_landmarks]; paths relative to the CSV."),
    output: Path = typer.Option(..., "-o", "--output", help="Batch folder: one result folder per row (OUT/<id>/), "
                                "batch.json, and metrics.csv when labels are given. A rerun skips finished rows."),
    preset: str = typer.Option("default", "--preset", "-p", help="Registration preset of every row."),
    set_: list[str] = SET,
    scheduler: str = SCHEDULER,
    workers: int = WORKERS,
    threads_per_worker: int = THREADS,
    label_channels: str = typer.Option(None, "--label-channels", help="Label channels that drive the registration."),
    landmark_channels: str = typer.Option(None, "--landmark-channels", help="Label channels scored as landmarks (TRE)."),
    seed: int = SEED,
    quiet: bool = QUIET,
) -> None:
    """Register many pairs as Dask tasks: resumable, one failing row does not stop the others."""
    from morphreg.population.batch import run_batch
    from morphreg.register.presets import parse_overrides

    overrides = parse_overrides(set_)
    with TaskProgress(quiet, "registering") as progress:
        report = run_batch(pairs, output, preset, overrides, scheduler, workers, threads_per_worker, label_channels,
                           landmark_channels, seed, progress.start, progress.done, print_stale)
    skipped = sum(1 for r in report.rows if r.get("skipped"))
    recomputed = sum(1 for r in report.rows if r.get("recomputed"))
    console.print(f"{len(report.rows)} rows: {len(report.rows) - len(report.failed) - skipped} registered"
                  f"{f' ({recomputed} of them again)' if recomputed else ''}, {skipped} already done, "
                  f"{len(report.failed)} failed -> {output} ({report.seconds:.1f} s)")
    if report.failed:
        raise typer.Exit(SOME_ROWS_FAILED)


def print_stale(stale: dict[str, str]) -> None:
    """One line per reason: which finished rows are recomputed, and why."""
    by_reason: dict[str, list[str]] = {}
    for row_id, reason in stale.items():
        by_reason.setdefault(reason, []).append(row_id)
    for reason, ids in by_reason.items():
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        console.print(f"[yellow]recomputing {len(ids)} finished row(s), {reason}: {shown}[/yellow]")


def template_cmd(
    images: list[Path] = typer.Argument(None, help="The images (or --list)."),
    image_list: Path = typer.Option(None, "--list", help="A text file with one image path per line (relative to it)."),
    output: Path = typer.Option(..., "-o", "--output", help="The template image; the iterations, convergence.csv and "
                                "template.json go to <name>_iterations/ beside it. A rerun continues."),
    iterations: int = typer.Option(4, "--iterations", "-k", min=1, help="Rounds of register, average, shape update."),
    preset: str = typer.Option("default", "--preset", "-p", help="Registration preset of every image to the template."),
    set_: list[str] = SET,
    modality: str = typer.Option("mono", "--modality", help="mono (one modality: the usual template) | multi | auto."),
    step: float = typer.Option(1.0, "--step", min=0.0, help="Shape-update step (ANTs' -g); 0 = no shape update."),
    initial: Path = typer.Option(None, "--initial", help="Start from this image (its grid is the template grid); "
                                 "default: the mean of the images on the first image's grid."),
    scheduler: str = SCHEDULER,
    workers: int = WORKERS,
    threads_per_worker: int = THREADS,
    seed: int = SEED,
    quiet: bool = QUIET,
) -> None:
    """Build an unbiased groupwise template (ANTs-style: register, average, shape update) on Dask."""
    from morphreg.population.template import build_template, read_image_list
    from morphreg.register.presets import parse_overrides

    if bool(images) == (image_list is not None):
        raise MorphregError("give the images as arguments or with --list (one of the two)")
    paths = read_image_list(image_list) if image_list is not None else [str(p) for p in images]
    overrides = parse_overrides(set_)
    with TaskProgress(quiet, "registrations") as progress:
        def on_iteration(row: dict) -> None:
            progress.bar.console.print(f"iteration {row['iteration']}: mean update {row['mean_update_mm']:.2f} mm, "
                                       f"template change {row['template_change']:.3f}, {row['registered']} registered, "
                                       f"{row['failed']} failed ({row['seconds']:.0f} s)")

        report = build_template(paths, output, iterations, preset, overrides, modality, step, initial, scheduler,
                                workers, threads_per_worker, seed, progress.start, progress.done, on_iteration)
    console.print(f"template of {len(paths)} images after {len(report.convergence)} iterations -> {report.template} "
                  f"(iterations and convergence.csv in {report.work}; {len(report.failed)} failed registrations)")
    if report.failed:
        raise typer.Exit(SOME_ROWS_FAILED)


def segment_cmd(
    target: Path = typer.Argument(..., help="The image to segment."),
    atlases: Path = typer.Option(..., "--atlases", help="CSV with columns image, labels [, id]; paths relative to it."),
    output: Path = typer.Option(..., "-o", "--output", help="Fused label map; <name>_confidence and <name>.json "
                                "(per-atlas records) are written beside it."),
    fusion: str = typer.Option("majority", "--fusion", help="majority | weighted (local NCC) | staple."),
    select: int = typer.Option(None, "--select", min=1, help="Fuse only the K atlases most similar to the target "
                               "after registration (mean local NCC); default: all."),
    preset: str = typer.Option("default", "--preset", "-p", help="Registration preset of every atlas to the target."),
    set_: list[str] = SET,
    modality: str = typer.Option("mono", "--modality", help="mono (atlases of the target's modality) | multi | auto."),
    label_channels: str = typer.Option(None, "--label-channels", help="Atlas label channels / values to keep, e.g. "
                                       "'0' (channel k of a one-hot stack becomes label k + 1)."),
    scheduler: str = SCHEDULER,
    workers: int = WORKERS,
    threads_per_worker: int = THREADS,
    seed: int = SEED,
    quiet: bool = QUIET,
) -> None:
    """Multi-atlas segmentation: register every atlas to TARGET on Dask, warp its labels, fuse them."""
    from morphreg.core.files import check_output_file
    from morphreg.population.segment import check_sidecars, read_atlases, segment, segmentation_paths
    from morphreg.population.fusion import FUSIONS
    from morphreg.register.presets import parse_overrides

    if fusion not in FUSIONS:
        raise MorphregError(f"--fusion: choose from {', '.join(FUSIONS)}, not {fusion!r}")
    table = read_atlases(atlases)
    inputs = [target, atlases] + [p for a in table for p in (a.image, a.labels)]
    for path in segmentation_paths(output).values():
        check_output_file(path, inputs)
    check_sidecars(output)
    overrides = parse_overrides(set_)
    with TaskProgress(quiet, "atlases") as progress:
        result = segment(target, table, fusion, preset, overrides, modality, label_channels, scheduler, workers,
                         threads_per_worker, seed, select, on_start=progress.start, on_atlas=progress.done)
    paths = result.save(output, inputs)
    fused = sum(1 for a in result.atlases if a["status"] == "ok" and a.get("selected", True))
    console.print(f"{fused} of {len(table)} atlases fused ({fusion}) -> {paths['labels']} "
                  f"(confidence: {paths['confidence'].name}; {result.seconds:.1f} s)")
    if result.failed:
        raise typer.Exit(SOME_ROWS_FAILED)

