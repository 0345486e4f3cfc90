"""The CPU's floating-point mode for network work.

Denormal numbers (|x| < 1.2e-38 in float32) take x86 cores of the order of 100 times longer per operation
than normal ones, and a trained network makes many: the sigmoid of a saturated map and its gradient fall
into that range. The prostate segmentation networks (logits of -500 after a Dice-trained run) took 5.2 s
per training step with them and 1.3 s with them flushed to zero (1 thread, the same batch); what is lost
is below 1.2e-38.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


def denormals_flushed() -> bool:
    """Whether CPU operations in this thread flush denormal numbers to zero now."""
    return float(torch.tensor([1e-40], dtype=torch.float32) * 1.0) == 0.0


@contextlib.contextmanager
def flushed_denormals() -> Iterator[None]:
    """Inside the block, CPU operations of this thread flush denormal numbers to zero; the mode before is
    restored on exit. Threads started inside inherit the mode, a thread pool started before does not: enter
    the block before the first parallel torch operation of the process to cover every intra-op thread."""
    before = denormals_flushed()
    for dtype in (np.float16, np.float32, np.float64):  # numpy computes its finfo once, and warns if that is in this mode
        np.finfo(dtype)
    torch.set_flush_denormal(True)  # False where the CPU cannot (neither x86 with SSE3 nor AArch64): nothing changes
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
