"""Progress reporting shared by every solver: one rich task per level, showing the current metric."""
from __future__ import annotations

from collections.abc import Callable


def add_progress(progress, name: str, total: int) -> Callable[[int, float], None]:
    """A callback(iteration, value) updating a new task ``name`` of a rich Progress (with a ``metric``
    field); a no-op without progress."""
    if progress is None:
        return lambda i, value: None
    task = progress.add_task(name, total=total, metric=float("nan"))
    return lambda i, value: progress.update(task, completed=i, metric=value)
