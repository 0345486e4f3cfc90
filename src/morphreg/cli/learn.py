"""``morphreg train CONFIG -o RUN`` and ``morphreg predict MODEL FIXED MOVING -o OUT`` (see morphreg.learn)."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(soft_wrap=True)


def train_cmd(
    config: Path = typer.Argument(..., help="Training config (YAML: data, model, loss, train; the keys and their "
                                  "defaults are in morphreg/learn/config.py and the README)."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder: config.yaml, metrics.csv, checkpoint.pt, "
                                "model.pt, loss_curve.png."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUTPUT from its last checkpoint (same "
                                "next batch and loss); train.steps may be raised."),
    set_: list[str] = typer.Option(None, "--set", help="Change a config key, repeatable: SECTION.KEY=VALUE (YAML), "
                                   "e.g. --set train.steps=500 --set train.device=cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a registration network (unsupervised, weakly supervised or supervised on synthetic pairs) with
    the engine's loss terms. On several GPUs or nodes: torchrun --nproc_per_node N -m morphreg train ..."""
    from morphreg.core.numerics import flushed_denormals
    from morphreg.learn.config import load_config
    from morphreg.learn.train import Trainer

    with flushed_denormals():  # from the start, so the intra-op threads inherit it
        _train(Trainer(load_config(config, set_), output, resume, config_file=config), output, quiet)


def _train(trainer, output: Path, quiet: bool) -> None:
    """Run ``trainer`` with a progress bar, then say where the model went."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console,
                        disable=quiet or trainer.rank > 0)  # under torchrun, process 0 reports
    with progress:
        task = progress.add_task("training", total=trainer.config.train.steps, completed=trainer.step, status="")

        def on_step(step: int, row: dict) -> None:
            status = f"loss {row['loss']:.4g}" + (f", val Dice {row['val_dice']:.3f}" if row.get("val_dice") == row.get("val_dice")
                                                 and "val_dice" in row else "")
            progress.update(task, completed=step, status=status)

        report = trainer.fit(on_step)
    last = report.last
    if trainer.rank > 0:
        return
    console.print(f"{report.steps} steps{' (stopped early)' if report.stopped_early else ''} -> {output / 'model.pt'} "
                  f"({report.seconds:.0f} s; last loss {last.get('loss', float('nan')):.4g})")


def predict_cmd(
    model: Path = typer.Argument(..., help="A model file (model.pt of 'morphreg train') or the name of a shipped "
                                 "model ('morphreg models')."),
    fixed: Path = typer.Argument(..., help="Fixed (reference) image."),
    moving: Path = typer.Argument(..., help="Moving image."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (as 'morphreg register' writes it)."),
    instance_optimization: int = typer.Option(0, "--instance-optimization", min=0, help="Refine the network's transform "
                                              "with this many classical iterations of its training loss (a network "
                                              "that segments both images: of the label-driven affine on its "
                                              "segmentations)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    report: bool = typer.Option(False, "--report", help="Also write OUT/report.html."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Accepted for symmetry with register (nothing to hide)."),
) -> None:
    """Register MOVING onto FIXED with a trained network; writes the same files as 'morphreg register'."""
    from morphreg.cli.register import print_outcome
    from morphreg.core.files import output_folder
    from morphreg.core.numerics import flushed_denormals
    from morphreg.learn.predict import predict
    from morphreg.report import build_report

    with output_folder(output, [model, fixed, moving]) as folder, flushed_denormals():
        result = predict(model, fixed, moving, instance_optimization, device)
        result.write(folder)
        if report:
            build_report(folder, folder / "report.html")
    print_outcome(result, output, report)


def ensemble_cmd(
    models: list[Path] = typer.Argument(..., help="Two or more model files trained with one model config (e.g. one "
                                        "recipe with different train.seed)."),
    output: Path = typer.Option(..., "-o", "--output", help="The ensemble's model file (.pt)."),
) -> None:
    """Join trained models into one model file whose prediction averages theirs (fields, affine parameters and
    segmentation maps); use it with predict like any model. Costs one network pass per member."""
    from morphreg.core.files import check_output_file, file_fingerprint
    from morphreg.errors import MorphregError
    from morphreg.learn.model import save_ensemble

    check_output_file(output, models)
    if len(models) < 2:
        raise MorphregError("an ensemble joins two or more model files")
    if output.suffix != ".pt":
        raise MorphregError("an ensemble is a model file: give it the suffix .pt", output)
    seen: dict[str, Path] = {}
    for path in models:
        digest = file_fingerprint(path)["sha256"] if path.is_file() else str(path)
        if digest in seen:
            raise MorphregError(f"the same model twice ({seen[digest]} and {path} hold one file): an ensemble of one "
                                "model is that model", path)
        seen[digest] = path
    save_ensemble(models, output)
    console.print(f"{len(models)} models -> {output}")


def models_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print every model's whole card as JSON (name -> card)."),
) -> None:
    """The models shipped with morphreg, with their model cards (use the name with predict)."""
    import json

    from morphreg.learn.model import load_model
    from morphreg.learn.zoo import shipped_models

    models = shipped_models()
    if as_json:
        typer.echo(json.dumps({name: load_model(path)[1] for name, path in models.items()}, indent=2))
        return
    if not models:
        console.print("no model is shipped with this version yet; train one with 'morphreg train'")
    for name, path in models.items():
        _, card = load_model(path)
        console.print(f"[bold]{name}[/] ({path.stat().st_size / 1e6:.1f} MB; 'morphreg models --json' for the whole card)")
        for section, value in card.items():
            if section == "name":
                continue
            console.print(f"[bold]{section}[/]")
            for line in _card_lines(value):
                console.print(f"  {line}", highlight=False, markup=False)


def _card_lines(value, prefix: str = "") -> list[str]:
    """A model card section as readable lines: nested keys joined by ' / ', numbers to 4 digits, lists as bullets."""
    if isinstance(value, dict):
        rows = {k: v for k, v in value.items() if isinstance(v, dict) and v and all(not isinstance(x, (dict, list)) for x in v.values())}
        lines = [line for key, sub in value.items() if key not in rows or len(rows) < 2
                 for line in _card_lines(sub, f"{prefix}{key} / ")]
        return lines + (_card_table(rows, prefix.removesuffix(" / ")) if len(rows) >= 2 else [])
    if isinstance(value, list) and any(isinstance(v, (dict, list)) or (isinstance(v, str) and len(v) > 40) for v in value):
        return [f"{prefix.removesuffix(' / ')}:"] * bool(prefix) + [f"- {line}" for v in value for line in _card_lines(v)]
    text = ", ".join(_card_value(v) for v in value) if isinstance(value, list) else _card_value(value)
    return [f"{prefix.removesuffix(' / ')}: {text}" if prefix else text]


def _card_table(rows: dict[str, dict], title: str) -> list[str]:
    """Rows of flat dicts (e.g. one per method) as an aligned text table."""
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    cells = [[title or "", *columns]] + [[name, *(_card_value(row.get(c, "")) for c in columns)] for name, row in rows.items()]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def _card_value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
