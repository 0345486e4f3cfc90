"""Outputs that never destroy a user's data.

Every output is written under a temporary name beside its target and renamed into place only once it
is complete, so a crash, an error or a signal leaves the previous state untouched. On top of that:

- an output is never one of the inputs, and an output folder never holds one;
- an output folder is replaced only when it is empty or a previous morphreg result (its manifest
  ``.morphreg.json`` lists every file in it); any other non-empty folder is refused unless
  ``overwrite`` is given, and then only the files of the same name are replaced;
- one run at a time writes an output folder (a lock beside it; a second run is refused at once);
- outputs get the permissions the umask gives ordinary files (temporary files are created 0600);
- a *run folder* (``batch``, ``train``, ``template``: filled step by step and continued by a rerun) is
  used only when it is absent, empty or a run folder of the same command (its manifest says so); one
  run at a time holds it, and in it morphreg replaces only the files its manifest lists.

File-system failures (read-only folder, a parent that is a file, ...) become one-line
:class:`MorphregError` messages naming the path.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from morphreg.errors import MorphregError

MANIFEST = ".morphreg.json"
# What a result folder held before manifests existed (recognised by its summary.json).
LEGACY_RESULT_FILES = frozenset({"warped.nii.gz", "transform.h5", "displacement.nii.gz", "inverse_displacement.nii.gz",
                                 "summary.json", "report.html", "metrics.json"})
TEMP_TAG = "morphreg-"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which would race with writer threads.
UMASK = _read_umask()


def normal_permissions(path: Path, directory: bool = False) -> None:
    """The mode an ordinary ``open``/``mkdir`` would give under the umask (0644 / 0755 for umask 022)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


@contextlib.contextmanager
def filesystem_errors(path: str | Path) -> Iterator[None]:
    """Turn OSError (permission, read-only, not a folder, disk full) into a MorphregError naming the path."""
    try:
        yield
    except OSError as exc:
        where = exc.filename if exc.filename and TEMP_TAG not in str(exc.filename) else path
        raise MorphregError(f"cannot write: {exc.strerror or exc}", where) from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(output: str | Path, inputs: Iterable = ()) -> None:
    """Refuse an output that is one of ``inputs`` (also through links) or a folder that holds one."""
    out = Path(output).resolve()
    for item in inputs:
        if not isinstance(item, (str, Path)):
            continue
        src = Path(item).resolve()
        if src == out or _same_file(src, out):
            raise MorphregError(f"output is the input {item}: morphreg never writes over an input", output)
        if out in src.parents:
            raise MorphregError(f"output folder holds the input {item}: choose another folder", output)


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute without following links ("-o ." names the current folder, whose
    temporary sibling must live in its parent)."""
    absolute = Path(os.path.abspath(path))
    if not absolute.name:
        raise MorphregError("an output must be a file or folder name, not the file-system root", path)
    return absolute


def _check_parent(path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MorphregError(f"cannot write: {parent} is a file, not a folder", path)
            return


def check_output_file(path: str | Path, inputs: Iterable = ()) -> Path:
    """Check, before any work, that ``path`` can be an output file: not an input, not a folder,
    its parent a folder (created if missing)."""
    path = _absolute(path)
    check_not_input(path, inputs)
    if path.is_dir():
        raise MorphregError("output is a folder; give a file name", path)
    _check_parent(path)
    with filesystem_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise MorphregError("cannot write: the folder is not writable", path.parent)
    return path


def _suffixes(path: Path) -> str:
    # Keep the full suffix (".nii.gz") so writers that dispatch on it still work on the temp name.
    return "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix


@contextlib.contextmanager
def atomic_path(path: str | Path, inputs: Iterable = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds.

    ``path`` must not be one of ``inputs``; an existing file of that name is replaced (as
    SimpleITK, ANTs and elastix do), an existing folder is refused.
    """
    path = check_output_file(path, inputs)
    _check_owned(path)
    with filesystem_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{TEMP_TAG}", suffix=f".tmp{_suffixes(path)}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with filesystem_errors(path):  # e.g. the disk filling up while the writer runs
            yield tmp_path
            normal_permissions(tmp_path)
            os.replace(tmp_path, path)
            record_in_manifest(path)
    finally:
        tmp_path.unlink(missing_ok=True)


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of a morphreg folder (``{"written_by", "files", ["kind", "made_from"]}``), or None."""
    try:
        record = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), list) else None


def _check_owned(path: Path) -> None:
    """In a run folder, an existing file is replaced only when its manifest lists it (morphreg wrote it)."""
    manifest = read_manifest(path.parent)
    if manifest and manifest.get("kind") and path.exists() and path.name not in manifest["files"]:
        raise MorphregError(f"exists in a morphreg {manifest['kind']} folder but morphreg did not write it: move it "
                            "away or choose another folder", path)


def record_in_manifest(path: Path) -> None:
    """A file written into a result folder (``report -o OUT/report.html``, ``evaluate -o
    OUT/metrics.json``) joins its manifest, so that the folder is still recognised as morphreg's."""
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
        files = record["files"]
    except (ValueError, KeyError, TypeError):
        return
    if path.name in files:
        return
    record["files"] = sorted([*files, path.name])
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.{TEMP_TAG}", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    normal_permissions(Path(tmp))
    os.replace(tmp, manifest)


# ----- output folders ---------------------------------------------------------------------------------
def complete_output(folder: str | Path) -> bool:
    """Whether ``folder`` is a finished morphreg output: its manifest is readable and every file it
    lists exists (an output folder appears only once complete, so a half-written one has none)."""
    manifest = read_manifest(folder)
    return manifest is not None and not manifest.get("kind") and all((Path(folder) / f).is_file()
                                                                      for f in manifest["files"])


def _entries(folder: Path) -> set[str]:
    """Relative paths of every file and folder under ``folder``."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def _written_by_morphreg(folder: Path) -> set[str] | None:
    """The entries a previous morphreg run wrote into ``folder`` (files and their folders), or None
    when the folder has no manifest and is not a result of an earlier version."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError, TypeError, OSError):
            return None
        written = {MANIFEST}
        for f in files:
            parts = Path(f).parts
            written |= {"/".join(parts[: k + 1]) for k in range(len(parts))}
        return written
    if (folder / "summary.json").is_file() and (folder / "transform.h5").is_file():
        try:
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return None
        if isinstance(summary, dict) and "transform_direction" in summary:  # written by morphreg's Result
            return set(LEGACY_RESULT_FILES)
    return None


def _replace_mode(path: Path, overwrite: bool) -> str:
    """"new" (absent or empty), "replace" (a previous result, all of it written by morphreg) or
    "merge" (other files, with ``overwrite``); refuses anything else."""
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise MorphregError("output exists and is not a folder", path)
    entries = _entries(path)
    if not entries:
        return "new"
    kind = (read_manifest(path) or {}).get("kind")
    if kind:  # a batch / train / template folder is continued by its own command, never replaced by a result
        raise MorphregError(f"output folder is a morphreg {kind} folder, not a result: choose another folder", path)
    written = _written_by_morphreg(path)
    if written is not None and entries <= written:
        return "replace"
    if overwrite:
        return "merge"
    foreign = sorted(entries - (written or set()))
    raise MorphregError(
        f"output folder is not empty and not a morphreg result ({len(foreign)} other entries, e.g. {foreign[0]!r}); "
        "choose another folder, or pass --overwrite to replace only the files of the same name", path)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM wait while a result is moved into place (a few renames), so it is never half
    moved. The Python handlers are swapped for a recorder (blocking the signal with pthread_sigmask
    would not do: the kernel may deliver it to another thread, and Python still runs the handler in
    the main thread); a recorded signal is delivered to the old handler afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in kinds}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending and callable(previous[pending[0]]):
            previous[pending[0]](pending[0], None)
        elif pending and previous[pending[0]] == signal.SIG_DFL:
            signal.raise_signal(pending[0])


@contextlib.contextmanager
def _folder_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on writing ``path``; a second run is refused at once. The lock file
    (``.<name>.morphreg.lock`` beside it) is removed on release."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock_path = path.parent / f".{path.name}.{TEMP_TAG}lock"
    while True:
        with filesystem_errors(path.parent):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MorphregError("another morphreg run is writing this output folder; wait for it or choose another",
                                path) from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the run that held it removed the file meanwhile: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary folders of earlier runs into ``path`` that were killed (SIGKILL, power loss). Only
    called under the lock, so no live run is writing them."""
    prefix = f".{path.name}.{TEMP_TAG}"
    if not path.exists():  # killed between the two renames of a replace: the previous result comes back
        for old in sorted(path.parent.glob(f"{glob.escape(prefix)}old-*.tmp")):
            if (old / "result").is_dir():
                os.replace(old / "result", path)
                break
    for stale in path.parent.iterdir():
        if stale.name.startswith(prefix) and stale.name.endswith(".tmp") and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def _write_manifest(folder: Path, made_from: dict | None = None) -> None:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    record = {"written_by": "morphreg", "files": files, **({"made_from": made_from} if made_from is not None else {})}
    (folder / MANIFEST).write_text(json.dumps(record, indent=1), encoding="utf-8")


def _normalise_permissions(folder: Path) -> None:
    normal_permissions(folder, directory=True)
    for p in folder.rglob("*"):
        if not p.is_symlink():
            normal_permissions(p, directory=p.is_dir())


def _publish(tmp: Path, path: Path, mode: str) -> None:
    if mode == "new":
        os.replace(tmp, path)  # onto an absent or empty folder
    elif mode == "replace":
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{TEMP_TAG}old-", suffix=".tmp", dir=path.parent))
        os.replace(path, old / "result")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:  # merge: the new files over the old ones; the old result's own files that are gone are removed
        previous = _written_by_morphreg(path) if (path / MANIFEST).is_file() else set()  # never guessed files
        new = {p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()}
        for rel in sorted(new):
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, path / rel)
        for rel in sorted(previous - new - {MANIFEST}):
            if (path / rel).is_file():
                (path / rel).unlink()


@contextlib.contextmanager
def output_folder(path: str | Path, inputs: Iterable = (), overwrite: bool = False,
                  made_from: dict | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block succeeds it becomes ``path``.

    Checked before the block runs (so a long computation is not wasted): ``path`` is not an input
    and holds none, it is absent, empty or a previous morphreg result (else refused unless
    ``overwrite``), and no other run writes it. A previous result is replaced only once the new one
    is complete; on an error or a signal nothing changes and the temporary folder is removed.
    ``made_from`` (JSON): what the result was made from, kept in its manifest (``batch`` compares it on a rerun).
    """
    path = _absolute(path)
    if path.is_symlink():  # replace the folder it points to, not the link
        path = Path(os.path.realpath(path))
    cwd = Path.cwd()
    if path == cwd or path in cwd.parents:
        raise MorphregError("output folder is the current folder (or holds it): give the name of a new or result folder",
                            path)
    inputs = list(inputs)
    check_not_input(path, inputs)
    _check_parent(path)
    with filesystem_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    _replace_mode(path, overwrite)
    with _folder_lock(path):
        _remove_stale_temporaries(path)
        with filesystem_errors(path.parent):
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{TEMP_TAG}", suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            with filesystem_errors(path):
                _write_manifest(tmp, made_from)
                _normalise_permissions(tmp)
                with _signals_deferred():
                    _publish(tmp, path, _replace_mode(path, overwrite))  # again: the folder may have changed
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


# ----- run folders: filled step by step by one long command and continued by its rerun -------------------
class RunFolder:
    """A folder that one ``kind`` of command (batch, train, template) fills as it goes; see :func:`run_folder`.
    Files written with :func:`atomic_path` join its manifest; :meth:`record` adds others (folders).
    (A run folder is never a :func:`complete_output`: that is a finished result.)"""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind

    def record(self, *names: str) -> None:
        for name in names:
            record_in_manifest(self.path / name)


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and TEMP_TAG in name and name.endswith((".tmp", "lock"))


def _run_folder_state(path: Path, kind: str, inputs: list, files: Iterable[str], recognise) -> tuple[str, set[str]]:
    """("new" | "continue" | "adopt", the entries to adopt): refuses a file, a folder of another kind, a
    folder that is neither empty nor this kind's, one that holds an input morphreg did not write there
    (a run's own saved config may be read back), and one where a file of ``files`` is somebody else's."""
    if path.exists() and not path.is_dir():
        raise MorphregError("output exists and is not a folder", path)
    entries = {p.name for p in path.iterdir() if not _is_temporary(p.name)} if path.exists() else set()
    manifest = read_manifest(path) if entries else None
    adopted: set[str] = set()
    if not entries - {MANIFEST} and (manifest is None or manifest.get("kind") in (None, kind)):
        state = "new"
    elif manifest is not None and manifest.get("kind") == kind:
        state = "continue"
    elif manifest is not None:
        other = manifest.get("kind") or "registration result"
        raise MorphregError(f"output folder holds a morphreg {other}, not a {kind} run: choose another folder", path)
    elif recognise is not None and (found := recognise(path)) is not None:  # a run of an earlier version
        state, adopted = "adopt", set(found)
    else:
        foreign = sorted(entries)
        raise MorphregError(f"output folder is not empty and not a morphreg {kind} folder ({len(foreign)} entries, e.g. "
                            f"{foreign[0]!r}): morphreg never writes among files it did not write; choose another folder",
                            path)
    owned = adopted | set((manifest or {}).get("files", []))
    check_not_input(path, [i for i in inputs if not _owned_input(path, i, owned)])
    for name in files:
        if state == "continue" and (path / name).exists() and name not in owned:
            raise MorphregError(f"a {kind} run writes {name} but this one here was not written by morphreg: move it away",
                                path)
    return state, adopted


def check_run_folder(path: str | Path, kind: str, inputs: Iterable = (), files: Iterable[str] = (),
                     recognise=None) -> str:
    """"new" (absent or empty), "continue" (a ``kind`` folder) or "adopt" (one of an earlier version): the
    checks of :func:`run_folder` without holding or writing anything (the one-line refusals are its)."""
    path = _absolute(path)
    return _run_folder_state(Path(os.path.realpath(path)) if path.is_symlink() else path, kind, list(inputs),
                            list(files), recognise)[0]


def _owned_input(folder: Path, item, owned: set[str]) -> bool:
    if not isinstance(item, (str, Path)):
        return False
    src = Path(item).resolve()
    return src.parent == folder.resolve() and src.name in owned


@contextlib.contextmanager
def run_folder(path: str | Path, kind: str, inputs: Iterable = (), files: Iterable[str] = (),
               recognise=None) -> Iterator[RunFolder]:
    """Hold the run folder ``path`` of a ``kind`` command for the block (see the module doc).

    ``path`` must be absent, empty or a ``kind`` folder (``recognise(path)``, when given, returns the
    entries of a folder an earlier version wrote without a manifest, or None); it must not hold an
    ``inputs`` file unless that file is the folder's own; the names in ``files`` (what the run writes
    at fixed names) must be absent or its own. A second run into the folder is refused at once. Created
    folders get a manifest at once (a killed run leaves a folder its rerun recognises); a run that
    fails leaving nothing but the manifest removes the folder it created.
    """
    path = _absolute(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    inputs, files = list(inputs), list(files)
    _check_parent(path)
    with filesystem_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    _run_folder_state(path, kind, inputs, files, recognise)  # before the lock: a clear refusal first
    with _folder_lock(path):
        state, adopted = _run_folder_state(path, kind, inputs, files, recognise)  # again: it may have changed
        created = not path.exists()
        if state != "continue":
            with filesystem_errors(path):
                path.mkdir(exist_ok=True)
                if created:
                    normal_permissions(path, directory=True)
                record = {"written_by": "morphreg", "kind": kind, "files": sorted(adopted)}
                fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.{TEMP_TAG}", suffix=".tmp", dir=path)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(record, f, indent=1)
                normal_permissions(Path(tmp))
                os.replace(tmp, path / MANIFEST)
        try:
            yield RunFolder(path, kind)
        except BaseException:
            if created and path.is_dir() and {p.name for p in path.iterdir()} <= {MANIFEST}:
                shutil.rmtree(path, ignore_errors=True)  # nothing was done: leave no empty folder behind
            raise


# ----- what a result was made from ----------------------------------------------------------------------
def file_fingerprint(path: str | Path) -> dict:
    """``{"path", "size", "mtime_ns", "sha256"}`` of a file (read once, in 1 MiB blocks)."""
    path = Path(path).resolve()
    digest = hashlib.sha256()
    with filesystem_errors(path), open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


def unchanged(fingerprint: dict, path: str | Path) -> bool:
    """Whether ``path`` is the file of ``fingerprint`` with the same content: the same path and size, and
    the same modification time or (when that changed, e.g. a copy or a touch) the same sha256."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError:
        return False
    if str(path) != fingerprint.get("path") or stat.st_size != fingerprint.get("size"):
        return False
    return stat.st_mtime_ns == fingerprint.get("mtime_ns") or file_fingerprint(path)["sha256"] == fingerprint.get("sha256")
