"""Regularisers: gradient checks, known values on affine/rigid/quadratic fields, masks, B-spline grids."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from morphreg.errors import MorphregError
from morphreg.image import Grid
from morphreg.regularizers import (
    PENALTIES,
    Penalty,
    bending_energy,
    diffusion,
    folding_penalty,
    jacobian_determinant,
    linear_elastic,
    log_jacobian,
    penalty_grid,
    rigidity_penalty,
    transform_penalty,
)
from morphreg.transforms import BSplineTransform

F64 = torch.float64


def oblique_grid(dim: int, size=None) -> Grid:
    """Anisotropic, rotated grid so that spacing and direction both matter."""
    if dim == 2:
        c, s = math.cos(0.4), math.sin(0.4)
        return Grid(size or [8, 7], [2.0, -1.0], [0.8, 1.3], [[c, -s], [s, c]])
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return Grid(size or [6, 5, 6], [1.0, 2.0, 3.0], [0.7, 1.0, 1.6], direction)


def field_of(fn, grid: Grid) -> torch.Tensor:
    """u(x) from a function of world points (*shape, dim) -> (*shape, dim): (1, dim, *shape)."""
    x = grid.points(dtype=F64)
    return torch.movedim(fn(x), -1, 0)[None]


def affine_field(a: torch.Tensor, b: torch.Tensor, grid: Grid) -> torch.Tensor:
    return field_of(lambda x: x @ a.T + b, grid)


def rotation(dim: int, angle: float = 0.5) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    if dim == 2:
        return torch.tensor([[c, -s], [s, c]], dtype=F64)
    rz = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=F64)
    rx = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=F64)
    return rz @ rx


def random_field(grid: Grid, scale=0.15, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(1, grid.dim, *grid.shape, generator=g, dtype=F64)


# ----- gradient checks ---------------------------------------------------------------------------
CASES = {
    "diffusion": dict(),
    "bending": dict(),
    "elastic": dict(mu=0.7, lam=1.3),
    "log_jacobian": dict(),
    "folding": dict(eps=1.5),  # eps above every det J so that the penalty is active everywhere
    "rigidity": dict(linearity=0.5, orthonormality=1.0, properness=2.0),
}


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck(name, dim):
    grid = oblique_grid(dim, [6, 5] if dim == 2 else [5, 4, 5])
    u = random_field(grid).requires_grad_(True)
    w = 0.2 + torch.rand(1, 1, *grid.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    fn = PENALTIES[name]
    # fast_mode: random directional derivatives, far fewer evaluations than the full Jacobian
    assert torch.autograd.gradcheck(lambda v: fn(v, grid, w, **CASES[name]), [u], eps=1e-6, atol=1e-5, rtol=1e-3,
                                    fast_mode=True)


@pytest.mark.parametrize("name", ["bending", "rigidity", "diffusion"])
def test_gradcheck_bspline_coefficients(name):
    domain = Grid([9, 8], [0.0, 0.0], [1.0, 1.5])
    t = BSplineTransform.for_grid(domain, 4.0).double()
    with torch.no_grad():
        t.coefficients.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    c = t.coefficients.detach().clone().requires_grad_(True)
    penalty = lambda coef: transform_penalty(_with_coefficients(t, coef), name, dtype=F64)  # noqa: E731
    assert torch.autograd.gradcheck(penalty, [c], eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def _with_coefficients(t: BSplineTransform, coef: torch.Tensor) -> BSplineTransform:
    """Same control grid, coefficients taken from a (differentiable) tensor."""
    out = BSplineTransform(t.control_grid, domain=t.domain_grid).double()
    del out.coefficients
    out.coefficients = coef  # plain tensor attribute: gradients flow to ``coef``
    return out


# ----- known values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 3])
def test_affine_field_values(dim):
    grid = oblique_grid(dim)
    g = torch.Generator().manual_seed(1)
    a = 0.2 * torch.randn(dim, dim, generator=g, dtype=F64)
    u = affine_field(a, torch.ones(dim, dtype=F64), grid)
    assert diffusion(u, grid).item() == pytest.approx((a * a).sum().item(), rel=1e-10)
    assert bending_energy(u, grid).item() == pytest.approx(0, abs=1e-20)
    e = (a + a.T) / 2
    elastic = 0.5 * (e * e).sum() + 2.0 / 2 * torch.trace(e) ** 2
    assert linear_elastic(u, grid, mu=0.5, lam=2.0).item() == pytest.approx(elastic.item(), rel=1e-10)
    det = torch.linalg.det(torch.eye(dim, dtype=F64) + a)
    assert torch.allclose(jacobian_determinant(u, grid), det.expand(1, *grid.shape))
    assert log_jacobian(u, grid).item() == pytest.approx(torch.log(det).item() ** 2, rel=1e-10)
    # the same physical field on a grid with other spacing gives the same values (world units)
    fine = grid.with_spacing(grid.spacing / 2)
    uf = affine_field(a, torch.ones(dim, dtype=F64), fine)
    assert diffusion(uf, fine).item() == pytest.approx(diffusion(u, grid).item(), rel=1e-10)


@pytest.mark.parametrize("dim", [2, 3])
def test_quadratic_bending(dim):
    grid = oblique_grid(dim)
    # u_x = q * x^2 in world coordinates: the only second derivative is d2u_x/dx2 = 2 q
    q = 0.3
    u = field_of(lambda x: torch.stack([q * x[..., 0] ** 2] + [0 * x[..., 0]] * (dim - 1), -1), grid)
    interior = torch.zeros(1, 1, *grid.shape, dtype=F64)
    interior[(..., *[slice(2, -2)] * dim)] = 1  # away from the one-sided border stencils
    assert bending_energy(u, grid, interior).item() == pytest.approx((2 * q) ** 2, rel=1e-9)


def test_diffusion_sees_checkerboards():
    grid = Grid([6, 6], spacing=[1.0, 2.0])
    i, j = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    board = ((-1.0) ** (i + j)).to(F64)
    u = torch.stack([board, 0 * board])[None]
    # forward differences: each of the 5 x 6 pairs per axis differs by 2 -> 4 / s^2
    assert diffusion(u, grid).item() == pytest.approx(4 / 1.0**2 + 4 / 2.0**2)
    assert bending_energy(u, grid).item() > 1


@pytest.mark.parametrize("dim", [2, 3])
def test_rigidity_penalty(dim):
    grid = oblique_grid(dim)
    r = rotation(dim)
    t = torch.arange(1, dim + 1, dtype=F64)
    rigid = affine_field(r - torch.eye(dim, dtype=F64), t, grid)
    assert rigidity_penalty(rigid, grid).item() == pytest.approx(0, abs=1e-20)
    assert log_jacobian(rigid, grid).item() == pytest.approx(0, abs=1e-20)
    assert folding_penalty(rigid, grid).item() == 0
    shear = torch.zeros(dim, dim, dtype=F64)
    shear[0, 1] = 0.3
    sheared = affine_field(shear, t, grid)
    assert rigidity_penalty(sheared, grid).item() > 0.05
    # each condition alone: shear is linear (no linearity term) and volume preserving (det J = 1)
    assert rigidity_penalty(sheared, grid, linearity=1, orthonormality=0, properness=0).item() == pytest.approx(0, abs=1e-20)
    assert rigidity_penalty(sheared, grid, linearity=0, orthonormality=0, properness=1).item() == pytest.approx(0, abs=1e-20)
    oc = rigidity_penalty(sheared, grid, linearity=0, orthonormality=1, properness=0).item()
    j = torch.eye(dim, dtype=F64) + shear
    assert oc == pytest.approx(((j.T @ j - torch.eye(dim, dtype=F64)) ** 2).sum().item(), rel=1e-10)
    scaled = affine_field(0.2 * torch.eye(dim, dtype=F64), t, grid)
    assert rigidity_penalty(scaled, grid, linearity=0, orthonormality=0, properness=1).item() == pytest.approx(
        (1.2**dim - 1) ** 2, rel=1e-10)


@pytest.mark.parametrize("dim", [2, 3])
def test_rigidity_mask(dim):
    grid = oblique_grid(dim, [14, 7] if dim == 2 else [14, 5, 5])
    # rigid on the left (x index < 7), a smooth non-rigid bend on the right
    idx = torch.arange(14, dtype=F64)
    bend = torch.where(idx >= 7, 0.05 * (idx - 7) ** 3, torch.zeros_like(idx))
    u = torch.zeros(1, dim, *grid.shape, dtype=F64)
    u[:, 1] = bend  # broadcast along the last (x) tensor axis
    u = u + affine_field(rotation(dim, 0.3) - torch.eye(dim, dtype=F64), torch.zeros(dim, dtype=F64), grid)
    mask = torch.zeros(*grid.shape, dtype=torch.bool)
    mask[..., :5] = True  # stays 2 voxels clear of the bend (the widest stencil)
    assert rigidity_penalty(u, grid, mask).item() == pytest.approx(0, abs=1e-20)
    assert rigidity_penalty(u, grid).item() > 1e-3
    assert rigidity_penalty(u, grid, ~mask).item() > rigidity_penalty(u, grid).item()
    assert bending_energy(u, grid, mask).item() == pytest.approx(0, abs=1e-20)
    assert diffusion(u, grid, mask).item() < diffusion(u, grid).item()


@pytest.mark.parametrize("dim", [2, 3])
def test_jacobian_penalties(dim):
    grid = oblique_grid(dim)
    zero = torch.zeros(1, dim, *grid.shape, dtype=F64)
    assert log_jacobian(zero, grid).item() == 0
    assert folding_penalty(zero, grid).item() == 0
    assert folding_penalty(zero, grid, eps=1.5).item() == pytest.approx(0.5)
    flip = torch.zeros(dim, dim, dtype=F64)
    flip[0, 0] = -2.0  # x -> -x: det J = -1 everywhere
    u = affine_field(flip, torch.zeros(dim, dtype=F64), grid)
    assert folding_penalty(u, grid).item() == pytest.approx(1.0)
    grow = affine_field(0.1 * torch.eye(dim, dtype=F64), torch.zeros(dim, dtype=F64), grid)
    assert log_jacobian(grow, grid).item() == pytest.approx((dim * math.log(1.1)) ** 2, rel=1e-10)


def test_registry_and_module():
    assert {"diffusion", "bending", "elastic", "log_jacobian", "folding", "rigidity"} <= set(PENALTIES)
    grid = oblique_grid(2)
    u = random_field(grid)
    for name, fn in PENALTIES.items():
        v = fn(u, grid, None)
        assert v.dim() == 0 and v.item() >= 0
        assert Penalty(name)(u, grid).item() == pytest.approx(v.item())
    with pytest.raises(MorphregError):
        Penalty("tv")
    with pytest.raises(MorphregError):
        diffusion(u[:, :1], grid)


# ----- B-spline control grids -----------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 3])
def test_bspline_penalties(dim):
    domain = Grid([20, 18] if dim == 2 else [20, 9, 8], [5.0, -3.0, 2.0][:dim], [1.0, 1.2, 1.5][:dim])
    t = BSplineTransform.for_grid(domain, 5.0).double()
    coarse = penalty_grid(t)
    assert np.allclose(coarse.spacing, np.maximum(2.5, domain.spacing), atol=0.3)
    for name in PENALTIES:
        assert transform_penalty(t, name).item() == 0  # identity
    # control points displaced by a rotation's displacement: cubic B-splines reproduce linear
    # functions, so the transform is exactly rigid on the domain
    r = rotation(dim, 0.2)
    cps = t.control_grid.points(dtype=F64)
    with torch.no_grad():
        t.coefficients.copy_(torch.movedim(cps @ (r - torch.eye(dim, dtype=F64)).T + 0.5, -1, 0)[None])
    assert transform_penalty(t, "rigidity").item() == pytest.approx(0, abs=1e-16)
    assert transform_penalty(t, "bending").item() == pytest.approx(0, abs=1e-16)
    expected = ((r - torch.eye(dim, dtype=F64)) ** 2).sum().item()
    assert transform_penalty(t, "diffusion").item() == pytest.approx(expected, rel=1e-9)
    # a local bump: positive energy, and a mask on the domain grid restricts where it counts
    t = BSplineTransform.for_grid(domain, 3.0).double()  # support of one control point: +-6 mm
    with torch.no_grad():
        t.coefficients[(0, 0, *[s // 2 for s in t.control_grid.shape])] = 3.0
    mask = torch.zeros(1, 1, *domain.shape, dtype=F64)
    mask[..., :3] = 1  # a slab far from the bump
    full = transform_penalty(t, "bending").item()
    assert full > 1e-3
    assert transform_penalty(t, "bending", mask=mask).item() < 0.01 * full
    assert transform_penalty(t, "bending", mask=1 - mask).item() > full
    # dense evaluation on the full-resolution grid agrees to within the sampling error
    dense = bending_energy(t.displacement(domain, dtype=F64), domain).item()
    assert transform_penalty(t, "bending", points_per_control=100).item() == pytest.approx(dense, rel=1e-9)
    assert full == pytest.approx(dense, rel=0.5)
