"""Which torch device a command may compute on: the one check of ``--device``, ``train.device`` and
``register(device=...)``, so that a wrong name or a missing GPU is a one-line usage error (exit 2)."""
from __future__ import annotations

import re

from morphreg.errors import MorphregError

DEVICE_NAME = re.compile(r"^(cpu|cuda(:\d+)?)$")


def device_name_problem(name, option: str = "--device") -> str | None:
    """What is wrong with ``name`` as a device name (cpu, cuda, cuda:N), or None (no torch needed)."""
    if isinstance(name, str) and DEVICE_NAME.match(name):
        return None
    return f"{option}: {name!r} is not a device (cpu, cuda or cuda:N)"


def checked_device(name, option: str = "--device"):
    """``name`` as a ``torch.device`` that this machine has; else a one-line MorphregError naming ``option``."""
    import torch

    problem = device_name_problem(name, option)
    if problem:
        raise MorphregError(problem)
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise MorphregError(f"{option} is {name} but no CUDA device is available (torch {torch.__version__}, {build})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MorphregError(f"{option} is {name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
