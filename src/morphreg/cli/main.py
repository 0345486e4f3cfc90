"""The ``morphreg`` command line: one typer app; each command lives in its own module.

Exit codes: 0 success; 2 a problem with the input or the command line (one line naming the file or
the option); 1 an internal error (a bug: one line, the traceback in a log file, printed with
``--debug``); 3 ``batch`` / ``segment`` ran but some rows / atlases failed (it says how many); 130 / 143
interrupted by SIGINT (Ctrl-C) / SIGTERM. Outputs are complete or absent in
every case (see :mod:`morphreg.core.files`).
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import typer
from rich.console import Console

from morphreg import __version__
from morphreg.errors import MorphregError

app = typer.Typer(
    name="morphreg",
    help="Medical image registration in physical space (classical and learned), on PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, so that neither typer (which turns
    KeyboardInterrupt into a plain return) nor ``except Exception`` in the code swallows it; the
    ``finally`` blocks of the output writers still run and remove their temporary files."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame) -> None:
    # Later signals are ignored, so that a second Ctrl-C does not cut the clean-up short.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


def crash_log_dir() -> Path:
    """Where tracebacks of internal errors go: $XDG_CACHE_HOME/morphreg/logs (~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "morphreg" / "logs"


def _write_crash_log(text: str) -> Path | None:
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (crash_log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(f"morphreg {__version__}\nargv: {sys.argv}\n\n{text}", encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def _is_usage_error(exc: BaseException) -> bool:
    # typer >= 0.2x ships its own click (typer._click) whose exceptions derive from
    # typer.TyperException; older typer raises click's. Both carry exit_code and format_message.
    return (isinstance(exc, typer.TyperException) or type(exc).__module__.split(".")[0] in ("click", "typer")) \
        and hasattr(exc, "format_message")


def _usage_line(exc: BaseException) -> str:
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"{exc.format_message()}{hint}"


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {message}", markup=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every ending is an exit code and at most one line on stderr (see the module doc)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args[: args.index("--")] if "--" in args else "--debug" in args
    args = [a for a in args if a != "--debug"]
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _on_signal)
    try:
        code = app(args=args, prog_name="morphreg", standalone_mode=False)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        _fail(f"interrupted by {name}; every output is either complete or untouched, never partial", 128 + exc.signum)
    except MorphregError as exc:
        _fail(str(exc), 2)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
    except typer.Abort:
        _fail("aborted", 1)
    except Exception as exc:
        if _is_usage_error(exc):
            _fail(_usage_line(exc), 2)
        if isinstance(exc, OSError) and exc.filename:  # the file system said no: the user's to fix
            _fail(f"{exc.filename}: {exc.strerror or exc}", 2)
        if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower():
            _fail(f"out of memory ({type(exc).__name__}: {str(exc)[:160]}); try smaller images, fewer threads or "
                  "--device cuda", 1)
        if debug:
            traceback.print_exc()
        log = _write_crash_log(traceback.format_exc())
        where = f"traceback in {log}" if log else "traceback not saved"
        _fail(f"internal error (a bug in morphreg, please report it): {type(exc).__name__}: {str(exc)[:200]}; "
              f"{where}{'' if debug else ' (--debug prints it)'}", 1)
    else:
        # typer's non-standalone mode returns an exit code instead of raising (e.g. its own 130).
        sys.exit(code if isinstance(code, int) else 0)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"morphreg {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Print the traceback of an internal error (also accepted after "
                               "the command)."),
) -> None:
    """Medical image registration in physical space (classical and learned), on PyTorch."""


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

from morphreg.cli.population import batch_cmd, segment_cmd, template_cmd  # noqa: E402

app.command("batch")(batch_cmd)
app.command("template")(template_cmd)
app.command("segment")(segment_cmd)

from morphreg.cli.learn import ensemble_cmd, models_cmd, predict_cmd, train_cmd  # noqa: E402

app.command("train")(train_cmd)
app.command("predict")(predict_cmd)
app.command("models")(models_cmd)
app.command("ensemble")(ensemble_cmd)

from morphreg.cli.presets import presets_app  # noqa: E402

app.add_typer(presets_app, name="presets")
