"""Penalties on dense displacement fields, in world units.

Every penalty is ``penalty(displacement, grid, mask=None, **params) -> scalar`` where
``displacement`` is u (N, dim, *grid.shape) in world mm (channels x, y, z) of T(x) = x + u(x),
``grid`` gives spacing and direction (derivatives are w.r.t. world mm), and ``mask`` holds weights
broadcastable to (N, 1, *grid.shape); the value is the weighted voxel mean of a per-voxel energy
(averaged over the batch). Derivatives come from :mod:`morphreg.core.differences`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from morphreg.core.differences import forward_differences, world_gradient, world_hessian
from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.metrics._common import as_weight, weighted_mean


def _check(u: torch.Tensor, grid: Grid) -> None:
    if u.dim() != grid.dim + 2 or u.shape[1] != grid.dim or tuple(u.shape[2:]) != grid.shape:
        raise MorphregError(f"displacement {tuple(u.shape)} must be (N, {grid.dim}, *{grid.shape}) on its grid")


def displacement_gradient(u: torch.Tensor, grid: Grid) -> torch.Tensor:
    """du_i/dx_j: (N, dim, dim, *spatial), dimensionless (mm/mm)."""
    return world_gradient(u, grid)


def jacobian_determinant(u: torch.Tensor, grid: Grid) -> torch.Tensor:
    """det(I + grad u) of T = id + u: (N, *spatial)."""
    j = _jacobian(u, grid)
    return torch.linalg.det(j)


def _jacobian(u: torch.Tensor, grid: Grid) -> torch.Tensor:
    """I + grad u as (N, *spatial, dim, dim) matrices (row = output coordinate)."""
    g = displacement_gradient(u, grid)
    g = torch.movedim(torch.movedim(g, 1, -1), 1, -1)
    return g + torch.eye(grid.dim, dtype=u.dtype, device=u.device)


def diffusion(displacement: torch.Tensor, grid: Grid, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of sum_ij (du_i/dx_j)^2 (dimensionless): the membrane / diffusion energy.

    Evaluated with forward differences between neighbouring voxels (so checkerboards are
    penalised): because the direction matrix is orthonormal, sum_ij (du_i/dx_j)^2 =
    sum_k |du/di_k|^2 / spacing_k^2, and each axis term is averaged over its own staggered grid
    (weights = mean of the two voxels' weights). An affine field u = A x + b gives |A|_F^2.
    """
    _check(displacement, grid)
    w = as_weight(mask, displacement)
    total = displacement.new_zeros(())
    for k, d in enumerate(forward_differences(displacement, grid.dim)):
        if d.shape[displacement.dim() - 1 - k] == 0:
            continue  # a single voxel along this axis: no derivative
        energy = (d * d).sum(1, keepdim=True) / float(grid.spacing[k]) ** 2
        wk = None if w is None else _stagger(w, displacement.dim() - 1 - k)
        total = total + weighted_mean(energy, wk)
    return total


def _stagger(w: torch.Tensor, axis: int) -> torch.Tensor:
    """Weights between neighbouring voxels along ``axis`` (mean of the two), broadcast axes kept."""
    if w.shape[axis] == 1:
        return w
    n = w.shape[axis]
    return (w.narrow(axis, 1, n - 1) + w.narrow(axis, 0, n - 1)) / 2


def bending_energy(displacement: torch.Tensor, grid: Grid, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of sum_ijk (d^2 u_i / dx_j dx_k)^2 (mm^-2), the thin-plate energy; 0 for affine fields.

    Mixed terms count twice (j != k), as in u_xx^2 + u_yy^2 + 2 u_xy^2.
    """
    _check(displacement, grid)
    h = world_hessian(displacement, grid)  # (N, dim, dim, dim, *spatial)
    return weighted_mean((h * h).sum((1, 2, 3)).unsqueeze(1), as_weight(mask, displacement))


def linear_elastic(
    displacement: torch.Tensor, grid: Grid, mask: torch.Tensor | None = None, mu: float = 1.0, lam: float = 1.0
) -> torch.Tensor:
    """Mean linear-elastic energy density mu |e|_F^2 + lam / 2 (tr e)^2, e = (grad u + grad u^T) / 2.

    ``mu`` and ``lam`` are the Lame constants (relative weights; dimensionless here). Zero for
    translations; infinitesimal rotations cost nothing to first order only.
    """
    _check(displacement, grid)
    g = displacement_gradient(displacement, grid)
    e = (g + g.transpose(1, 2)) / 2
    trace = torch.diagonal(e, dim1=1, dim2=2).sum(-1)
    energy = mu * (e * e).sum((1, 2)) + lam / 2 * trace * trace
    return weighted_mean(energy.unsqueeze(1), as_weight(mask, displacement))


def log_jacobian(
    displacement: torch.Tensor, grid: Grid, mask: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """Incompressibility penalty: mean (log det(I + grad u))^2; 0 for volume-preserving maps.

    det J is clamped at ``eps`` before the log (folded voxels then add a large constant with no
    gradient; combine with :func:`folding_penalty` to push them back).
    """
    _check(displacement, grid)
    logdet = torch.log(jacobian_determinant(displacement, grid).clamp_min(eps))
    return weighted_mean((logdet * logdet).unsqueeze(1), as_weight(mask, displacement))


def folding_penalty(
    displacement: torch.Tensor, grid: Grid, mask: torch.Tensor | None = None, eps: float = 0.0
) -> torch.Tensor:
    """Mean relu(eps - det J): 0 while every det J >= eps (eps = 0: only folded voxels count)."""
    _check(displacement, grid)
    det = jacobian_determinant(displacement, grid)
    return weighted_mean(F.relu(eps - det).unsqueeze(1), as_weight(mask, displacement))


def rigidity_penalty(
    displacement: torch.Tensor,
    grid: Grid,
    mask: torch.Tensor | None = None,
    linearity: float = 1.0,
    orthonormality: float = 1.0,
    properness: float = 1.0,
) -> torch.Tensor:
    """Rigidity penalty of Staring, Klein & Pluim (Med. Phys. 2007), averaged inside the mask.

    For T = id + u with Jacobian J = I + grad u, per voxel:
      linearity      sum_kij (d^2 T_k / dx_i dx_j)^2           (mm^-2; T locally affine),
      orthonormality sum_ij ((J^T J)_ij - delta_ij)^2          (J orthonormal),
      properness     (det J - 1)^2                             (no reflection / volume change),
    combined with the given weights (elastix's LinearityConditionWeight etc., default 1 each).
    ``mask`` plays the part of the rigidity coefficient image c(x): the value is
    sum_x c(x) E(x) / sum_x c(x). 0 for any rigid field u = (R - I) x + t.
    """
    _check(displacement, grid)
    dim = grid.dim
    energy = displacement.new_zeros(displacement.shape[0], *displacement.shape[2:])
    if linearity:
        h = world_hessian(displacement, grid)
        energy = energy + linearity * (h * h).sum((1, 2, 3))
    if orthonormality or properness:
        j = _jacobian(displacement, grid)
        if orthonormality:
            eye = torch.eye(dim, dtype=j.dtype, device=j.device)
            oc = j.transpose(-1, -2) @ j - eye
            energy = energy + orthonormality * (oc * oc).sum((-2, -1))
        if properness:
            pc = torch.linalg.det(j) - 1
            energy = energy + properness * pc * pc
    return weighted_mean(energy.unsqueeze(1), as_weight(mask, displacement))
