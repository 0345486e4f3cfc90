"""Initial alignment: geometric centres, centres of mass, principal axes, and a global FFT search.

Every initialiser returns a :class:`RigidTransform` (fixed -> moving points) about the fixed image's
centre, ready to seed the first linear stage.

The global search follows CSNGF (Haskins-like cross-correlation of squared normalised gradient fields,
WBIR 2022): for each rotation R of a set, the moving image is resampled into the fixed frame, the
edge maps n = grad I / sqrt(|grad I|^2 + eps^2) of both are formed, and sum_x (n_F(x) . n_M(x + s))^2
is computed for *all* shifts s at once with FFTs (the square expands into dim (dim + 1) / 2
products of components). The best (R, s) wins. Being built on edge directions, it is insensitive to
the intensity mapping between modalities.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from morphreg.core.differences import world_gradient
from morphreg.errors import MorphregError
from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.transforms.linear import RigidTransform, rotation_2d, rotation_euler_zyx
from morphreg.transforms.warp import warp

INITIALIZERS = ("identity", "geometry", "moments", "principal_axes", "fft")


def _rigid(fixed: Image, rotation: np.ndarray, moving_point: np.ndarray, fixed_point: np.ndarray) -> RigidTransform:
    """Rigid transform about the fixed centre that maps ``fixed_point`` to ``moving_point`` with ``rotation``."""
    from morphreg.transforms.linear import rotation_angles_from_matrix

    dim = fixed.dim
    c = fixed.grid.center()
    # y = R (x - c) + c + t and y(fixed_point) = moving_point
    t = moving_point - rotation @ (fixed_point - c) - c
    return RigidTransform(dim, angles=rotation_angles_from_matrix(rotation, dim), translation=t, center=c)


def _weights(image: Image, mask: Image | None) -> tuple[np.ndarray, np.ndarray]:
    """World points (P, dim) and non-negative intensity weights (P,) inside the mask."""
    data = image.data[0].double()
    w = (data - data.min()).reshape(-1)
    if mask is not None:
        w = w * (mask.data[0].reshape(-1) > 0.5)
    pts = image.grid.points(dtype=torch.float64).reshape(-1, image.dim)
    if float(w.sum()) <= 0:
        raise MorphregError("cannot compute moments: the image (inside its mask) has no intensity above its minimum", image.name)
    return pts.numpy(), w.numpy()


def centre_of_mass(image: Image, mask: Image | None = None) -> np.ndarray:
    pts, w = _weights(image, mask)
    return (pts * w[:, None]).sum(0) / w.sum()


def principal_axes(image: Image, mask: Image | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass (dim,) and eigenvectors (columns, by decreasing eigenvalue) of the intensity moments."""
    pts, w = _weights(image, mask)
    c = (pts * w[:, None]).sum(0) / w.sum()
    d = pts - c
    cov = (d * w[:, None]).T @ d / w.sum()
    vals, vecs = np.linalg.eigh(cov)
    return c, vecs[:, ::-1]


def initialize(fixed: Image, moving: Image, method: str = "geometry", fixed_mask: Image | None = None,
               moving_mask: Image | None = None, **params) -> RigidTransform:
    """Initial rigid transform (fixed -> moving) by ``method`` (see INITIALIZERS)."""
    dim = fixed.dim
    eye = np.eye(dim)
    if method in (None, "identity"):
        return RigidTransform(dim, center=fixed.grid.center())
    if method == "geometry":
        return _rigid(fixed, eye, moving.grid.center(), fixed.grid.center())
    if method == "moments":
        return _rigid(fixed, eye, centre_of_mass(moving, moving_mask), centre_of_mass(fixed, fixed_mask))
    if method == "principal_axes":
        cf, ef = principal_axes(fixed, fixed_mask)
        cm, em = principal_axes(moving, moving_mask)
        # Eigenvectors have arbitrary signs: of the proper rotations E_M S E_F^T, take the one closest
        # to the identity (images are rarely upside down with respect to each other).
        best, best_trace = eye, -np.inf
        for signs in itertools.product((1.0, -1.0), repeat=dim):
            r = em @ np.diag(signs) @ ef.T
            if np.linalg.det(r) > 0 and np.trace(r) > best_trace:
                best, best_trace = r, np.trace(r)
        return _rigid(fixed, best, cm, cf)
    if method == "fft":
        return fft_search(fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask, **params)
    raise MorphregError(f"unknown initialiser {method!r} (choose from {', '.join(INITIALIZERS)})")


def _rotations(dim: int, max_angle_deg: float, step_deg: float) -> list[np.ndarray]:
    n = int(math.floor(max_angle_deg / step_deg)) if step_deg > 0 else 0
    angles = np.deg2rad(np.arange(-n, n + 1) * step_deg) if n else np.zeros(1)
    if dim == 2:
        return [rotation_2d(torch.tensor(a, dtype=torch.float64)).numpy() for a in angles]
    return [rotation_euler_zyx(torch.tensor(abc, dtype=torch.float64)).numpy() for abc in itertools.product(angles, repeat=3)]


def _edges(data: torch.Tensor, grid: Grid, eta: float, mask: torch.Tensor | None) -> torch.Tensor:
    """Unit-ish gradient field n (1, dim, *shape), eps = eta * RMS gradient norm (inside ``mask``)."""
    g = world_gradient(data, grid)[:, 0]  # (1, dim, *shape)
    sq = (g * g).sum(1, keepdim=True)
    ref = sq if mask is None else sq[mask > 0]
    eps2 = eta**2 * float(ref.mean()) + 1e-12
    n = g / torch.sqrt(sq + eps2)
    return n if mask is None else n * mask


def fft_search(
    fixed: Image,
    moving: Image,
    spacing_mm: float | None = None,
    max_angle_deg: float = 30.0,
    angle_step_deg: float = 10.0,
    max_translation_mm: float | None = None,
    eta: float = 0.2,
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
) -> RigidTransform:
    """Global rigid search: rotations on a grid of ``angle_step_deg`` within +-``max_angle_deg`` (per
    Euler angle in 3D) and every translation within ``max_translation_mm`` (default: half the larger
    image extent), by FFT cross-correlation of squared NGF on a ``spacing_mm`` grid (default: 1/32 of
    the largest fixed extent). Starts from the geometric centres."""
    dim = fixed.dim
    ext = float(max(fixed.grid.extent.max(), moving.grid.extent.max()))
    s = spacing_mm or max(ext / 32, float(fixed.grid.spacing.min()))
    max_t = max_translation_mm if max_translation_mm is not None else ext / 2
    pad = int(math.ceil(max_t / s))
    base = fixed.grid.with_spacing(s)
    padded = base.crop([-pad] * dim, [n + pad for n in base.size])

    def smooth_onto(img: Image, grid: Grid, transform) -> torch.Tensor:
        sm = img.float().with_data(gaussian_filter(img.float().batch(), sigma_mm_to_vox(s / 2, img.grid))[0])
        return warp(sm, transform, grid, "linear").batch().double()

    f = smooth_onto(fixed, base, None)
    fmask = None if fixed_mask is None else (warp(fixed_mask.float(), None, base).batch() > 0.5).double()
    nf = _edges(f, base, eta, fmask)  # (1, dim, *base.shape)
    # Fixed edges zero-padded onto the padded grid, at the offset of the base grid.
    nf_pad = torch.zeros(1, dim, *padded.shape, dtype=torch.float64)
    sl = (slice(None), slice(None)) + tuple(slice(pad, pad + n) for n in base.shape)
    nf_pad[sl] = nf
    pairs = [(i, j) for i in range(dim) for j in range(i, dim)]
    spatial = tuple(range(2, 2 + dim))

    def products(n: torch.Tensor) -> torch.Tensor:
        return torch.cat([n[:, i:i + 1] * n[:, j:j + 1] * (1.0 if i == j else math.sqrt(2.0)) for i, j in pairs], 1)

    ff = torch.fft.rfftn(products(nf_pad), dim=spatial)
    c_f, c_m = fixed.grid.center(), moving.grid.center()
    best = (-np.inf, np.eye(dim), np.zeros(dim))
    shape = np.asarray(padded.shape)
    for rot in _rotations(dim, max_angle_deg, angle_step_deg):
        rigid = _rigid(fixed, rot, c_m, c_f).requires_grad_(False)
        w = smooth_onto(moving, padded, rigid)
        wmask = None
        if moving_mask is not None:
            wmask = (warp(moving_mask.float(), rigid, padded).batch() > 0.5).double()
        nm = _edges(w, padded, eta, wmask)
        # corr(s) = sum_x nf(x) nm(x + s): FFT(nm) * conj(FFT(nf)), summed over component products.
        corr = torch.fft.irfftn(torch.fft.rfftn(products(nm), dim=spatial) * ff.conj(), s=tuple(padded.shape), dim=spatial)
        corr = corr.sum(1)[0]  # (*padded.shape), index = tensor-order shift (circular)
        # Only shifts within +-pad voxels are meaningful (no wrap-around).
        idx = np.indices(tuple(shape)).reshape(dim, -1).T
        shift_t = np.where(idx > shape // 2, idx - shape, idx)
        valid = (np.abs(shift_t) <= pad).all(1)
        flat = corr.reshape(-1).numpy().copy()
        flat[~valid] = -np.inf
        k = int(np.argmax(flat))
        if flat[k] > best[0]:
            shift_index = shift_t[k][::-1].astype(np.float64)  # ITK order (x first)
            shift_world = padded.direction @ (shift_index * padded.spacing)
            best = (flat[k], rot, rot @ shift_world)
    _, rot, delta = best
    # T(x) = R (x - c_f) + c_f + t0 + R s, where s is the best fixed-frame shift.
    return _rigid(fixed, rot, c_m + delta, c_f)
