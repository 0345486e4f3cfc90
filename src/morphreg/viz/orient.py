"""Display geometry: arrays turned to the nearest LPS-aligned axes and cut into the 2D view or the
three orthogonal planes (axial, coronal, sagittal) in radiological convention."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morphreg.image.grid import Grid


def lps_array(arr: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray, bool]:
    """Permute/flip the last ``grid.dim`` axes of ``arr`` (tensor order) so that tensor axis
    ``dim-1-w`` runs along +world axis w (x=L, y=P, z=S).

    Returns (array, spacing per world axis, oblique) where ``oblique`` says the direction matrix was
    not a signed permutation and the nearest one was used (the picture is then approximate).
    """
    d = grid.dim
    lead = arr.ndim - d
    index_axis = np.abs(grid.direction).argmax(axis=1)  # index axis that runs most along world axis w
    if len(set(index_axis.tolist())) != d:
        index_axis = np.arange(d)
    signs = np.sign(grid.direction[np.arange(d), index_axis])
    oblique = not np.allclose(np.abs(grid.direction[np.arange(d), index_axis]), 1.0, atol=1e-3)
    # Output tensor axis (d-1-w) <- input tensor axis (d-1-index_axis[w]).
    order = [lead + d - 1 - int(index_axis[w]) for w in reversed(range(d))]
    out = np.transpose(arr, list(range(lead)) + order)
    for w in range(d):
        if signs[w] < 0:
            out = np.flip(out, axis=lead + d - 1 - w)
    return np.ascontiguousarray(out), grid.spacing[index_axis], oblique


@dataclass
class Plane:
    """One 2D view: ``take(arr)`` cuts it from an LPS-ordered array; ``h``/``v`` are the world axes
    running horizontally/vertically; ``extent`` in mm for imshow; ``origin`` for imshow."""

    name: str
    axis: int | None  # tensor axis cut (None in 2D)
    index: int
    h: int
    v: int
    extent: tuple[float, float, float, float]
    origin: str
    letters: tuple[str, str, str, str]  # left, right, top, bottom

    def take(self, arr: np.ndarray) -> np.ndarray:
        """Slice of the last spatial axes (leading axes, e.g. vector components, kept)."""
        if self.axis is None:
            return arr
        return np.take(arr, self.index, axis=arr.ndim - 3 + self.axis)

    def coords(self, shape2d: tuple[int, int], spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """mm coordinates (horizontal, vertical) of every pixel of the cut, each of shape ``shape2d``."""
        vv, hh = np.meshgrid(np.arange(shape2d[0]) * spacing[self.v], np.arange(shape2d[1]) * spacing[self.h], indexing="ij")
        return hh, vv


def _extent(nh: int, nv: int, sh: float, sv: float, upper: bool) -> tuple[float, float, float, float]:
    left, right = -sh / 2, (nh - 0.5) * sh
    top, bottom = -sv / 2, (nv - 0.5) * sv
    return (left, right, bottom, top) if upper else (left, right, top, bottom)


def planes(shape: tuple[int, ...], spacing: np.ndarray, center: np.ndarray | None = None) -> list[Plane]:
    """The 2D view, or axial/coronal/sagittal planes through ``center`` (LPS-ordered index x, y, z)."""
    if len(shape) == 2:
        ny, nx = shape
        return [Plane("2D", None, 0, 0, 1, _extent(nx, ny, spacing[0], spacing[1], True), "upper", ("R", "L", "A", "P"))]
    nz, ny, nx = shape
    c = np.asarray([nx, ny, nz]) // 2 if center is None else np.clip(np.round(center).astype(int), 0, [nx - 1, ny - 1, nz - 1])
    sx, sy, sz = spacing
    return [
        Plane("axial", 0, int(c[2]), 0, 1, _extent(nx, ny, sx, sy, True), "upper", ("R", "L", "A", "P")),
        Plane("coronal", 1, int(c[1]), 0, 2, _extent(nx, nz, sx, sz, False), "lower", ("R", "L", "S", "I")),
        Plane("sagittal", 2, int(c[0]), 1, 2, _extent(ny, nz, sy, sz, False), "lower", ("A", "P", "S", "I")),
    ]
