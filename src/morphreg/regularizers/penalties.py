"""The registry of penalties: ``penalty(displacement, grid, mask=None, **params) -> scalar`` by name."""
from __future__ import annotations

from collections.abc import Callable

import torch

from morphreg.errors import MorphregError
from morphreg.regularizers.dense import (
    bending_energy,
    diffusion,
    folding_penalty,
    linear_elastic,
    log_jacobian,
    rigidity_penalty,
)

PENALTIES: dict[str, Callable[..., torch.Tensor]] = {
    "diffusion": diffusion,
    "bending": bending_energy,
    "elastic": linear_elastic,
    "log_jacobian": log_jacobian,
    "incompressibility": log_jacobian,
    "folding": folding_penalty,
    "rigidity": rigidity_penalty,
}


def penalty_function(name: str) -> Callable[..., torch.Tensor]:
    """The penalty registered under ``name`` (a clear error for unknown names)."""
    try:
        return PENALTIES[name]
    except KeyError:
        raise MorphregError(f"unknown penalty {name!r} (choose from {', '.join(PENALTIES)})") from None
