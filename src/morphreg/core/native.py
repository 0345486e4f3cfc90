"""Messages that the C++ libraries (ITK, GDCM, HDF5, MetaIO) print straight to file descriptor 2.

They bypass Python's ``sys.stderr`` (a truncated .h5 prints 26 lines of HDF5-DIAG, a folder without
DICOM files a GDCM warning), so they are caught at the descriptor while a file is read and handed to
the caller, who turns the useful line into a one-line error.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def captured_native_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to fd 2 inside the block; the list is filled on exit.

    Only in the main thread (fd 2 is process-wide): elsewhere the messages pass through unchanged.
    """
    lines: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield lines
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(ln.strip() for ln in sink.read().decode("utf-8", "replace").splitlines() if ln.strip())


def native_reason(exc: BaseException | None, messages: list[str]) -> str:
    """The most telling line of a native library's failure: a MetaIO/NRRD/HDF5 message when there is
    one, else the last line of the exception (ITK puts its reason last)."""
    hdf5 = [ln.split("(): ", 1)[1] for ln in messages if ln.startswith("#000:") and "(): " in ln]
    if hdf5:  # HDF5 prints a stack; its first frame says what failed
        return f"damaged or truncated HDF5 file (HDF5: {hdf5[0][:120]})"
    useful = [ln[:160] for ln in messages
              if not (ln.startswith(("WARNING:", "#", "major:", "minor:", "HDF5-DIAG")) or "/src/" in ln)]
    if useful:
        return "; ".join(useful[:2])
    text = str(exc or "").strip().splitlines()
    return text[-1].strip()[:200] if text else ""
