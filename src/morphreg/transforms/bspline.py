"""Cubic B-spline free-form deformation (Rueckert et al.), ITK-compatible control grid."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from morphreg.core.bspline import evaluate_bspline, evaluate_bspline_separable
from morphreg.core.sampling import affine_points
from morphreg.image.grid import Grid
from morphreg.transforms.base import Transform, grid_from_dict, grid_to_dict


def control_grid_for(domain: Grid, control_spacing) -> Grid:
    """Control grid covering ``domain`` (voxel centres) with ``control_spacing`` mm, same direction.

    One control point lies outside the domain on each side (plus the cubic support), so the
    domain sits strictly inside ITK's valid region of the B-spline transform.
    """
    spacing = np.broadcast_to(np.asarray(control_spacing, np.float64), (domain.dim,)).copy()
    intervals = np.floor(domain.extent / spacing).astype(int) + 1
    size = intervals + 3
    # Centre the mesh on the domain.
    start_local = -(intervals * spacing - domain.extent) / 2 - spacing
    origin = domain.origin + domain.direction @ start_local
    return Grid(size.tolist(), origin, spacing, domain.direction)


class BSplineTransform(Transform):
    """T(x) = x + sum_k B3(u(x) - k) c_k with u the control-grid index of x.

    Args:
        control_grid: geometry of the control points (ITK's coefficient image geometry).
        coefficients: (1, dim, *control_grid.shape) displacements in world mm (zeros if None).
        domain: the image grid the transform was made for (used for inverses and export).
        itk_valid_region: leave points unmoved where the cubic support leaves the control grid, as
            ITK does. Set for B-splines read from ITK/elastix files so they map exactly as there;
            morphreg's own B-splines are smooth everywhere (and are exported zero-padded, so that
            ITK reproduces them everywhere too).
    """

    def __init__(self, control_grid: Grid, coefficients: torch.Tensor | None = None, domain: Grid | None = None,
                 itk_valid_region: bool = False):
        super().__init__()
        self.itk_valid_region = bool(itk_valid_region)
        self.dim = control_grid.dim
        self.control_grid = control_grid
        self.domain_grid = domain
        if coefficients is None:
            coefficients = torch.zeros(1, self.dim, *control_grid.shape)
        if coefficients.dim() == self.dim + 1:
            coefficients = coefficients.unsqueeze(0)
        self.coefficients = nn.Parameter(coefficients.float())

    @classmethod
    def for_grid(cls, domain: Grid, control_spacing) -> BSplineTransform:
        """Identity B-spline with control points every ``control_spacing`` mm over ``domain``."""
        return cls(control_grid_for(domain, control_spacing), domain=domain)

    def domain(self) -> Grid | None:
        return self.domain_grid

    def _valid(self, u: torch.Tensor, k: int) -> torch.Tensor:
        """ITK's valid region along index axis k: the whole cubic support lies on the control grid.

        Outside it ITK's BSplineTransform leaves points unmoved; doing the same keeps exported
        files and morphreg's own warps identical everywhere.
        """
        return (u >= 1) & (u < self.control_grid.size[k] - 2)

    def points(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(1, -1, self.dim)
        u = affine_points(flat, self.control_grid.world_to_index())
        d = evaluate_bspline(self.coefficients.to(x.dtype), u, boundary="zero")  # (1, dim, P)
        if self.itk_valid_region:
            valid = torch.stack([self._valid(u[..., k], k) for k in range(self.dim)], -1).all(-1)  # (1, P)
            d = d * valid[:, None, :]
        return x + d[0].T.reshape(x.shape)

    def _aligned(self, grid: Grid) -> bool:
        return np.allclose(grid.direction, self.control_grid.direction, atol=1e-6)

    def map_grid(self, grid: Grid, dtype=torch.float32, device=None) -> torch.Tensor:
        x = grid.points(device=self.coefficients.device, dtype=dtype).unsqueeze(0)
        if not self._aligned(grid):
            return super().map_grid(grid, dtype, self.coefficients.device)
        # Axis-aligned grids: control index along axis k is affine in the grid index along k.
        offset = self.control_grid.world_to_index_points(grid.origin)
        axes = [
            torch.as_tensor(offset[k] + np.arange(grid.size[k]) * grid.spacing[k] / self.control_grid.spacing[k],
                            dtype=dtype, device=self.coefficients.device)
            for k in range(self.dim)
        ]
        field = evaluate_bspline_separable(self.coefficients.to(dtype), axes, boundary="zero")
        for k, u in enumerate(axes if self.itk_valid_region else []):  # zero outside, one axis at a time
            view = [1] * (self.dim + 2)
            view[self.dim + 1 - k] = -1
            field = field * self._valid(u, k).to(dtype).view(view)
        return x + torch.movedim(field, 1, -1)

    def refine(self) -> BSplineTransform:
        """Same deformation on a control grid of half the spacing (exact, by B-spline subdivision).

        Fine coefficients follow the two-scale relation c'_{2i} = (c_{i-1} + 6 c_i + c_{i+1}) / 8,
        c'_{2i+1} = (c_i + c_{i+1}) / 2, i.e. zero insertion and a [1 4 6 4 1]/8 filter per axis.
        The fine grid gains two points per side so that the map is reproduced everywhere; for an
        ITK-style B-spline it keeps, as ITK does, 2n - 3 points with exactly the same valid region.
        """
        c = self.coefficients.detach()
        kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=c.dtype) / 8
        for k in range(self.dim):
            axis = c.dim() - 1 - k
            moved = torch.movedim(c, axis, -1)
            lead = moved.shape[:-1]
            up = F.conv_transpose1d(moved.reshape(-1, 1, moved.shape[-1]), kernel.view(1, 1, 5), stride=2)
            c = torch.movedim(up.reshape(*lead, up.shape[-1]), -1, axis)
        g = self.control_grid
        if not self.itk_valid_region:  # full subdivision: node j sits at coarse index (j - 2) / 2
            fine = Grid([2 * n + 3 for n in g.size], g.origin - g.direction @ g.spacing, g.spacing / 2, g.direction)
            return BSplineTransform(fine, c, self.domain_grid)
        for k in range(self.dim):  # keep nodes 3 .. 2n - 1
            axis = c.dim() - 1 - k
            c = c.narrow(axis, 3, c.shape[axis] - 6)
        fine = Grid([2 * n - 3 for n in g.size], g.origin + g.direction @ (g.spacing / 2), g.spacing / 2, g.direction)
        return BSplineTransform(fine, c.contiguous(), self.domain_grid, itk_valid_region=True)

    def padded(self, nodes: int = 3) -> BSplineTransform:
        """The same map on a control grid with ``nodes`` extra zero coefficients on every side.

        With 3 nodes ITK's valid region covers the whole support, so ITK evaluates it as morphreg does.
        """
        if self.itk_valid_region:
            return self
        c = F.pad(self.coefficients.detach(), [nodes, nodes] * self.dim)
        g = self.control_grid
        grid = Grid([n + 2 * nodes for n in g.size], g.origin - g.direction @ (g.spacing * nodes), g.spacing, g.direction)
        return BSplineTransform(grid, c, self.domain_grid)

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "control_grid": grid_to_dict(self.control_grid),
                "coefficients": self.coefficients.detach().cpu(), "domain": grid_to_dict(self.domain_grid),
                "itk_valid_region": self.itk_valid_region}

    @classmethod
    def from_dict(cls, d):
        return cls(grid_from_dict(d["control_grid"]), d["coefficients"], grid_from_dict(d.get("domain")),
                   d.get("itk_valid_region", False))
