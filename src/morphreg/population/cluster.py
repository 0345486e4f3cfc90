"""The Dask side of every population command: a client (LocalCluster or a running scheduler) and
"run this function on these items, hand me each outcome as it finishes".

Scale-out is Dask's, never our own: ``scheduler="local"`` starts a ``LocalCluster`` of ``workers``
processes with one task slot each; an address (``tcp://HOST:PORT``, e.g. a scheduler started by
dask-jobqueue on SLURM or by ``dask scheduler``) uses that cluster's workers. Inputs and outputs are
paths, so every worker must see the same file system (as on a cluster's shared disk).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from morphreg.errors import MorphregError

ADDRESS_SCHEMES = ("tcp://", "tls://", "inproc://", "ws://", "wss://")


def set_threads(threads: int) -> None:
    """torch and ITK intra-op threads of this process (called inside each task: workers x threads
    <= cores does not oversubscribe)."""
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


@contextlib.contextmanager
def recorded(record: dict) -> Iterator[dict]:
    """The body of one task: an error becomes ``record["error"]`` (one line) instead of propagating, so
    one bad item never stops the others; ``record["seconds"]`` is set in every case."""
    t0 = time.perf_counter()
    try:
        yield record
    except MorphregError as exc:
        record["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - recorded with its type; the other tasks go on
        record["error"] = f"internal error: {type(exc).__name__}: {exc}"
    finally:
        record["seconds"] = time.perf_counter() - t0


def lost_record(key: str, value: str, exc: Exception) -> dict:
    """The record of a task whose worker died (killed, out of memory): ``{key: value, "status": "failed", ...}``."""
    return {key: value, "status": "failed", "error": f"worker lost: {type(exc).__name__}: {exc}"}


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Worker processes started in this block ignore SIGINT. Ctrl-C goes to the whole process group: this
    process closes the cluster cleanly, and workers that took it too would each print a KeyboardInterrupt
    traceback. (An ignored signal stays ignored in a child, and Python installs its own SIGINT handler only
    where the parent has not changed it; a Ctrl-C during the start-up itself is lost.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def dask_client(scheduler: str = "local", workers: int = 1) -> Iterator:
    """A ``dask.distributed.Client``: a new LocalCluster (closed on exit) or a running scheduler's."""
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler == "local":
        # Logs at CRITICAL only: a task's failure is its record's one line, and a cluster closed by Ctrl-C
        # would print its workers' heartbeat tracebacks at ERROR.
        with _workers_ignore_ctrl_c():
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=logging.CRITICAL)
        client = Client(cluster)
    elif not scheduler.startswith(ADDRESS_SCHEMES):
        raise MorphregError(f"--scheduler: 'local' or an address such as tcp://host:8786, not {scheduler!r}")
    else:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise MorphregError(f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__})") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def dashboard(client) -> str | None:
    return getattr(client, "dashboard_link", None)


def as_finished(client, task: Callable, items: Iterable, *args, name: str = "morphreg",
                on_lost: Callable | None = None) -> Iterator[tuple[object, object]]:
    """Submit ``task(item, *args)`` for every item and yield ``(item, outcome)`` as each finishes.

    A task that raises (normally tasks record their own errors) or whose worker died (killed, out of
    memory) yields ``on_lost(item, exc)`` as its outcome, so one lost task never stops the others.
    """
    for _, item, outcome in _finished(client, task, list(items), args, name, on_lost):
        yield item, outcome


def in_submission_order(client, task: Callable, items: Iterable, *args, name: str = "morphreg",
                        on_lost: Callable | None = None, on_finished: Callable | None = None) -> Iterator[tuple[object, object]]:
    """:func:`as_finished`, but yielding in the order of ``items`` (a sum over the outcomes is then the
    same whichever worker finishes first: float addition is not associative); ``on_finished(item,
    outcome)`` is called as each one finishes (progress). Holds the outcomes that finish early."""
    waiting: dict[int, tuple[object, object]] = {}
    following = 0
    for i, item, outcome in _finished(client, task, list(items), args, name, on_lost):
        if on_finished is not None:
            on_finished(item, outcome)
        waiting[i] = (item, outcome)
        while following in waiting:
            yield waiting.pop(following)
            following += 1


def _finished(client, task: Callable, items: list, args: tuple, name: str,
              on_lost: Callable | None) -> Iterator[tuple[int, object, object]]:
    """(index, item, outcome) as each task finishes (see :func:`as_finished`)."""
    from dask.distributed import as_completed

    stamp = time.time_ns()  # unique keys: a rerun never gets a cached result of an earlier run
    futures = [client.submit(task, item, *args, pure=False, key=f"{name}-{i}-{stamp}") for i, item in enumerate(items)]
    by_key = {f.key: i for i, f in enumerate(futures)}
    for future in as_completed(futures):
        i = by_key[future.key]
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - a lost worker or a bug in one task: that item failed
            if on_lost is None:
                raise
            outcome = on_lost(items[i], exc)
        future.release()  # results can be large (fields): do not keep them on the workers
        yield i, items[i], outcome
