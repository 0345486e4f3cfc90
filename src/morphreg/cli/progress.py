"""Progress of a command's steps on the console (rich): one line per step, with its parts as a bar
and the time it took; nothing with ``quiet``. ``StepProgress`` is the ``progress`` callback that
:func:`morphreg.evaluate.evaluate_registration` (and other step-wise work) takes."""
from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class StepProgress:
    """``with StepProgress(console, quiet) as progress: work(progress=progress)``; ``progress(step, parts)``
    closes the step before, shows ``step`` with a bar of ``parts`` and returns the function that
    advances it by one part."""

    def __init__(self, console: Console, quiet: bool = False):
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, disable=quiet)
        self.task: TaskID | None = None

    def __call__(self, step: str, parts: int = 1) -> Callable[[], None]:
        self._close()
        task = self.task = self.bar.add_task(step, total=max(parts, 1))
        return lambda: self.bar.advance(task)

    def _close(self) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=self.bar.tasks[-1].total)

    def __enter__(self) -> StepProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self._close()
        self.bar.stop()
