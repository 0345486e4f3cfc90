"""Small synthetic inputs shared by the evaluation / picture / report tests (not a test module)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from morphreg.image import Grid, Image, write_image
from morphreg.transforms import DisplacementFieldTransform, warp


def ball(grid: Grid, center_mm, radius_mm: float) -> np.ndarray:
    """Bool mask (tensor order) of world points within radius of center."""
    x = grid.points(dtype=torch.float64).numpy()
    return np.linalg.norm(x - np.asarray(center_mm), axis=-1) <= radius_mm


def small_case(fold: bool = False):
    """Fixed/moving images and labels on a 24x28x20 grid (1.5 x 1.2 x 2 mm, flipped x axis) and a
    displacement field: a 2 mm shift along y plus, with ``fold``, a local bump that folds."""
    grid = Grid((24, 28, 20), origin=(20.0, -15.0, -18.0), spacing=(1.5, 1.2, 2.0),
                direction=np.diag([-1.0, 1.0, 1.0]))
    c = grid.center()
    x = grid.points(dtype=torch.float64)
    fixed_lab = np.zeros(grid.shape, np.int16)
    fixed_lab[ball(grid, c, 9.0)] = 1
    fixed_lab[ball(grid, c + np.array([0.0, 0.0, 9.0]), 4.0)] = 2
    img = torch.exp(-((x - torch.as_tensor(c)) ** 2).sum(-1) / 120.0) * 100 + torch.as_tensor(fixed_lab) * 20.0
    fixed = Image(img.float()[None], grid, "fixed")
    u = torch.zeros(3, *grid.shape, dtype=torch.float64)
    u[1] = 2.0
    if fold:
        r2 = ((x - torch.as_tensor(c)) ** 2).sum(-1)
        u[0] = 4.0 * torch.sin((x[..., 0] - c[0]) / 1.2) * torch.exp(-r2 / 30.0)
    t = DisplacementFieldTransform(u.float(), grid, parameter=False)
    shift = DisplacementFieldTransform((-u).float(), grid, parameter=False)  # moving = fixed moved by +u (approx.)
    moving = warp(fixed, shift, grid)
    moving_lab = warp(Image(torch.as_tensor(fixed_lab)[None], grid, "ml"), shift, grid, "nearest")
    return fixed, moving, Image(torch.as_tensor(fixed_lab)[None], grid, "fixed_labels"), moving_lab, t


def write_result_dir(path: Path, fold: bool = False, with_optional: bool = True) -> Path:
    """A fake registration result folder as the engine writes it."""
    fixed, moving, fl, ml, t = small_case(fold)
    path.mkdir(parents=True, exist_ok=True)
    inputs = path / "inputs"
    for name, im in (("fixed", fixed), ("moving", moving), ("fixed_labels", fl), ("moving_labels", ml)):
        write_image(im, inputs / f"{name}.nii.gz")
    t.save(path / "transform.h5")
    if with_optional:
        t.save(path / "displacement.nii.gz")
        write_image(warp(moving, t, fixed.grid), path / "warped.nii.gz")
    summary = {"fixed": "inputs/fixed.nii.gz", "moving": "inputs/moving.nii.gz",
               "inputs": {"fixed_labels": "inputs/fixed_labels.nii.gz", "moving_labels": "inputs/moving_labels.nii.gz"},
               "preset": "test-preset", "final_metric": -0.9,
               "stages": [{"index": 0, "model": "bspline", "similarity": "ncc", "levels": [[2, 1.0, 40], [1, 0.0, 20]],
                           "penalties": [{"name": "bending", "weight": 0.1}], "initial_objective": -0.5,
                           "final_objective": -0.9, "diverged": False}],
               "timings": {"io_s": 0.1, "stages_s": [2.0], "warp_s": 0.2, "total_s": 2.3}}
    (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return path
