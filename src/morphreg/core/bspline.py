"""Cubic B-splines: the kernel, interpolation prefilter and evaluation.

Shared by the B-spline transform (coefficients = control-point displacements, zero outside the
control grid) and B-spline image interpolation (coefficients from a mirror-boundary prefilter).
Coefficient tensors are (N, C, *spatial) with spatial axes in tensor order; points are given as
continuous *index* coordinates (..., dim) in ITK order (x first).
"""
from __future__ import annotations

import functools
import itertools

import torch


def cubic_bspline_weights(t: torch.Tensor) -> torch.Tensor:
    """Weights of the 4 neighbours floor(u)-1 .. floor(u)+2 for fractional part t in [0, 1): (..., 4)."""
    t2, t3 = t * t, t * t * t
    w0 = (1 - t) ** 3 / 6
    w1 = (3 * t3 - 6 * t2 + 4) / 6
    w2 = (-3 * t3 + 3 * t2 + 3 * t + 1) / 6
    w3 = t3 / 6
    return torch.stack([w0, w1, w2, w3], dim=-1)


def _mirror(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Whole-sample symmetric extension (ITK/Unser): -1 -> 1, n -> n-2."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


@functools.lru_cache(maxsize=64)
def _prefilter_matrix_cpu(n: int) -> torch.Tensor:
    b = torch.zeros(n, n, dtype=torch.float64)
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    idx = torch.arange(n)
    b[idx, idx] = 4 / 6
    for off in (-1, 1):
        j = _mirror(idx + off, n)
        b[idx, j] += 1 / 6
    return torch.linalg.inv(b)


def bspline_prefilter(data: torch.Tensor, dim: int) -> torch.Tensor:
    """Interpolation coefficients of cubic B-spline interpolation (mirror boundary) along the last ``dim`` axes.

    Linear in ``data`` (a matrix product per axis), hence differentiable.
    """
    out = data
    for axis in range(-dim, 0):
        n = out.shape[axis]
        m = _prefilter_matrix_cpu(n).to(device=out.device, dtype=out.dtype)
        out = torch.movedim(torch.movedim(out, axis, -1) @ m.T, -1, axis)
    return out


def evaluate_bspline(coef: torch.Tensor, index: torch.Tensor, boundary: str = "zero", chunk: int = 1 << 18) -> torch.Tensor:
    """Evaluate sum_k B3(u - k) c_k at arbitrary continuous indices.

    Args:
        coef: (N, C, *spatial) coefficients.
        index: (N or 1, P, dim) continuous index coordinates, x first.
        boundary: "zero" (coefficients vanish outside) or "mirror".
    Returns:
        (N, C, P)
    """
    n_batch, channels = coef.shape[:2]
    spatial = coef.shape[2:]
    dim = len(spatial)
    size_xyz = list(reversed(spatial))  # per index axis
    strides = [1] * dim
    for k in range(1, dim):
        strides[k] = strides[k - 1] * size_xyz[k - 1]
    flat = coef.reshape(n_batch, channels, -1)
    if index.shape[0] == 1 and n_batch > 1:
        index = index.expand(n_batch, -1, -1)
    outs = []
    for start in range(0, index.shape[1], chunk):
        u = index[:, start : start + chunk]
        base = torch.floor(u)
        w = cubic_bspline_weights(u - base)  # (N, P, dim, 4)
        base = base.long() - 1
        # Per axis and offset once (4 * dim index/weight vectors), not once per neighbour (4 ** dim):
        # the boundary handling is most of the cost.
        offsets, weights = [], []
        for k in range(dim):
            axis_idx, axis_w = [], []
            for o in range(4):
                i = base[..., k] + o
                wk = w[..., k, o]
                if boundary == "mirror":
                    i = _mirror(i, size_xyz[k])
                else:
                    wk = wk * ((i >= 0) & (i < size_xyz[k]))
                    i = i.clamp(0, size_xyz[k] - 1)
                axis_idx.append(i * strides[k])
                axis_w.append(wk)
            offsets.append(axis_idx)
            weights.append(axis_w)
        acc = None
        for combo in itertools.product(range(4), repeat=dim):
            flat_idx = offsets[0][combo[0]]
            weight = weights[0][combo[0]]
            for k in range(1, dim):
                flat_idx = flat_idx + offsets[k][combo[k]]
                weight = weight * weights[k][combo[k]]
            vals = torch.gather(flat, 2, flat_idx[:, None, :].expand(-1, channels, -1))
            term = vals * weight[:, None, :]
            acc = term if acc is None else acc + term
        outs.append(acc)
    return torch.cat(outs, dim=2)


def bspline_axis_matrix(u: torch.Tensor, n: int, boundary: str = "zero") -> torch.Tensor:
    """Dense (len(u), n) matrix of B-spline weights of coefficient j at 1D positions u (index units)."""
    base = torch.floor(u)
    w = cubic_bspline_weights(u - base)
    base = base.long() - 1
    mat = torch.zeros(u.shape[0], n, dtype=u.dtype, device=u.device)
    rows = torch.arange(u.shape[0], device=u.device)
    for o in range(4):
        j = base + o
        if boundary == "mirror":
            mat.index_put_((rows, _mirror(j, n)), w[:, o], accumulate=True)
        else:
            ok = (j >= 0) & (j < n)
            mat.index_put_((rows[ok], j[ok]), w[ok, o], accumulate=True)
    return mat


def evaluate_bspline_separable(coef: torch.Tensor, axis_positions: list[torch.Tensor], boundary: str = "zero") -> torch.Tensor:
    """Evaluate on a tensor-product lattice: position vectors per index axis (x first), each in index units.

    Much faster than :func:`evaluate_bspline` on dense grids that are axis-aligned with the coefficients.
    Returns (N, C, *lattice) with lattice in tensor order.
    """
    dim = coef.dim() - 2
    out = coef
    for k, u in enumerate(axis_positions):
        axis = coef.dim() - 1 - k
        m = bspline_axis_matrix(u.to(coef.dtype), coef.shape[axis], boundary)
        out = torch.movedim(torch.movedim(out, axis, -1) @ m.T, -1, axis)
    assert out.dim() == dim + 2
    return out
