"""Similarity metrics as losses (lower is better) with one signature, and thin nn.Module wrappers.

Every loss is ``loss(fixed, warped, mask=None, **params) -> scalar tensor`` with fixed/warped
(N, C, *spatial) and mask broadcastable to (N, 1, *spatial); ``params`` go to the value function.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SimilarityEntry:
    """A registered similarity: its loss and whether the value depends on the geometry.

    needs_grid: the loss takes ``grid=`` (gradients in mm, e.g. NGF): every caller that knows the
    images' grid passes it through :func:`similarity_term`, so no caller keeps its own list.
    """

    loss: Callable[..., torch.Tensor]
    needs_grid: bool = False


SIMILARITIES: dict[str, SimilarityEntry] = {
    "mse": SimilarityEntry(mse_loss),
    "ncc": SimilarityEntry(ncc_loss),
    "lncc": SimilarityEntry(lncc_loss),
    "ngf": SimilarityEntry(ngf_loss, needs_grid=True),
    "mi": SimilarityEntry(mi_loss),
    "nmi": SimilarityEntry(nmi_loss),
    "mind": SimilarityEntry(mind_loss),
}


class _LossView(Mapping):
    """``SIMILARITY_LOSSES``: name -> loss, a read-only view of :data:`SIMILARITIES` (one registry)."""

    def __getitem__(self, name: str) -> Callable[..., torch.Tensor]:
        return SIMILARITIES[name].loss

    def __iter__(self):
        return iter(SIMILARITIES)

    def __len__(self) -> int:
        return len(SIMILARITIES)


SIMILARITY_LOSSES: Mapping[str, Callable[..., torch.Tensor]] = _LossView()


def add_similarity(name: str, loss: Callable[..., torch.Tensor], needs_grid: bool = False, replace: bool = False) -> None:
    """Register ``loss(fixed, warped, mask=None, **params) -> scalar`` (lower is better) as ``name``:
    presets, ``--metric`` and network training can then use it."""
    if name in SIMILARITIES and not replace:
        raise MorphregError(f"a similarity named {name!r} is already registered")
    SIMILARITIES[name] = SimilarityEntry(loss, needs_grid)


def similarity_entry(name: str) -> SimilarityEntry:
    """The registry entry of ``name`` (a clear error for unknown names)."""
    try:
        return SIMILARITIES[name]
    except KeyError:
        raise MorphregError(f"unknown similarity {name!r} (choose from {', '.join(SIMILARITIES)})") from None


def similarity_loss(name: str) -> Callable[..., torch.Tensor]:
    """The loss function registered under ``name`` (a clear error for unknown names)."""
    return similarity_entry(name).loss


def similarity_term(name: str, fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor | None = None,
                    grid=None, **params) -> torch.Tensor:
    """The loss ``name`` of (N, C, *spatial) images on ``grid`` (a :class:`morphreg.core.grid.Grid`,
    given to the metrics that need it; those without one fall back to voxel units)."""
    entry = similarity_entry(name)
    if entry.needs_grid and grid is not None and "grid" not in params:
        params = {**params, "grid": grid}
    return entry.loss(fixed, warped, mask, **params)


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
