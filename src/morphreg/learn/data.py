"""Training pairs on the model grid: read from a CSV, resampled in physical space (worker processes
when asked), held in memory as tensors in the canonical model frame.

Three ways to name the pairs (``data.mode``): ``pairs`` (a CSV of pairs, prepared once), ``unpaired``
(a CSV of images, columns ``image [, labels, mask]``: every ordered pair of two different images) and
``atlas`` (the same images, each paired with ``data.atlas``, the atlas moving or fixed). The last two
prepare a pair when a step draws it (N (N - 1) pairs would not fit in memory); images are read once.

A pair is ``{"fixed": (1, *shape), "moving": (1, *shape)}`` plus, when given, ``"fixed_labels"`` /
``"moving_labels"`` (K, *shape) float one-hot (channels in correspondence) and ``"fixed_mask"``
(1, *shape). Memory: 4 bytes x (2 + 2K + 1) x points per pair (64^3 points, K = 1: 5 MB).
"""
from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader, Dataset

from morphreg.core.tables import read_table
from morphreg.learn.model import ModelSpace

PAIR_COLUMNS = ("fixed", "moving")
OPTIONAL_COLUMNS = ("fixed_labels", "moving_labels", "fixed_mask", "moving_mask", "rigidity_mask")  # masks: fixed grid


IMAGE_COLUMNS = ("image",)
IMAGE_OPTIONAL = ("labels", "mask")


def pair_rows(mode: str, table: str, atlas: str | None = None, atlas_labels: str | None = None,
              atlas_side: str = "moving") -> list[dict[str, str]]:
    """The pairs (column -> path) that ``mode`` makes of ``table`` (see the module docstring)."""
    if mode == "pairs":
        return [paths for _, paths in read_table(table, "training pairs", PAIR_COLUMNS, OPTIONAL_COLUMNS)]
    images = [paths for _, paths in read_table(table, "images", IMAGE_COLUMNS, IMAGE_OPTIONAL)]
    as_side = lambda side, item: {side: item["image"], **{f"{side}_{k}": item[k] for k in IMAGE_OPTIONAL if k in item}}  # noqa: E731
    if mode == "unpaired":
        return [{**as_side("fixed", a), **as_side("moving", b)} for i, a in enumerate(images)
                for j, b in enumerate(images) if i != j]
    item = {"image": atlas, **({"labels": atlas_labels} if atlas_labels else {})}
    other = "fixed" if atlas_side == "moving" else "moving"
    return [{**as_side(atlas_side, item), **as_side(other, subject)} for subject in images]


@functools.lru_cache(maxsize=512)
def _read(path: str, labels: bool):
    from morphreg.image.io import read_image

    return read_image(path, labels=labels)


class PairFiles(Dataset):
    """Pairs (a CSV of pairs, or rows of :func:`pair_rows`), each read and resampled onto its model grid
    when indexed (files are read once per process)."""

    def __init__(self, rows: str | list[dict[str, str]], space: ModelSpace, label_channels: str | None = None):
        self.table = rows if isinstance(rows, str) else None  # pair k is row k + 1 of a table of pairs
        self.rows = pair_rows("pairs", rows) if isinstance(rows, str) else rows
        self.space, self.label_channels = space, label_channels

    def _read(self, index: int, column: str, labels: bool):
        """The image of one column of pair ``index``, refused (naming the file, and the row of a table) unless
        it has the model's dimension."""
        from morphreg.errors import MorphregError

        image = _read(self.rows[index][column], labels)
        if image.dim != self.space.dim:
            where = f"row {index + 1} of {self.table}, " if self.table else ""
            raise MorphregError(f"a {image.dim}D image ({where}column {column}) for a {self.space.dim}D model (model.dim)",
                                self.rows[index][column])
        return image

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from morphreg.register.inputs import one_hot_labels, select_label_channels

        paths = self.rows[index]
        fixed = self._read(index, "fixed", False)
        grid = self.space.grid_for(fixed.grid)
        item = {"fixed": self.space.prepare(fixed, grid), "moving": self.space.prepare(self._read(index, "moving", False), grid)}
        if "fixed_labels" in paths and "moving_labels" in paths:
            fl, ml = (self._read(index, k, True) for k in ("fixed_labels", "moving_labels"))
            if self.label_channels is not None:
                fl, ml = select_label_channels(fl, self.label_channels), select_label_channels(ml, self.label_channels)
            fl, ml = one_hot_labels(fl, ml)
            item["fixed_labels"] = self.space.prepare(fl, grid, labels=True)
            item["moving_labels"] = self.space.prepare(ml, grid, labels=True)
        for key in ("fixed_mask", "rigidity_mask"):
            if key in paths:
                item[key] = (self.space.prepare(self._read(index, key, True), grid, labels=True) > 0.5).float()
        return item


def load_pairs(csv_path: str, space: ModelSpace, label_channels: str | None = None, workers: int = 0) -> list[dict]:
    """Every pair of the CSV prepared (see the module docstring), in row order."""
    from morphreg.errors import MorphregError

    files = PairFiles(csv_path, space, label_channels)
    loader = DataLoader(files, batch_size=None, shuffle=False, num_workers=workers)
    try:
        return list(loader)
    except MorphregError as exc:  # from a worker process the message holds its traceback: keep the last line
        line = str(exc).strip().splitlines()[-1]
        raise MorphregError(line.split("MorphregError: ", 1)[-1]) from None


def collate(pairs: list[dict]) -> dict[str, torch.Tensor]:
    """A batch: each key stacked to (N, C, *shape); keys missing from some pair are left out."""
    from morphreg.errors import MorphregError

    keys = set.intersection(*(set(p) for p in pairs))
    for k in keys:
        if len({p[k].shape for p in pairs}) > 1:
            raise MorphregError(f"the pairs of a batch have {k} of different shapes {sorted({tuple(p[k].shape) for p in pairs})}: "
                                "set data.label_sampling: one or data.label_channels")
    return {k: torch.stack([p[k] for p in pairs]) for k in sorted(keys)}
