"""The ``morphreg`` command line: one typer app; each command lives in its own module."""
from __future__ import annotations

import sys

import typer
from rich.console import Console

from morphreg.errors import MorphregError

app = typer.Typer(
    name="morphreg",
    help="Medical image registration in physical space (classical and learned), on PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app(standalone_mode=False)
    except MorphregError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


# Command registration: one line per command module.
from morphreg.cli.basic import apply_cmd, demo_cmd, info_cmd  # noqa: E402

app.command("info")(info_cmd)
app.command("apply")(apply_cmd)
app.command("demo")(demo_cmd)

from morphreg.cli.evaluate import compare_cmd, evaluate_cmd, report_cmd  # noqa: E402

app.command("evaluate")(evaluate_cmd)
app.command("compare")(compare_cmd)
app.command("report")(report_cmd)

from morphreg.cli.register import register_cmd  # noqa: E402

app.command("register")(register_cmd)
