"""Label inputs: two that must describe the same structures (one rule for registration and evaluation),
and picking a label per point from per-label scores (:func:`label_argmax`).

A label input is an integer (or float) map with one channel, each non-zero value a structure, or a
one-hot stack (4D file, one channel per structure, non-zero = inside). Comparing a map with a stack,
or stacks of different lengths, would silently score every structure as missing (Dice 0).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from morphreg.errors import MorphregError
from morphreg.image.image import Image


def label_argmax(values: Iterable[int], score_of: Callable[[int], torch.Tensor],
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point, the value whose score map ``score_of(value)`` is largest (ties: the earlier value) and
    that score. One score map at a time, so memory stays at two maps whatever the number of labels
    (label warping and label fusion both pick labels this way)."""
    best = winner = None
    for value in values:
        score = score_of(value)
        if best is None:
            best, winner = score, torch.full_like(score, value, dtype=dtype)
        else:
            better = score > best
            best = torch.where(better, score, best)
            winner = torch.where(better, torch.as_tensor(value, dtype=dtype), winner)
    return winner, best


def shared_labels(fixed_labels: Image, moving_labels: Image) -> list[int] | None:
    """The non-zero values present in both maps, or None for two one-hot stacks of equal length.

    Raises MorphregError naming the moving labels when a map meets a stack, two stacks differ in
    length, or two maps share no non-zero value.
    """
    fk, mk = fixed_labels.channels, moving_labels.channels
    if (fk > 1) != (mk > 1):
        kinds = [f"a one-hot stack of {k} channels" if k > 1 else "a label map (one channel)" for k in (mk, fk)]
        raise MorphregError(f"moving labels are {kinds[0]} but the fixed labels ({fixed_labels.name}) are {kinds[1]}; "
                            "give both in the same form", moving_labels.name)
    if fk > 1:
        if fk != mk:
            raise MorphregError(f"label stacks have {fk} (fixed, {fixed_labels.name}) and {mk} (moving) channels; "
                                "they must correspond one to one", moving_labels.name)
        return None
    values = sorted(set(fixed_labels.labels()) & set(moving_labels.labels()))
    if not values:
        raise MorphregError(f"the moving labels share no non-zero label with the fixed labels ({fixed_labels.name})",
                            moving_labels.name)
    return values
