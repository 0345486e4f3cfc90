"""The Dask side of every population command: a client (LocalCluster or a running scheduler) and
"run this function on these items, hand me each outcome as it finishes".

Scale-out is Dask's, never our own: ``scheduler="local"`` starts a ``LocalCluster`` of ``workers``
processes with one task slot each; an address (``tcp://HOST:PORT``, e.g. a scheduler started by
dask-jobqueue on SLURM or by ``dask scheduler``) uses that cluster's workers. Inputs and outputs are
paths, so every worker must see the same file system (as on a cluster's shared disk).
"""
from __future__ import annotations

import contextlib
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
def dask_client(scheduler: str = "local", workers: int = 1) -> Iterator:
    """A ``dask.distributed.Client``: a new LocalCluster (closed on exit) or a running scheduler's."""
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=40)
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
    from dask.distributed import as_completed

    items = list(items)
    stamp = time.time_ns()  # unique keys: a rerun never gets a cached result of an earlier run
    futures = [client.submit(task, item, *args, pure=False, key=f"{name}-{i}-{stamp}") for i, item in enumerate(items)]
    by_key = {f.key: item for f, item in zip(futures, items)}
    for future in as_completed(futures):
        item = by_key[future.key]
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - a lost worker or a bug in one task: that item failed
            if on_lost is None:
                raise
            outcome = on_lost(item, exc)
        future.release()  # results can be large (fields): do not keep them on the workers
        yield item, outcome
