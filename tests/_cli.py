"""Running the real ``morphreg`` entry point in process, for the CLI tests."""
from __future__ import annotations

import signal

import pytest

from morphreg.cli.main import main


def cli(capfd, *args) -> tuple[int, str, str]:
    """Run ``morphreg ARGS`` in process: (exit code, stdout, stderr as seen at the file descriptors,
    so native-library output counts too). Signal handlers are restored afterwards."""
    capfd.readouterr()  # what the test's own set-up printed (e.g. ITK warnings while writing inputs)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    out, err = capfd.readouterr()
    code = exit_info.value.code
    return (0 if code is None else int(code)), out, err


def one_line_error(err: str, *names: str) -> str:
    """The stderr of a failed run: exactly one line, 'error: ...', no traceback, naming ``names``."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]
