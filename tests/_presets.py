"""One small case per preset (a synthetic 2D pair and the keyword arguments each preset needs, with
short schedules), shared by the determinism test and the golden results."""
from __future__ import annotations

import torch

from morphreg.data.phantom import make_phantom_pair

SHORT = [[2, None, 8], [1, 0.0, 4]]


def preset_case(preset: str):
    """(pair, register keyword arguments) for ``preset`` on a 40x40 phantom at 1.2 mm."""
    pair = make_phantom_pair(dim=2, size=40, spacing=1.2, seed=1)
    kw: dict = {"levels": SHORT}
    if preset == "accurate":  # keep its full-resolution level, shortened
        kw = {"levels": [[2, None, 5]], "2.levels": [[2, None, 5], [1, 0.0, 6]]}
    if preset == "tps":
        pts = pair.fixed.grid.points().reshape(-1, 2)[torch.randperm(1600, generator=torch.Generator().manual_seed(0))[:8]]
        kw = {"fixed_landmarks": pts, "moving_landmarks": pair.true_transform.points(pts).detach()}
    if preset == "rigidity":
        kw["rigidity_mask"] = pair.fixed_labels.with_data((pair.fixed_labels.data == 1).float())
    if preset == "labels":
        kw.update(fixed_labels=pair.fixed_labels, moving_labels=pair.moving_labels)
    return pair, kw
