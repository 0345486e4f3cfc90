"""Quality of a transform itself: Jacobian determinant, folding, SDlogJ, inverse consistency,
displacement size and rigidity inside a mask. All derivatives are of x -> T(x) in world mm,
computed by :meth:`Transform.jacobian` (the project's one finite-difference routine).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.core.differences import mapping_jacobian_determinant
from morphreg.transforms.base import Transform
from morphreg.evaluate.labels import to_reference


EXTREME_DET_J = (0.1, 10.0)


def mask_array(mask: Image | np.ndarray | None, grid: Grid, notes: list[str] | None = None) -> np.ndarray | None:
    """A bool mask (tensor order) on ``grid`` from an Image (any channel != 0; resampled by nearest
    with a note if on another grid) or an array; None stays None."""
    if mask is None:
        return None
    if isinstance(mask, Image):
        mask = to_reference(mask, grid, True, notes if notes is not None else [], "the mask")
        return (mask.data != 0).any(0).cpu().numpy()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != grid.shape:
        raise MorphregError(f"mask shape {mask.shape} does not match the grid shape {grid.shape}")
    return mask


def jacobian_determinant(transform: Transform, grid: Grid, mapped: torch.Tensor | None = None) -> np.ndarray:
    """det(dT/dx) on ``grid`` as a float64 array of shape ``grid.shape`` (``mapped``: T's points of
    ``grid`` when already computed, (1, *grid.shape, dim) mm)."""
    with torch.no_grad():
        if mapped is None:
            return transform.jacobian_determinant(grid, dtype=torch.float64)[0].cpu().numpy()
        return mapping_jacobian_determinant(torch.movedim(mapped.double(), -1, 1), grid)[0].cpu().numpy()


def jacobian_stats(det_j: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Folding and volume change from a det J map (optionally inside ``mask``).

    ``folding_percent`` = 100 * share of voxels with det J <= 0; ``extreme_percent`` = 100 * share with
    0 < det J < 0.1 or det J > 10 (tissue squeezed or blown up tenfold); ``sdlogj`` = std of log det J over
    voxels with det J > 0 (0 for any volume-preserving or uniformly scaling map).
    """
    vals = det_j[mask] if mask is not None else det_j.ravel()
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return {"voxels": 0, "folding_percent": math.nan, "folded_voxels": 0, "sdlogj": math.nan,
                "min": math.nan, "max": math.nan, "median": math.nan, "mean": math.nan}
    positive = vals[vals > 0]
    return {
        "voxels": int(vals.size),
        "folding_percent": float(100.0 * (vals <= 0).sum() / vals.size),
        "folded_voxels": int((vals <= 0).sum()),
        "extreme_percent": float(100.0 * (((vals > 0) & (vals < EXTREME_DET_J[0])) | (vals > EXTREME_DET_J[1])).sum() / vals.size),
        "sdlogj": float(np.log(positive).std()) if positive.size else math.nan,
        "min": float(vals.min()), "max": float(vals.max()),
        "median": float(np.median(vals)), "mean": float(vals.mean()),
    }


def _norm_summary(values: np.ndarray, unit: str = "_mm") -> dict:
    v = values[np.isfinite(values)]
    if not v.size:
        return {f"mean{unit}": math.nan, f"median{unit}": math.nan, f"p95{unit}": math.nan, f"max{unit}": math.nan}
    return {f"mean{unit}": float(v.mean()), f"median{unit}": float(np.median(v)),
            f"p95{unit}": float(np.percentile(v, 95)), f"max{unit}": float(v.max())}


def displacement_magnitude(transform: Transform, grid: Grid, mapped: torch.Tensor | None = None) -> np.ndarray:
    """|T(x) - x| in mm on ``grid`` (shape ``grid.shape``; ``mapped`` as in :func:`jacobian_determinant`)."""
    with torch.no_grad():
        if mapped is None:
            u = transform.displacement(grid, dtype=torch.float64)[0]
        else:
            u = torch.movedim(mapped[0].double() - grid.points(dtype=torch.float64, device=mapped.device), -1, 0)
    return torch.linalg.vector_norm(u, dim=0).cpu().numpy()


INTERIOR_MARGIN_VOXELS = 5


def inverse_consistency(forward: Transform, inverse: Transform, grid: Grid, mask: np.ndarray | None = None) -> dict:
    """|S(T(x)) - x| in mm for x on ``grid`` (T: fixed -> moving, S: its claimed inverse): mean, median,
    p95, max, and ``interior`` (mean, p99, max) over the points at least ``INTERIOR_MARGIN_VOXELS`` from the
    grid's border. Near the border T(x) leaves the field the inverse is stored on, whose values are then
    carried on from its edge, so there the error measures the field of view, not the inverse."""
    with torch.no_grad():
        y = forward.map_grid(grid, dtype=torch.float32)
        z = inverse.points(y).double()
        err = torch.linalg.vector_norm(z - grid.points(dtype=torch.float64).unsqueeze(0), dim=-1)[0].numpy()
    inside = interior_mask(grid.shape, INTERIOR_MARGIN_VOXELS)
    if mask is not None:
        err, inside = err[mask], inside[mask]
    out = _norm_summary(err.ravel())
    core = err[inside] if inside.any() else err.ravel()
    out["interior"] = {"margin_voxels": INTERIOR_MARGIN_VOXELS, **_norm_summary(core), "p99_mm": float(np.percentile(core, 99))}
    return out


def interior_mask(shape: tuple[int, ...], margin: int) -> np.ndarray:
    """True at the voxels at least ``margin`` voxels from every face of an array of ``shape``."""
    inside = np.zeros(shape, dtype=bool)
    inside[tuple(slice(min(margin, n // 2), max(n - margin, n - n // 2)) for n in shape)] = True
    return inside


def rigidity(transform: Transform, grid: Grid, mask: np.ndarray) -> dict:
    """How rigidly the region ``mask`` moved: mean/std of det J and the orthonormality error
    ||J^T J - I||_F (0 for a rotation+translation), mean and max, inside the mask."""
    with torch.no_grad():
        jac = transform.jacobian(grid, dtype=torch.float64)[0]  # (*shape, dim, dim)
    jac_in = jac[torch.as_tensor(mask)]
    if not jac_in.shape[0]:
        return {"voxels": 0, "det_mean": math.nan, "det_std": math.nan,
                "orthonormality_error_mean": math.nan, "orthonormality_error_max": math.nan}
    det = torch.linalg.det(jac_in)
    eye = torch.eye(grid.dim, dtype=jac_in.dtype)
    ortho = torch.linalg.matrix_norm(jac_in.transpose(-1, -2) @ jac_in - eye)
    return {"voxels": int(jac_in.shape[0]), "det_mean": float(det.mean()), "det_std": float(det.std(unbiased=False)),
            "orthonormality_error_mean": float(ortho.mean()), "orthonormality_error_max": float(ortho.max())}


def transform_quality(transform: Transform, grid: Grid, mask: Image | np.ndarray | None = None,
                      inverse: Transform | None = None, rigid_masks: dict[str, np.ndarray] | None = None) -> dict:
    """All transform measures on ``grid``: det J statistics (domain and mask), displacement size,
    inverse consistency (if ``inverse`` is given) and rigidity per mask in ``rigid_masks``."""
    notes: list[str] = []
    m = mask_array(mask, grid, notes)
    with torch.no_grad():  # T(x) once for det J and |u|
        mapped = transform.map_grid(grid, dtype=torch.float64)
    det_j = jacobian_determinant(transform, grid, mapped)
    out: dict = {"jacobian": jacobian_stats(det_j), "displacement": _norm_summary(displacement_magnitude(transform, grid, mapped)),
                 "notes": notes}
    del mapped
    if m is not None:
        out["jacobian_in_mask"] = jacobian_stats(det_j, m)
        out["rigidity_in_mask"] = rigidity(transform, grid, m)
    for name, rm in (rigid_masks or {}).items():
        out.setdefault("rigidity", {})[name] = rigidity(transform, grid, rm)
    if inverse is not None:
        out["inverse_consistency"] = inverse_consistency(transform, inverse, grid, m)
    return out
