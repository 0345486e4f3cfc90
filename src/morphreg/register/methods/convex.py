"""ConvexAdam-style registration (Siebert, Hansen & Heinrich 2021): discrete search, then Adam.

1. MIND-SSC descriptors of the fixed image and of the moving image mapped through the previous
   stages (``prior``) onto the fixed grid, averaged down to a coarse grid (the fixed grid shrunk by
   ``grid_shrink``).
2. A cost volume over every integer displacement of the coarse grid within the search radius:
   C(x, d) = mean_c (F_c(x) - M_c(x + d))^2, averaged over a small box of coarse voxels and scaled
   by its mean. Masks: outside the fixed mask every displacement costs the same (the field is
   then set by its neighbours); where x + d leaves the moving image (or mask) the cost is neutral.
3. Coupled convex optimisation: alternately the per-voxel argmin of C(x, d) + lambda |d - u(x)|^2
   (a global search, exact per voxel) and Gaussian smoothing u = G * argmin (a convex smoothing
   step), with the coupling weight lambda increasing (``couplings``) so both agree at the end.
4. Instance optimisation: Adam on a dense displacement field started from the upsampled discrete
   result, with the stage's similarity (MIND by default), the diffusion penalty, and label /
   landmark terms when given - the generic objective and driver (:func:`morphreg.optim.run_stage`)
   through the same warp.

The discrete result replaces the identity only if it lowers the MIND loss at full resolution; the
Adam result replaces the discrete one only if it lowers the objective (else it is discarded).
"""
from __future__ import annotations

import itertools
import math
import time

import numpy as np
import torch

from morphreg.errors import MorphregError
from morphreg.image.filters import box_filter, gaussian_filter
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.metrics._common import as_weight, weighted_mean
from morphreg.metrics.mind import mind_ssc
from morphreg.optim.models import DenseModel, resample_field
from morphreg.optim.progress import add_progress
from morphreg.register.methods.base import (
    Method,
    Prior,
    StageContext,
    StageOutcome,
    compose,
    level_grid_points,
    new_record,
    optimise,
    overlap_mask,
    prior_points,
    stage_levels,
)
from morphreg.transforms import DisplacementFieldTransform, Transform
from morphreg.image.sampling import sample_points

DEFAULTS = {
    "grid_shrink": 3,  # coarse grid of the discrete search = fixed grid shrunk by this
    "search_steps": 4,  # search radius in coarse-grid steps (used when search_radius_mm is None)
    "search_radius_mm": None,  # or the radius in mm, rounded up to whole coarse steps per axis
    "mind": {"radius": 1, "dilation": 2},
    "aggregate_vox": 3,  # odd box (coarse voxels) over which costs are averaged; 1 = none
    "couplings": [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0],  # lambda per coupled step, cost units per step^2
    "coupling_sigma_vox": 1.0,  # Gaussian (coarse voxels) of the convex smoothing step
    "temperature": 0.1,  # soft argmin after the last coupled step (cost units); 0 = hard argmin only
    "instance": True,  # run the Adam instance optimisation after the discrete step
    "field_shrink": 2,  # the Adam field is never finer than the fixed grid shrunk by this
    "smoothing_mm": None,  # Gaussian on the Adam field in every evaluation; None = one fixed voxel
}


def check_convex_params(params: dict) -> dict:
    if int(params["aggregate_vox"]) % 2 == 0:
        raise MorphregError(f"convex aggregate_vox must be odd, got {params['aggregate_vox']}")
    return params


def _shift(x: torch.Tensor, offset: tuple[int, ...], radius: tuple[int, ...]) -> torch.Tensor:
    """x(i + offset) for a tensor padded by ``radius`` per spatial axis (tensor order)."""
    out = x
    for axis, (o, r) in enumerate(zip(offset, radius)):
        n = x.shape[2 + axis] - 2 * r
        out = out.narrow(2 + axis, r + o, n)
    return out


def _pad(x: torch.Tensor, radius: tuple[int, ...]) -> torch.Tensor:
    pad = []
    for r in reversed(radius):  # F.pad lists the last axis first
        pad += [r, r]
    return torch.nn.functional.pad(x, pad, mode="replicate")


def cost_volume(fixed: torch.Tensor, moving: torch.Tensor, radius: tuple[int, ...],
                fixed_weight: torch.Tensor | None = None, moving_weight: torch.Tensor | None = None,
                aggregate: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD cost of every integer displacement within ``radius`` on one grid.

    Args:
        fixed, moving: (1, C, *shape) features on the same (coarse) grid.
        radius: search radius in voxels per tensor axis (z, y, x order).
        fixed_weight, moving_weight: (1, 1, *shape) in [0, 1]; low weight = uninformative cost.
        aggregate: odd box (voxels) over which each displacement's cost is averaged.
    Returns:
        cost (J, *shape) scaled to mean 1, and offsets (J, dim) in voxels, tensor axis order.
    """
    offsets = list(itertools.product(*[range(-r, r + 1) for r in radius]))
    padded = _pad(moving, radius)
    padded_w = None if moving_weight is None else _pad(moving_weight, radius)
    cost = torch.empty(len(offsets), *fixed.shape[2:], dtype=fixed.dtype)
    for j, o in enumerate(offsets):
        cost[j] = ((fixed - _shift(padded, o, radius)) ** 2).mean(1)[0]
    neutral = cost.mean()
    if padded_w is not None:
        for j, o in enumerate(offsets):
            w = _shift(padded_w, o, radius)[0, 0]
            cost[j] = w * cost[j] + (1 - w) * neutral
    if fixed_weight is not None:
        w = fixed_weight[0]
        cost = w * cost + (1 - w) * neutral
    if aggregate > 1:
        cost = box_filter(cost[None], aggregate, normalize=True, boundary="replicate")[0]
    cost = cost / cost.mean().clamp_min(1e-12)
    return cost, torch.tensor(offsets, dtype=fixed.dtype)


def coupled_convex(cost: torch.Tensor, offsets: torch.Tensor, couplings, sigma_vox: float,
                   temperature: float = 0.0) -> torch.Tensor:
    """Coupled convex optimisation of a cost volume (Heinrich et al.; ConvexAdam step 1).

    Args:
        cost: (J, *shape); offsets: (J, dim) voxels, tensor axis order.
        couplings: increasing weights lambda of |d - u|^2 (cost units per voxel^2).
        sigma_vox: Gaussian of the smoothing step (voxels).
        temperature: > 0 ends with a soft argmin at this temperature (cost units) for sub-voxel offsets.
    Returns:
        smooth displacement (dim, *shape) in voxels, tensor axis order.
    """
    dim = offsets.shape[1]
    flat = cost.reshape(cost.shape[0], -1)
    sq = (offsets**2).sum(1, keepdim=True)  # (J, 1)

    def smooth(u: torch.Tensor) -> torch.Tensor:
        return gaussian_filter(u[None], sigma_vox)[0] if sigma_vox > 0 else u

    u = smooth(offsets[flat.argmin(0)].T.reshape(dim, *cost.shape[1:]))
    total = flat
    for lam in couplings:
        uf = u.reshape(dim, -1)
        # |d - u|^2 = |d|^2 - 2 d.u + |u|^2; the last term is the same for every d.
        total = flat + lam * (sq - 2 * offsets @ uf)
        u = smooth(offsets[total.argmin(0)].T.reshape(dim, *cost.shape[1:]))
    if temperature > 0:
        # Sub-step refinement: soft argmin (expected offset under softmax(-total / T)) of the last coupled cost.
        total = total - total.amin(0, keepdim=True)
        u = smooth((torch.softmax(-total / temperature, 0).T @ offsets).T.reshape(dim, *cost.shape[1:]))
    return u


def _to_coarse(data: torch.Tensor, grid: Grid, coarse: Grid, shrink: float) -> torch.Tensor:
    """(1, C, *grid.shape) averaged down onto ``coarse``: a Gaussian of shrink / 2 voxels (truncated at
    2.5 sigma: many channels at full resolution), then linear sampling at the coarse points."""
    smooth = gaussian_filter(data, 0.5 * shrink, truncate=2.5)
    return sample_points(Image(smooth[0], grid), level_grid_points(coarse), "linear", 0.0)


MAX_COST_ENTRIES = 1.5e8  # float32 cost volume of ~600 MB; the grid is coarsened beyond this


def _search_steps(coarse: Grid, params: dict) -> np.ndarray:
    """Search radius in coarse steps per index axis (x, y[, z])."""
    if params["search_radius_mm"] is not None:
        return np.maximum(1, np.ceil(float(params["search_radius_mm"]) / coarse.spacing - 1e-6)).astype(int)
    return np.full(coarse.dim, int(params["search_steps"]))


def _volume_entries(coarse: Grid, params: dict) -> float:
    return float(np.prod(2 * _search_steps(coarse, params) + 1)) * coarse.numel


def discrete_displacement(inputs, prior: Transform | None, params: dict) -> tuple[torch.Tensor, dict]:
    """Steps 1-3: the coupled-convex displacement (1, dim, *fixed.shape) world mm, and a record
    (with the MIND loss at full resolution before and after: ``mind_before``, ``mind_after``)."""
    fixed, moving = inputs.fixed, inputs.moving
    grid = fixed.grid
    shrink = float(params["grid_shrink"])
    coarse = grid.downsample(shrink)
    while _volume_entries(coarse, params) > MAX_COST_ENTRIES:
        shrink += 1.0  # keep the cost volume in memory: a coarser grid (its steps grow with it)
        coarse = grid.downsample(shrink)
    x = level_grid_points(grid)
    pts = prior_points(prior, x)
    warped = sample_points(moving.float(), pts, "linear", 0.0)
    f_desc, m_desc = _mind(fixed.batch().float(), params), _mind(warped, params)
    f_feat = _to_coarse(f_desc, grid, coarse, shrink)
    m_feat = _to_coarse(m_desc, grid, coarse, shrink)
    inside = overlap_mask(moving, pts, inputs.moving_mask, None)
    m_w = _to_coarse(inside, grid, coarse, shrink).clamp(0, 1)
    f_w = None
    if inputs.fixed_mask is not None:
        f_w = sample_points(inputs.fixed_mask.float(), level_grid_points(coarse), "linear", 0.0).clamp(0, 1)
    steps_xyz = _search_steps(coarse, params)
    radius = tuple(int(s) for s in steps_xyz[::-1])  # tensor axis order
    cost, offsets = cost_volume(f_feat, m_feat, radius, f_w, m_w, int(params["aggregate_vox"]))
    u_vox = coupled_convex(cost, offsets, [float(c) for c in params["couplings"]], float(params["coupling_sigma_vox"]),
                           float(params["temperature"]))
    # Voxel steps (tensor order) -> world mm (x, y, z): direction @ (spacing * index step).
    m = torch.as_tensor(coarse.direction @ np.diag(coarse.spacing), dtype=u_vox.dtype)
    u_world = torch.einsum("ij,j...->i...", m, u_vox.flip(0)).unsqueeze(0)
    field = resample_field(u_world, coarse, grid)
    record = {"grid_shrink": shrink, "coarse_spacing_mm": coarse.spacing.tolist(), "coarse_size": list(coarse.size),
              "search_steps": list(steps_xyz.tolist()), "displacements": int(offsets.shape[0])}
    fmask = None if inputs.fixed_mask is None else inputs.fixed_mask.batch().float()
    # MIND loss (as morphreg.metrics.mind_loss, descriptors reused) before and after, at full resolution.
    before = float(weighted_mean((f_desc - m_desc) ** 2, as_weight(overlap_mask(moving, pts, inputs.moving_mask, fmask), f_desc)))
    del m_desc
    pts = prior_points(prior, x + torch.movedim(field, 1, -1))
    warped = sample_points(moving.float(), pts, "linear", 0.0)
    mask = overlap_mask(moving, pts, inputs.moving_mask, fmask)
    after = float(weighted_mean((f_desc - _mind(warped, params)) ** 2, as_weight(mask, f_desc)))
    record.update(mind_before=before, mind_after=after)
    return field, record


def _mind(image: torch.Tensor, params: dict) -> torch.Tensor:
    mind = params["mind"]
    return mind_ssc(image, int(mind.get("radius", 1)), int(mind.get("dilation", 2)))


class Convex(Method):
    """``"model": "convex"``: discrete search + coupled convex step, then the instance optimisation
    of a dense displacement on the one optimisation loop (module docstring)."""

    name = "convex"
    params = DEFAULTS

    def check(self, stage: dict) -> None:
        check_convex_params(self.model_params(stage))

    def run(self, stage: dict, context: StageContext, prior: Prior) -> StageOutcome:
        params = check_convex_params(self.model_params(stage))
        inputs, levels = context.inputs, stage_levels(stage, context.inputs.fixed)
        grid = inputs.fixed.grid
        record = new_record(stage, context, levels)
        t0 = time.perf_counter()
        callback = add_progress(context.progress, f"{context.index}:convex discrete search", 1)
        with torch.no_grad():
            field, discrete = discrete_displacement(inputs, prior.transform, params)
        before, after = discrete["mind_before"], discrete["mind_after"]
        callback(1, after)
        discrete.update(seconds=time.perf_counter() - t0, kept=after < before)
        if not after < before:
            field = torch.zeros_like(field)  # the search made it worse: start the instance optimisation at identity
        record.details.update(discrete=discrete, model_params=params)
        record.initial_objective, record.final_objective = before, min(after, before)
        record.trace, record.seconds = [[before, after]], [discrete["seconds"]]
        stage_t: Transform = DisplacementFieldTransform(field, grid)
        if params["instance"] and levels:
            smoothing = params["smoothing_mm"]
            smoothing = float(np.min(grid.spacing)) if smoothing is None else float(smoothing)
            model = DenseModel(prior.transform, grid, "displacement", False, smoothing, float(params["field_shrink"]))
            model.grid, model.param = grid, field.clone()
            search = (record.trace, record.seconds, record.initial_objective, record.final_objective)
            optimise(model, stage, context, levels, inputs, record=record)
            record.details["instance"] = {"initial_objective": record.initial_objective,
                                          "final_objective": record.final_objective, "diverged": record.diverged}
            record.trace, record.seconds = search[0] + record.trace, search[1] + record.seconds
            record.initial_objective, record.diverged = search[2], False
            if record.details["instance"]["diverged"]:
                record.final_objective = search[3]
            else:
                stage_t = model.stage_transform()  # final objective: the stage's similarity (+ label/landmark terms)
        instance_failed = not params["instance"] or record.details.get("instance", {}).get("diverged", True)
        record.diverged = (not discrete["kept"] and instance_failed) or math.isnan(record.final_objective)
        if record.diverged:  # neither step improved on the previous transform
            return StageOutcome(prior.transform, prior.inverse, record)
        return StageOutcome(*compose(prior, stage_t, None), record, stage_transform=stage_t)
