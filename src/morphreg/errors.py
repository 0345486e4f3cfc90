"""User-facing errors: one type, always naming the input and the problem."""
from __future__ import annotations

from pathlib import Path


class MorphregError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits with code 2."""

    def __init__(self, problem: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
