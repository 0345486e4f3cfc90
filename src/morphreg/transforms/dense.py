"""Dense transforms: displacement fields and stationary velocity fields on a grid (world mm)."""
from __future__ import annotations

import torch
from torch import nn

from morphreg.core.sampling import sample
from morphreg.image.grid import Grid
from morphreg.transforms.base import Transform, grid_from_dict, grid_to_dict


def sample_field(field: torch.Tensor, grid: Grid, points: torch.Tensor, fill_value: float | None = 0.0) -> torch.Tensor:
    """Linear lookup of a vector field (N, dim, *grid.shape) at world points (N|1, ..., dim) -> (N, ..., dim)."""
    v = sample(field, grid, points, "linear", fill_value=fill_value)
    return torch.movedim(v, 1, -1)


def _grid_points(grid: Grid, like: torch.Tensor) -> torch.Tensor:
    return grid.points(device=like.device, dtype=like.dtype).unsqueeze(0)


class DisplacementFieldTransform(Transform):
    """T(x) = x + u(x), u linearly interpolated from ``field`` (N, dim, *grid.shape) world mm.

    Outside the field's grid the displacement is zero (as in ITK's DisplacementFieldTransform).
    """

    def __init__(self, field: torch.Tensor, grid: Grid, parameter: bool = True):
        super().__init__()
        if field.dim() == grid.dim + 1:
            field = field.unsqueeze(0)
        if tuple(field.shape[1:]) != (grid.dim, *grid.shape):
            raise ValueError(f"field shape {tuple(field.shape)} does not match (N, {grid.dim}, {grid.shape})")
        self.dim = grid.dim
        self.grid = grid
        self.field = nn.Parameter(field.float()) if parameter else field
        self.inverse_residual: dict | None = None

    def domain(self) -> Grid:
        return self.grid

    def points(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim); with a batch of N fields, x is (N | 1, ..., dim)."""
        n = self.field.shape[0]
        flat = x.reshape(1 if n == 1 else x.shape[0], -1, self.dim)
        u = sample_field(self.field.to(x.dtype), self.grid, flat)
        return x + u.reshape(x.shape if n == 1 else (n, *x.shape[1:]))

    def map_grid(self, grid: Grid, dtype=torch.float32, device=None) -> torch.Tensor:
        x = grid.points(device=self.field.device, dtype=dtype).unsqueeze(0)
        u = torch.movedim(self.field.to(dtype), 1, -1) if grid.same_as(self.grid) else sample_field(self.field.to(dtype), self.grid, x)
        # In place when no gradient flows (saves a full-size temporary on large volumes).
        return x.add_(u) if not u.requires_grad and u.shape == x.shape else x + u

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "grid": grid_to_dict(self.grid), "field": self.field.detach().cpu()}

    @classmethod
    def from_dict(cls, d):
        return cls(d["field"], grid_from_dict(d["grid"]))


def scaling_and_squaring(velocity: torch.Tensor, grid: Grid, steps: int = 7) -> torch.Tensor:
    """Displacement exp(v) - id of a stationary velocity field by scaling and squaring.

    Args:
        velocity: (N, dim, *grid.shape) world mm.
        steps: number of squarings K; v is scaled by 2^-K first.
    Returns:
        displacement (N, dim, *grid.shape) world mm.
    """
    x = _grid_points(grid, velocity)
    u = torch.movedim(velocity, 1, -1) / (2**steps)
    for _ in range(steps):
        # u <- u + u o (id + u); border extension keeps the flow defined at the domain edge.
        u = u + sample_field(torch.movedim(u, -1, 1), grid, x + u, fill_value=None)
    return torch.movedim(u, -1, 1)


class StationaryVelocityFieldTransform(Transform):
    """T = exp(v): diffeomorphic, integrated by scaling and squaring; exact inverse exp(-v).

    ``parameter=False`` keeps ``velocity`` as given (e.g. a network's output, so gradients flow back
    to the network) instead of making it the transform's own optimisable Parameter."""

    def __init__(self, velocity: torch.Tensor, grid: Grid, steps: int = 7, parameter: bool = True):
        super().__init__()
        if velocity.dim() == grid.dim + 1:
            velocity = velocity.unsqueeze(0)
        self.dim = grid.dim
        self.grid = grid
        self.steps = int(steps)
        self.velocity = nn.Parameter(velocity.float()) if parameter else velocity.float()
        self._exp: tuple | None = None  # (key, exp(v) - id) of a frozen transform

    def domain(self) -> Grid:
        return self.grid

    def field(self) -> torch.Tensor:
        """Displacement of T on its own grid: (N, dim, *shape) world mm.

        A frozen transform (:meth:`Transform.freeze`, as ``register`` returns it) computes the
        exponential once (a result is warped, checked and saved with a dozen evaluations; brain T1:
        ~1 s each); it is recomputed if the velocity, its storage or ``steps`` change."""
        v = self.velocity
        if not self.frozen or v.requires_grad:
            return scaling_and_squaring(v, self.grid, self.steps)
        key = (v._version, v.data_ptr(), v.device, self.steps, id(self.grid))
        if self._exp is None or self._exp[0] != key:
            with torch.no_grad():
                self._exp = (key, scaling_and_squaring(v.detach(), self.grid, self.steps))
        return self._exp[1]

    def as_displacement(self) -> DisplacementFieldTransform:
        return DisplacementFieldTransform(self.field().detach().clone(), self.grid)

    def points(self, x: torch.Tensor) -> torch.Tensor:
        return DisplacementFieldTransform(self.field(), self.grid, parameter=False).points(x)

    def map_grid(self, grid: Grid, dtype=torch.float32, device=None) -> torch.Tensor:
        return DisplacementFieldTransform(self.field(), self.grid, parameter=False).map_grid(grid, dtype, device)

    def inverse(self, grid: Grid | None = None, **_) -> StationaryVelocityFieldTransform:
        return StationaryVelocityFieldTransform(-self.velocity.detach(), self.grid, self.steps)

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "grid": grid_to_dict(self.grid), "velocity": self.velocity.detach().cpu(), "steps": self.steps}

    @classmethod
    def from_dict(cls, d):
        return cls(d["velocity"], grid_from_dict(d["grid"]), d["steps"])


def fixed_point_inverse(transform: Transform, grid: Grid, iterations: int = 50, tolerance: float = 1e-3) -> DisplacementFieldTransform:
    """Inverse of any transform as a displacement field on ``grid`` by fixed-point iteration.

    Solves w(y) = -u(y + w(y)) where T(x) = x + u(x). Stops when the max residual
    |T(y + w(y)) - y| falls below ``tolerance`` mm. The result's ``inverse_residual`` holds
    {"max_mm", "mean_mm", "iterations"}.
    """
    with torch.no_grad():
        y = grid.points(dtype=torch.float32).unsqueeze(0)
        shape = y.shape
        w = torch.zeros_like(y)
        flat = lambda t: t.reshape(t.shape[0], -1, grid.dim)  # noqa: E731
        misfit = lambda w: transform.points(flat(y + w)).reshape(shape) - y  # noqa: E731  T(y + w) - y
        r = misfit(w)
        it = 0
        while it < iterations and r.norm(dim=-1).max() >= tolerance:
            w = w - r
            r = misfit(w)  # always the residual of the field that is returned
            it += 1
        residual = r.norm(dim=-1)
        result = DisplacementFieldTransform(torch.movedim(w, -1, 1).contiguous(), grid)
        result.inverse_residual = {"max_mm": float(residual.max()), "mean_mm": float(residual.mean()), "iterations": it}
    return result
