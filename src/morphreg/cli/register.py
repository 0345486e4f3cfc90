"""``morphreg register FIXED MOVING -o OUT``: run a registration preset and write its outputs."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


console = Console()


def register_cmd(
    fixed: Path = typer.Argument(..., help="Fixed (reference) image."),
    moving: Path = typer.Argument(..., help="Moving image, registered onto the fixed one."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder, written only once complete. It must be new, "
                                "empty or a previous morphreg result (then replaced); never one holding an input."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder that is not a morphreg "
                                   "result: files of the same name are replaced, the others kept."),
    preset: str = typer.Option("default", "--preset", "-p",
                               help="rigid | affine | bspline | syn | demons | convex | tps | rigidity | multimodal | labels | "
                                    "default (affine then SyN for same-modality pairs; 'multimodal' for different "
                                    "modalities, 'labels' when label maps are given) | accurate (default plus a "
                                    "stochastic full-resolution level, about twice the time)."),
    metric: str = typer.Option(None, "--metric", "-m", help="Similarity for every stage: mse ncc lncc ngf mi nmi mind."),
    fixed_mask: Path = typer.Option(None, "--fixed-mask", help="Mask of the fixed image (non-zero = used)."),
    moving_mask: Path = typer.Option(None, "--moving-mask", help="Mask of the moving image."),
    fixed_labels: Path = typer.Option(None, "--fixed-labels", help="Fixed label map or 4D one-hot stack."),
    moving_labels: Path = typer.Option(None, "--moving-labels", help="Moving label map or 4D one-hot stack."),
    label_weight: float = typer.Option(1.0, "--label-weight", help="Weight of the soft-Dice label term."),
    fixed_landmarks: Path = typer.Option(None, "--fixed-landmarks", help="CSV (x,y[,z] LPS mm per row) or label image."),
    moving_landmarks: Path = typer.Option(None, "--moving-landmarks", help="Corresponding moving landmarks."),
    rigidity_mask: Path = typer.Option(None, "--rigidity-mask", help="Fixed-grid mask kept rigid (rigidity preset)."),
    modality: str = typer.Option("auto", "--modality", help="auto | mono | multi (chooses the default metrics)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Random seed (stochastic optimisers)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    report: bool = typer.Option(False, "--report", help="Also write OUT/report.html (and OUT/metrics.json when labels "
                                "or landmarks are given): measures, parameters, QC pictures."),
) -> None:
    """Register MOVING onto FIXED; OUT gets warped.nii.gz, transform.h5, displacement.nii.gz,
    inverse_displacement.nii.gz (when the method has an inverse) and summary.json."""
    from morphreg.core.files import output_folder
    from morphreg.register import register

    inputs = [fixed, moving, fixed_mask, moving_mask, fixed_labels, moving_labels, fixed_landmarks, moving_landmarks,
              rigidity_mask]
    with output_folder(output, inputs, overwrite) as folder:  # checked and locked before the work starts
        result = register(
            fixed, moving, preset, fixed_mask=fixed_mask, moving_mask=moving_mask, fixed_labels=fixed_labels,
            moving_labels=moving_labels, label_weight=label_weight, fixed_landmarks=fixed_landmarks,
            moving_landmarks=moving_landmarks, rigidity_mask=rigidity_mask, metric=metric, modality=modality,
            device=device, seed=seed, progress=not quiet,
        )
        result.write(folder)
        if report:
            _write_report(folder, result, fixed_labels, moving_labels, fixed_landmarks, moving_landmarks)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    t = result.timings
    diverged = [f"{s['index']}:{s['model']}" for s in result.stages if s.get("diverged")]
    console.print(f"[bold]{result.preset}[/] ({result.modality}modal) -> {output}  "
                  f"final metric {result.final_metric if result.final_metric is None else f'{result.final_metric:.5g}'}, "
                  f"folding {result.folding_percent:.3f} %, {t['total_s']:.1f} s"
                  + (f"; discarded diverging stage(s) {', '.join(diverged)}" if diverged else ""), highlight=False)
    if report:
        console.print(f"report: {output / 'report.html'}", highlight=False)


def _write_report(output: Path, result, fixed_labels, moving_labels, fixed_landmarks, moving_landmarks) -> None:
    """OUT/report.html from the saved result; labels/landmarks given to the registration are
    evaluated independently (warped with the saved transform) into OUT/metrics.json first."""
    from morphreg.evaluate import evaluate_registration, read_landmarks, write_metrics
    from morphreg.image.io import read_image
    from morphreg.report import build_report

    if fixed_labels is not None or fixed_landmarks is not None:
        metrics = evaluate_registration(
            result.transform,
            read_image(fixed_labels, labels=True) if fixed_labels is not None else None,
            read_image(moving_labels, labels=True) if moving_labels is not None else None,
            reference=result.fixed.grid,
            fixed_landmarks=read_landmarks(fixed_landmarks, result.fixed.grid) if fixed_landmarks is not None else None,
            moving_landmarks=read_landmarks(moving_landmarks, result.moving.grid) if moving_landmarks is not None else None,
            inverse=result.inverse, fixed=result.fixed, moving=result.moving,
        )
        write_metrics(metrics, output / "metrics.json")
    build_report(output, output / "report.html")
