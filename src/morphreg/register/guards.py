"""Independent checks of a finished stage (``"guard"`` in a preset stage): measures the stage did not
optimise decide whether its result is kept."""
from __future__ import annotations

import torch

from morphreg.optim.multires import StageInputs
from morphreg.transforms import Transform
from morphreg.transforms.warp import warp


def guard_loss(inputs: StageInputs, transform: Transform | None, name: str, sigma_mm: float) -> float:
    """An image similarity (loss, lower = better) of the moving image mapped by ``transform`` onto the
    fixed grid, both smoothed by ``sigma_mm``, over the fixed mask and the moving image's support."""
    from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox
    from morphreg.metrics import similarity_term

    fixed, moving = inputs.fixed, inputs.moving
    fs = gaussian_filter(fixed.batch().float(), sigma_mm_to_vox(sigma_mm, fixed.grid))
    ms = moving.with_data(gaussian_filter(moving.batch().float(), sigma_mm_to_vox(sigma_mm, moving.grid))[0])
    warped = warp(ms, transform, fixed.grid, "linear").batch()
    support = moving.with_data(torch.ones_like(moving.data[:1]) if inputs.moving_mask is None else inputs.moving_mask.data)
    inside = (warp(support, transform, fixed.grid, "linear").batch() > 0.5).float()
    if inputs.fixed_mask is not None:
        inside = inside * (inputs.fixed_mask.batch() > 0.5).float()
    if float(inside.sum()) < 10:
        return float("inf")
    return float(similarity_term(name, fs, warped, inside, fixed.grid))


def check_stage(guard: dict, inputs: StageInputs, before: Transform | None, after: Transform,
                stage_transform: Transform | None = None) -> dict:
    """Divergence check of a finished stage on things other than its own objective.

    ``guard`` keys (all optional):
        similarity: name of an independent similarity loss (e.g. "ngf" for a stage optimising MIND);
            the stage is rejected unless it improves by at least ``min_gain`` (share of |loss|).
        sigma_mm: smoothing of both images for that check (default 2 mm).
        max_move_mm: largest RMS distance, over the fixed mask (or image), between the points mapped
            before and after the stage.
        jacobian: (low, high) bounds on det J of the stage's own deformation (deformable stages).
    Returns a record with the measured values and ``accepted``.
    """
    out: dict = {"accepted": True}
    fixed = inputs.fixed
    with torch.no_grad():
        if guard.get("similarity"):
            name, sigma = guard["similarity"], float(guard.get("sigma_mm", 2.0))
            b, a = guard_loss(inputs, before, name, sigma), guard_loss(inputs, after, name, sigma)
            out.update(similarity=name, before=b, after=a)
            if not a < b - float(guard.get("min_gain", 0.0)) * abs(b):
                out["accepted"] = False
        if guard.get("max_move_mm") is not None:
            grid = fixed.grid.downsample(2)
            x = grid.points(dtype=torch.float32).reshape(-1, fixed.dim)
            xb = x if before is None else before.points(x)
            d = (after.points(x) - xb).norm(dim=-1)
            if inputs.fixed_mask is not None:
                m = warp(inputs.fixed_mask, None, grid, "linear").data.reshape(-1) > 0.5
                d = d[m] if bool(m.any()) else d
            out["move_mm"] = float(d.pow(2).mean().sqrt())
            if out["move_mm"] > float(guard["max_move_mm"]):
                out["accepted"] = False
        if guard.get("jacobian") is not None and stage_transform is not None:
            lo, hi = guard["jacobian"]
            det = stage_transform.jacobian_determinant(fixed.grid)
            out["det_j_range"] = [float(det.min()), float(det.max())]
            if not (lo <= out["det_j_range"][0] and out["det_j_range"][1] <= hi):
                out["accepted"] = False
    return out
