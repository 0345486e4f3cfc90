"""``morphreg presets list | show NAME``: the built-in presets as YAML, ready for ``--preset-file``."""
from __future__ import annotations

import typer

presets_app = typer.Typer(help="List the built-in registration presets or print one as YAML (edit it and pass "
                               "it to 'morphreg register --preset-file').", no_args_is_help=True)


@presets_app.command("list")
def list_cmd() -> None:
    """Every preset with its stages."""
    from morphreg.register.presets import PRESETS

    for name, stages in PRESETS.items():
        typer.echo(f"{name:12s} {' -> '.join(s['model'] for s in stages)}")


@presets_app.command("show")
def show_cmd(name: str = typer.Argument(..., help="A preset name (see 'morphreg presets list').")) -> None:
    """Print the preset NAME as YAML (the schema of --preset-file; keys are explained in
    morphreg/register/presets.py)."""
    from morphreg.register.presets import preset_yaml

    typer.echo(preset_yaml(name), nl=False)
