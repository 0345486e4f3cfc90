"""Similarity metrics as losses (lower is better) with one signature, and thin nn.Module wrappers.

Every loss is ``loss(fixed, warped, mask=None, **params) -> scalar tensor`` with fixed/warped
(N, C, *spatial) and mask broadcastable to (N, 1, *spatial); ``params`` go to the value function.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from morphreg.errors import MorphregError
from morphreg.metrics.intensity import local_ncc, mse, ncc
from morphreg.metrics.mind import mind_loss
from morphreg.metrics.mutual_information import mutual_information, normalized_mutual_information
from morphreg.metrics.ngf import ngf


def mse_loss(fixed, warped, mask=None, **params) -> torch.Tensor:
    """Mean squared difference (intensity^2); 0 at a match. See :func:`mse`."""
    return mse(fixed, warped, mask, **params)


def ncc_loss(fixed, warped, mask=None, **params) -> torch.Tensor:
    """1 - global NCC, in [0, 2]. See :func:`ncc`."""
    return 1 - ncc(fixed, warped, mask, **params)


def lncc_loss(fixed, warped, mask=None, **params) -> torch.Tensor:
    """1 - local NCC, in [0, 2] (params: window, squared, eps). See :func:`local_ncc`."""
    return 1 - local_ncc(fixed, warped, mask, **params)


def ngf_loss(fixed, warped, mask=None, **params) -> torch.Tensor:
    """1 - NGF, in [0, 1] (params: grid, epsilon, eta). See :func:`ngf`."""
    return 1 - ngf(fixed, warped, mask, **params)


def mi_loss(fixed, warped, mask=None, **params) -> torch.Tensor:
    """-MI in nats (params: bins, kernel, sigma, fixed_range, warped_range). See :func:`mutual_information`."""
    return -mutual_information(fixed, warped, mask, **params)


def nmi_loss(fixed, warped, mask=None, **params) -> torch.Tensor:
    """2 - NMI, in [0, 1]. See :func:`normalized_mutual_information`."""
    return 2 - normalized_mutual_information(fixed, warped, mask, **params)


SIMILARITY_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": mse_loss,
    "ncc": ncc_loss,
    "lncc": lncc_loss,
    "ngf": ngf_loss,
    "mi": mi_loss,
    "nmi": nmi_loss,
    "mind": mind_loss,
}


def similarity_loss(name: str) -> Callable[..., torch.Tensor]:
    """The loss function registered under ``name`` (a clear error for unknown names)."""
    try:
        return SIMILARITY_LOSSES[name]
    except KeyError:
        raise MorphregError(f"unknown similarity {name!r} (choose from {', '.join(SIMILARITY_LOSSES)})") from None


class SimilarityLoss(nn.Module):
    """``SimilarityLoss("lncc", window=7)(fixed, warped, mask)``: a registered loss with fixed params."""

    def __init__(self, name: str, **params):
        super().__init__()
        self.name = name
        self.fn = similarity_loss(name)
        self.params = params

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(fixed, warped, mask, **self.params)

    def extra_repr(self) -> str:
        return f"{self.name!r}, " + ", ".join(f"{k}={v!r}" for k, v in self.params.items() if k != "grid")
