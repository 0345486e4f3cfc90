"""morphreg: medical image registration in PyTorch, in physical space.

The public names are imported on first use (PEP 562), so that ``morphreg --help`` and other light
commands start without loading torch and SimpleITK.
"""
from __future__ import annotations

import importlib

from morphreg.errors import MorphregError

__version__ = "0.1.0"
__all__ = ["MorphregError", "Grid", "Image", "read_image", "write_image", "load_transform", "warp"]

_LAZY = {"Grid": "morphreg.image", "Image": "morphreg.image", "read_image": "morphreg.image",
         "write_image": "morphreg.image", "load_transform": "morphreg.transforms", "warp": "morphreg.transforms"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'morphreg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
