"""Penalties of parametric transforms (B-spline control grids and any other model).

Method (not analytic): the transform's displacement is evaluated on a *coarse sampling grid* over
its domain - ``points_per_control`` points per control-point spacing, never finer than the domain
grid - with :meth:`Transform.displacement` (separable B-spline evaluation on axis-aligned grids,
differentiable w.r.t. the coefficients), and the dense penalty of :mod:`.dense` is applied to it.
With 2 points per control spacing this costs O(control points) and tracks the analytic energy of
the cubic B-spline closely, for every penalty alike (elastix's penalty terms likewise sample).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from morphreg.core.sampling import sample
from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.regularizers.penalties import penalty_function
from morphreg.transforms.base import Transform
from morphreg.transforms.bspline import BSplineTransform


def penalty_grid(transform: Transform, domain: Grid | None = None, points_per_control: float = 2.0) -> Grid:
    """The grid on which :func:`transform_penalty` samples ``transform``.

    B-splines: ``domain`` (or the transform's own domain) resampled to control spacing /
    ``points_per_control`` mm, but no finer than the domain grid. Other models: ``domain`` itself.
    """
    domain = domain or transform.domain()
    if domain is None:
        raise MorphregError(f"{type(transform).__name__} has no domain grid: pass the grid to evaluate the penalty on")
    if not isinstance(transform, BSplineTransform):
        return domain
    spacing = np.maximum(transform.control_grid.spacing / points_per_control, domain.spacing)
    return domain.with_spacing(spacing)


def transform_penalty(
    transform: Transform,
    penalty: str | Callable[..., torch.Tensor],
    domain: Grid | None = None,
    mask: torch.Tensor | None = None,
    points_per_control: float = 2.0,
    dtype: torch.dtype | None = None,
    **params,
) -> torch.Tensor:
    """A dense penalty of ``transform`` (see module docstring), differentiable w.r.t. its parameters.

    Args:
        transform: e.g. a :class:`BSplineTransform`.
        penalty: a name in ``PENALTIES`` or a penalty function.
        domain: grid the penalty is defined over (default: the transform's domain).
        mask: weights on ``domain``, (N | 1, 1, *domain.shape); resampled linearly to the coarse grid.
        points_per_control: sampling density per control spacing (B-splines).
        dtype: evaluation dtype (default: that of the transform's first parameter, else float32).
        **params: passed to the penalty (weights, mu/lam, eps ...).
    Returns:
        scalar, in the penalty's units.
    """
    fn = penalty_function(penalty) if isinstance(penalty, str) else penalty
    domain = domain or transform.domain()
    grid = penalty_grid(transform, domain, points_per_control)
    dtype = dtype or next((p.dtype for p in transform.parameters()), torch.float32)
    u = transform.displacement(grid, dtype=dtype)
    if mask is not None and not grid.same_as(domain):
        m = mask.to(dtype=dtype, device=u.device)
        m = m.reshape((1,) * (grid.dim + 2 - m.dim()) + tuple(m.shape))
        mask = sample(m, domain, grid.points(device=u.device, dtype=dtype).unsqueeze(0), "linear", fill_value=0.0)
    return fn(u, grid, mask, **params)
