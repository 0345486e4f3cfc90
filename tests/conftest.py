"""Shared test fixtures: real-data location, seeded randomness, tiny synthetic grids and images.

Factories are session-scoped fixtures that return functions, so hypothesis tests can use them
(hypothesis refuses function-scoped fixtures, which would not be reset between examples).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from morphreg.image.grid import Grid
from morphreg.image.image import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_runtest_setup(item):
    # Every test starts from the same torch seed (a hook, not a fixture, so hypothesis accepts it).
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder ../shared/data beside the repository; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (clone the repository beside shared/ to run this)")
    return SHARED_DATA


def rotation_matrix(dim: int, angles) -> np.ndarray:
    """Orthonormal direction matrix: 2D angle, or 3D R = Rz Ry Rx of (ax, ay, az) radians."""
    angles = np.atleast_1d(np.asarray(angles, np.float64))
    if dim == 2:
        c, s = np.cos(angles[0]), np.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    ax, ay, az = angles[:3]
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _oblique_grid(dim: int, size=None, spacing=None, seed: int = 0, oblique: bool = True) -> Grid:
    """A small grid with anisotropic spacing, an arbitrary origin and (if ``oblique``) a rotated direction."""
    rng = np.random.default_rng(seed)
    size = size or ([12, 10] if dim == 2 else [10, 9, 8])
    spacing = spacing if spacing is not None else rng.uniform(0.7, 2.0, dim)
    direction = rotation_matrix(dim, rng.uniform(-0.6, 0.6, 1 if dim == 2 else 3)) if oblique else np.eye(dim)
    return Grid(size, rng.uniform(-30, 30, dim), spacing, direction)


def _smooth_image(grid: Grid, seed: int = 0, dtype=torch.float32, channels: int = 1) -> Image:
    """Sum of a few Gaussian blobs placed in world space (smooth, so interpolators agree closely)."""
    rng = np.random.default_rng(seed)
    pts = torch.as_tensor(grid.points(dtype=torch.float64).numpy())
    lo = grid.index_to_world_points(np.zeros(grid.dim))
    hi = grid.index_to_world_points(np.asarray(grid.size) - 1.0)
    data = torch.zeros(channels, *grid.shape, dtype=torch.float64)
    width = float(np.abs(hi - lo).max()) / 4 + 1e-6
    for c in range(channels):
        for _ in range(4):
            centre = torch.as_tensor(lo + rng.uniform(0.2, 0.8, grid.dim) * (hi - lo))
            data[c] += rng.uniform(0.5, 2.0) * torch.exp(-((pts - centre) ** 2).sum(-1) / (2 * width**2))
    return Image(data.to(dtype), grid, name="smooth")


def _label_image(grid: Grid, n_labels: int = 3, dtype=torch.int16) -> Image:
    """Label map of nested boxes around the grid centre: labels 0 (background) .. n_labels."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1).astype(np.float64)
    centre = (np.asarray(grid.shape) - 1) / 2
    r = np.abs((idx - centre) / np.maximum(centre, 1)).max(-1)  # 0 at the centre, 1 on the border
    labels = np.zeros(grid.shape, np.int64)
    for k in range(1, n_labels + 1):
        labels[r <= 1 - k / (n_labels + 1)] = k
    return Image(torch.as_tensor(labels).to(dtype), grid, name="labels")


@pytest.fixture(scope="session")
def oblique_grid():
    """Factory: ``oblique_grid(dim, size=None, spacing=None, seed=0, oblique=True) -> Grid``."""
    return _oblique_grid


@pytest.fixture(scope="session")
def smooth_image():
    """Factory: ``smooth_image(grid, seed=0, dtype=float32, channels=1) -> Image``."""
    return _smooth_image


@pytest.fixture(scope="session")
def label_image():
    """Factory: ``label_image(grid, n_labels=3, dtype=int16) -> Image`` (nested boxes)."""
    return _label_image


@pytest.fixture(scope="module")
def one_thread():
    """Tiny problems on a shared 2-core machine: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
