"""Commands: evaluate (independent metrics of a saved transform), compare (statistics over cases and
methods), report (self-contained HTML page of a result folder)."""
from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from morphreg.errors import MorphregError

console = Console()


class LabelInterpolation(str, Enum):
    nearest = "nearest"
    label = "label"


def evaluate_cmd(
    transform: Path = typer.Option(..., "--transform", "-t", help="Saved transform (fixed -> moving): .h5/.tfm/.txt/.pt "
                                    "or displacement image."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write metrics.json."),
    fixed_labels: Path = typer.Option(None, "--fixed-labels", help="Fixed label map (integer labels or one-hot 4D channels)."),
    moving_labels: Path = typer.Option(None, "--moving-labels", help="Moving label map; warped here with the transform."),
    reference: Path = typer.Option(None, "--reference", "-r", help="Image whose grid the evaluation uses (default: the fixed labels')."),
    fixed_landmarks: Path = typer.Option(None, "--fixed-landmarks", help="Fixed landmarks: CSV/JSON (LPS mm), "
                                        "Slicer .fcsv/.mrk.json, elastix point set."),
    moving_landmarks: Path = typer.Option(None, "--moving-landmarks", help="Corresponding moving landmarks (same order)."),
    mask: Path = typer.Option(None, "--mask", help="Region (non-zero) for folding statistics and rigidity."),
    inverse: Path = typer.Option(None, "--inverse", help="Inverse transform (moving -> fixed) for the inverse consistency error."),
    fixed: Path = typer.Option(None, "--fixed", help="Fixed image (for intensity similarity, reported apart)."),
    moving: Path = typer.Option(None, "--moving", help="Moving image (for intensity similarity, reported apart)."),
    interpolation: LabelInterpolation = typer.Option(LabelInterpolation.nearest, "--interpolation",
                                        help="How the moving labels are warped."),
    no_resample: bool = typer.Option(False, "--no-resample",
                                    help="Refuse label maps on a grid other than the reference instead of resampling them."),
    landmark_channels: str = typer.Option(None, "--landmark-channels", help="Structures that are point landmarks, e.g. "
                                          "'1-' (channels 1 on of a 4D one-hot stack; label values of a map): they get "
                                          "the centroid TRE |T(p) - q|, the others Dice and surface distances."),
    label_channels: str = typer.Option(None, "--label-channels", help="Structures to evaluate, e.g. '0' (channel 0 of "
                                       "4D one-hot stacks; label values of a map), as in 'morphreg register'; default all."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Evaluate a registration with measures independent of the method: Dice/Jaccard, surface
    distances (HD, HD95, HD99, ASSD in mm), landmark TRE, det J / folding / SDlogJ."""
    from morphreg.cli.progress import StepProgress
    from morphreg.core.files import check_output_file
    from morphreg.evaluate import evaluate_registration, read_landmarks, write_metrics
    from morphreg.image.io import read_image
    from morphreg.transforms.io import load_transform

    inputs = dict(transform=transform, fixed_labels=fixed_labels, moving_labels=moving_labels, reference=reference,
                  fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, mask=mask, inverse=inverse,
                  fixed=fixed, moving=moving)
    check_output_file(output, inputs.values())
    t = load_transform(transform)
    fl = read_image(fixed_labels, labels=True) if fixed_labels else None
    ml = read_image(moving_labels, labels=True) if moving_labels else None
    ref = read_image(reference, check_finite=False) if reference else None
    fixed_img = read_image(fixed, labels=False) if fixed else None
    grid = ref.grid if ref is not None else fl.grid if fl is not None else fixed_img.grid if fixed_img is not None else None
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise MorphregError("give both --fixed-landmarks and --moving-landmarks, or neither")
    mov_grid = ml.grid if ml is not None else None
    fp = read_landmarks(fixed_landmarks, grid=grid) if fixed_landmarks else None
    mp = read_landmarks(moving_landmarks, grid=mov_grid) if moving_landmarks else None
    with StepProgress(console, quiet) as progress:
        metrics = evaluate_registration(
            t, fl, ml, reference=None if ref is None else ref.grid, fixed_landmarks=fp, moving_landmarks=mp,
            mask=read_image(mask, labels=True) if mask else None, inverse=load_transform(inverse) if inverse else None,
            fixed=fixed_img, moving=read_image(moving, labels=False) if moving else None,
            resample=not no_resample, interpolation=interpolation.value, landmark_channels=landmark_channels,
            structures=label_channels, progress=progress)
    metrics["inputs"] = {k: str(v) for k, v in inputs.items() if v}
    write_metrics(metrics, output)
    _print_summary(metrics)
    console.print(f"wrote {output}")


def _print_summary(m: dict) -> None:
    from morphreg.evaluate.stats import fmt

    g = m["reference_grid"]
    console.print(f"measured on {g['source']} grid: {' x '.join(map(str, g['size']))} voxels of "
                  f"{' x '.join(f'{v:.3g}' for v in g['spacing'])} mm", highlight=False)
    if "structures" in m:
        console.print(f"structures: overlap {', '.join(m['structures']['overlap']) or 'none'}; landmarks (centroid TRE) "
                      f"{', '.join(m['structures']['landmarks']) or 'none'}", highlight=False)
    if "overlap" in m:
        console.print(f"mean Dice {fmt(m['initial']['overlap']['mean']['dice'])} -> {fmt(m['overlap']['mean']['dice'])}, "
                      f"mean HD95 {fmt(m['surface']['mean']['hd95_mm'])} mm")
    for key in ("tre", "centroid_tre"):
        if key in m:
            console.print(f"{key}: {fmt(m[key]['initial']['mean_mm'])} -> {fmt(m[key]['final']['mean_mm'])} mm")
    j = m["transform"]["jacobian"]
    console.print(f"folding {fmt(j['folding_percent'])}%, SDlogJ {fmt(j['sdlogj'])}")
    for note in m.get("notes", []):
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def compare_cmd(
    inputs: list[Path] = typer.Argument(..., help="metrics.json files (one per method; may hold {'cases': ...}) "
                                                "or folders of <case>/metrics.json."),
    metric: list[str] = typer.Option(None, "--metric", "-m", help="Flat metric names, "
                                                "e.g. overlap/mean/dice (default: the headline ones)."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the markdown table here too."),
    csv_out: Path = typer.Option(None, "--csv", help="Per-case table (all methods) as CSV."),
    json_out: Path = typer.Option(None, "--json", help="Summaries and tests as JSON."),
) -> None:
    """Compare methods: median [IQR]; mean ± std per metric, paired Wilcoxon test against the first."""
    from morphreg.core.files import atomic_path, check_output_file
    from morphreg.evaluate.stats import case_table, compare, comparison_markdown, load_cases, write_csv, write_json

    for out in (output, csv_out, json_out):
        if out is not None:
            check_output_file(out, inputs)
    methods: dict[str, dict] = {}
    for path in inputs:
        name = (path.name if path.is_dir() else path.parent.name) or path.stem
        base, k = name, 2
        while name in methods:
            name, k = f"{base}-{k}", k + 1
        methods[name] = load_cases(path)
    result = compare(methods, list(metric) if metric else None)
    md = comparison_markdown(result)
    typer.echo(md)
    if output:
        with atomic_path(output) as tmp:
            tmp.write_text(md + "\n", encoding="utf-8")
    if csv_out:
        rows_all, header = [], None
        for mname, cases in methods.items():
            header, rows = case_table(cases, list(result))
            rows_all += [[mname, *r] for r in rows]
        write_csv(["method", *(header or ["case"])], rows_all, csv_out)
    if json_out:
        write_json(result, json_out)


def report_cmd(
    result_dir: Path = typer.Argument(..., help="Registration result folder (summary.json, transform.h5, ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="HTML file to write (self-contained)."),
) -> None:
    """Write one self-contained HTML page (pictures embedded) for a registration result."""
    from morphreg.core.files import check_output_file
    from morphreg.report import build_report

    # A report reads everything in the folder but HTML: rebuilding OUT/report.html in place is fine,
    # writing over summary.json or a transform is not.
    reads = [p for p in result_dir.glob("*") if p.is_file() and p.suffix.lower() != ".html"] if result_dir.is_dir() \
        else [result_dir]
    check_output_file(output, reads)
    build_report(result_dir, output)
    console.print(f"wrote {output}")
