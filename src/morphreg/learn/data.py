"""Training pairs on the model grid: read from a CSV, resampled in physical space (worker processes
when asked), held in memory as tensors in the canonical model frame.

A pair is ``{"fixed": (1, *shape), "moving": (1, *shape)}`` plus, when given, ``"fixed_labels"`` /
``"moving_labels"`` (K, *shape) float one-hot (channels in correspondence) and ``"fixed_mask"``
(1, *shape). Memory: 4 bytes x (2 + 2K + 1) x points per pair (64^3 points, K = 1: 5 MB).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from morphreg.core.tables import read_table
from morphreg.learn.model import ModelSpace

PAIR_COLUMNS = ("fixed", "moving")
OPTIONAL_COLUMNS = ("fixed_labels", "moving_labels", "fixed_mask", "moving_mask")


class PairFiles(Dataset):
    """The pairs of a CSV, each read and resampled onto its model grid when indexed."""

    def __init__(self, csv_path: str, space: ModelSpace, label_channels: str | None = None):
        self.rows = read_table(csv_path, "training pairs", PAIR_COLUMNS, OPTIONAL_COLUMNS)
        self.space, self.label_channels = space, label_channels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from morphreg.image.io import read_image
        from morphreg.register.inputs import one_hot_labels, select_label_channels

        row_id, paths = self.rows[index]
        fixed = read_image(paths["fixed"])
        grid = self.space.grid_for(fixed.grid)
        item = {"fixed": self.space.prepare(fixed, grid), "moving": self.space.prepare(read_image(paths["moving"]), grid)}
        if "fixed_labels" in paths and "moving_labels" in paths:
            fl, ml = (read_image(paths[k], labels=True) for k in ("fixed_labels", "moving_labels"))
            if self.label_channels is not None:
                fl, ml = select_label_channels(fl, self.label_channels), select_label_channels(ml, self.label_channels)
            fl, ml = one_hot_labels(fl, ml)
            item["fixed_labels"] = self.space.prepare(fl, grid, labels=True)
            item["moving_labels"] = self.space.prepare(ml, grid, labels=True)
        if "fixed_mask" in paths:
            item["fixed_mask"] = (self.space.prepare(read_image(paths["fixed_mask"], labels=True), grid, labels=True) > 0.5).float()
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
    keys = set.intersection(*(set(p) for p in pairs))
    return {k: torch.stack([p[k] for p in pairs]) for k in sorted(keys)}
