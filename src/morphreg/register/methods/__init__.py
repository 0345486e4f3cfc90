"""The registry of registration methods: a preset stage's ``"model"`` names one of them.

Adding a method = one module with a :class:`Method` subclass + one line in :data:`METHODS` (or
:func:`add_method` at run time, e.g. a plug-in or a test). See :mod:`morphreg.register.methods.base`
for the protocol.
"""
from __future__ import annotations

from morphreg.errors import MorphregError
from morphreg.register.methods.base import Method, Prior, StageContext, StageOutcome, StageRecord
from morphreg.register.methods.bspline import BSpline
from morphreg.register.methods.convex import Convex
from morphreg.register.methods.demons import Demons
from morphreg.register.methods.dense import Dense
from morphreg.register.methods.linear import Linear
from morphreg.register.methods.tps import ThinPlateSpline

METHODS: dict[str, Method] = {
    "translation": Linear("translation"),
    "rigid": Linear("rigid"),
    "similarity": Linear("similarity"),
    "affine": Linear("affine"),
    "bspline": BSpline(),
    "svf": Dense("svf"),
    "displacement": Dense("displacement"),
    "demons": Demons(),
    "convex": Convex(),
    "tps": ThinPlateSpline(),
}


def get_method(name) -> Method:
    """The method registered as ``name`` (a one-line error listing the others)."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise MorphregError(f"unknown method (stage model) {name!r} (choose from {', '.join(METHODS)})") from None


def add_method(method: Method, replace: bool = False) -> Method:
    """Register ``method`` under ``method.name`` (refused if taken, unless ``replace``)."""
    if method.name in METHODS and not replace:
        raise MorphregError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def remove_method(name: str) -> None:
    METHODS.pop(name, None)


def is_linear(name) -> bool:
    return name in METHODS and METHODS[name].linear


__all__ = ["METHODS", "Method", "Prior", "StageContext", "StageOutcome", "StageRecord", "add_method", "get_method",
           "is_linear", "remove_method"]
