"""``morphreg register FIXED MOVING -o OUT``: run a registration preset and write its outputs."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from morphreg.errors import MorphregError


console = Console(soft_wrap=True)  # long lines stay whole in logs and pipes


def register_cmd(
    fixed: Path = typer.Argument(..., help="Fixed (reference) image."),
    moving: Path = typer.Argument(..., help="Moving image, registered onto the fixed one."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder, written only once complete. It must be new, "
                                "empty or a previous morphreg result (then replaced); never one holding an input."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder that is not a morphreg "
                                   "result: files of the same name are replaced, the others kept."),
    preset: str = typer.Option("default", "--preset", "-p",
                               help="rigid | affine | bspline | syn | demons | convex | tps | rigidity | multicontrast | "
                                    "multimodal | labels | default (affine then SyN for same-contrast pairs; "
                                    "'multicontrast' (MI, MIND, checked stages) for two contrasts of the same anatomy, "
                                    "'multimodal' (cautious rigid) for images that do not overlay, e.g. ultrasound vs "
                                    "MR; 'labels' when label maps are given) | accurate (default with a finer velocity "
                                    "and a full-resolution level; slower, see benchmarks/RESULTS.md) | learned (a trained "
                                    "network: --model). "
                                    "'morphreg presets list' shows them."),
    model: str = typer.Option(None, "--model", help="With --preset learned: a model file or a shipped model's name "
                              "('morphreg models'); 'morphreg predict' adds instance optimisation."),
    metric: str = typer.Option(None, "--metric", "-m", help="Similarity for every stage: mse ncc lncc ngf mi nmi mind."),
    fixed_mask: Path = typer.Option(None, "--fixed-mask", help="Mask of the fixed image (non-zero = used)."),
    moving_mask: Path = typer.Option(None, "--moving-mask", help="Mask of the moving image."),
    fixed_labels: Path = typer.Option(None, "--fixed-labels", help="Fixed label map or 4D one-hot stack."),
    moving_labels: Path = typer.Option(None, "--moving-labels", help="Moving label map or 4D one-hot stack."),
    label_weight: float = typer.Option(1.0, "--label-weight", help="Weight of the soft-Dice label term."),
    label_channels: str = typer.Option(None, "--label-channels", help="Structures of the label maps that drive the "
                                       "registration: channel indices of 4D one-hot stacks or label values of maps, "
                                       "e.g. '0' (the prostate gland channel), '1-', '1,3'. Default: all."),
    fixed_landmarks: Path = typer.Option(None, "--fixed-landmarks", help="CSV (x,y[,z] LPS mm per row) or label image."),
    moving_landmarks: Path = typer.Option(None, "--moving-landmarks", help="Corresponding moving landmarks."),
    rigidity_mask: Path = typer.Option(None, "--rigidity-mask", help="Fixed-grid mask kept rigid (rigidity preset)."),
    modality: str = typer.Option("auto", "--modality", help="auto | mono | multi (chooses the default metrics)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Random seed (stochastic optimisers)."),
    preset_file: Path = typer.Option(None, "--preset-file", help="YAML list of stages with the schema of 'morphreg "
                                     "presets show NAME' (used instead of --preset)."),
    set_: list[str] = typer.Option(None, "--set", help="Change a preset parameter, repeatable: [STAGE.]KEY[.SUBKEY]=VALUE, "
                                   "STAGE an index or model name (default: every stage), VALUE in YAML; e.g. "
                                   "--set 2.levels='[[4,1vox,60],[2,0,30]]', --set svf.penalties='[{name: diffusion, "
                                   "weight: 0.1}]', --set bspline.model_params.control_spacing_mm=15, --set optimizer.lr=0.2."),
    initial_transform: Path = typer.Option(None, "--initial-transform", "-t0", help="Start from this fixed -> moving "
                                           "transform (ITK/ANTs/elastix file or .pt; ANTs --initial-moving-transform, "
                                           "elastix -t0) instead of the preset's own initialisation."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for torch and ITK (default: all cores)."),
    image_format: str = typer.Option("auto", "--format", help="Image files of the result: nii.gz | nii | mha | nrrd; "
                                     "auto = the fixed image's (NIfTI for DICOM folders and PNG/TIFF)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (the per-stage lines and the result are "
                               "still printed)."),
    report: bool = typer.Option(False, "--report", help="Also write OUT/report.html (and OUT/metrics.json when labels "
                                "or landmarks are given): measures, parameters, QC pictures."),
) -> None:
    """Register MOVING onto FIXED; OUT gets warped.nii.gz, transform.h5, displacement.nii.gz,
    inverse_displacement.nii.gz (when the method has an inverse) and summary.json."""
    from morphreg.core.files import output_folder
    from morphreg.register import register

    from morphreg.register.presets import load_preset_file, parse_overrides

    suffix = result_suffix(fixed, image_format)
    stages = load_preset_file(preset_file) if preset_file is not None else preset
    overrides = parse_overrides(set_)
    set_threads(threads)
    inputs = [fixed, moving, fixed_mask, moving_mask, fixed_labels, moving_labels, fixed_landmarks, moving_landmarks,
              rigidity_mask, initial_transform, preset_file]
    if (preset == "learned") != (model is not None):
        raise MorphregError("--preset learned and --model go together (a model file or a shipped model's name)")
    if model is not None:
        ignored = [name for name, value in (("--fixed-mask", fixed_mask), ("--moving-mask", moving_mask),
                   ("--fixed-labels", fixed_labels), ("--moving-labels", moving_labels), ("--fixed-landmarks", fixed_landmarks),
                   ("--moving-landmarks", moving_landmarks), ("--rigidity-mask", rigidity_mask), ("--metric", metric),
                   ("--initial-transform", initial_transform), ("--preset-file", preset_file), ("--set", set_)) if value]
        if ignored:
            raise MorphregError(f"--preset learned runs the network alone: {', '.join(ignored)} would be ignored "
                                "(use 'morphreg predict' for instance optimisation, 'morphreg evaluate' for labels)")
    with output_folder(output, inputs, overwrite) as folder:  # checked and locked before the work starts
        result = _learned(model, fixed, moving, device) if model is not None else register(
            fixed, moving, stages, fixed_mask=fixed_mask, moving_mask=moving_mask, fixed_labels=fixed_labels,
            moving_labels=moving_labels, label_weight=label_weight, label_channels=label_channels,
            fixed_landmarks=fixed_landmarks,
            moving_landmarks=moving_landmarks, rigidity_mask=rigidity_mask, initial_transform=initial_transform,
            metric=metric, modality=modality, device=device, seed=seed, progress=not quiet, **overrides,
        )
        if preset_file is not None:
            result.preset = f"{preset_file.name} (preset file)"
        result.write(folder, suffix)
        if report:
            _write_report(folder, output, result, fixed_labels, moving_labels, fixed_landmarks, moving_landmarks)
    print_outcome(result, output, report)


def _learned(model: str, fixed: Path, moving: Path, device: str):
    from morphreg.learn.predict import predict

    return predict(model, fixed, moving, device=device)


IMAGE_FORMATS = (".nii.gz", ".nii", ".mha", ".nrrd")


def result_suffix(fixed: Path, image_format: str) -> str:
    """The image suffix of a result: the fixed image's format (auto) or the one asked for."""
    if image_format == "auto":
        name = fixed.name.lower()
        return next((f for f in IMAGE_FORMATS if name.endswith(f)), ".nii.gz")
    suffix = "." + image_format.lstrip(".").lower()
    if suffix not in IMAGE_FORMATS:
        raise MorphregError(f"--format {image_format!r}: choose from {', '.join(f[1:] for f in IMAGE_FORMATS)} or auto")
    return suffix


def set_threads(threads: int | None) -> None:
    """``threads`` CPU threads for torch and ITK (None: their defaults, all cores)."""
    if threads is None:
        return
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _stage_line(s: dict) -> str:
    """One console line per stage: method, similarity, objective start -> end, penalties, time."""
    seconds = sum(s.get("seconds", [0.0]) or [0.0])
    sim = objective_name(s) if s.get("terms") else s.get("similarity") or ("landmarks" if s.get("model") == "tps" else "?")
    parts = [f"stage {s.get('index')} {s.get('model')}: {sim}"]
    start, end = s.get("initial_objective"), s.get("final_objective")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        parts.append(f"objective {start:.5g} -> {end:.5g} (lower is better)")
    penalties = [f"{p['name']} x {p.get('weight', 1.0):g}" for p in s.get("penalties") or [] if isinstance(p, dict)]
    if penalties:
        parts.append("penalty " + ", ".join(penalties))
    parts.append(f"{seconds:.1f} s")
    return "  " + ", ".join(parts) + ("  [red]discarded[/]" if s.get("diverged") else "")


def objective_name(stage: dict) -> str:
    """The terms a stage's final objective adds up (its record's ``terms``: "ncc + labels", "labels" for a
    label-driven stage), else its similarity."""
    terms = [stage.get("similarity") or "similarity" if name == "similarity" else name for name in stage.get("terms") or {}]
    return " + ".join(terms) if terms else stage.get("similarity") or "?"


def print_outcome(result, output: Path, report: bool) -> None:
    """Per stage what happened, the warnings in red, the notes, and one line saying where the result
    went (printed with -q too: -q only hides the progress bar)."""
    for s in result.stages:
        console.print(_stage_line(s), highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    for w in result.warnings:
        console.print(f"[bold red]warning:[/] {w['text']}", highlight=False)
    kept = [s for s in result.stages if not s.get("diverged")]
    last = kept[-1] if kept else None
    if last is not None and isinstance(result.final_metric, (int, float)):
        final = f"final objective ({objective_name(last)}, lower is better) {result.final_metric:.5g}"
    elif not result.stages and result.preset.startswith("learned"):
        final = f"the network's transform ({result.timings.get('network_s', 0.0):.2f} s)"
    else:
        final = "no stage was kept: identity transform" if last is None else f"last stage {last.get('model')}"
    modality = f" ({result.modality}modal)" if result.modality in ("mono", "multi") else ""
    console.print(f"[bold]{result.preset}[/]{modality} -> {output}: {final}, "
                  f"folding {result.folding_percent:.3f} %, {result.timings['total_s']:.1f} s", highlight=False)
    if report:
        console.print(f"report: {output / 'report.html'}", highlight=False)


def _write_report(output: Path, final: Path, result, fixed_labels, moving_labels, fixed_landmarks, moving_landmarks) -> None:
    """OUT/report.html from the saved result in ``output`` (the hidden folder that becomes ``final``, the name
    the page shows); labels/landmarks given to the registration are evaluated independently (warped with the
    saved transform) into OUT/metrics.json first."""
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
    build_report(output, output / "report.html", shown_as=final)
