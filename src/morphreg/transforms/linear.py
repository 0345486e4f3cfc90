"""Linear transforms: y = A (x - c) + c + t, the form of ITK's MatrixOffsetTransformBase.

c is the centre of rotation (mm, fixed), t the translation (mm); A is built from the parameters.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from morphreg.image.grid import Grid
from morphreg.transforms.base import Transform


def rotation_2d(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])


def rotation_euler_zyx(angles: torch.Tensor) -> torch.Tensor:
    """R = Rz(gamma) Ry(beta) Rx(alpha) for angles (alpha, beta, gamma) in radians."""
    a, b, g = angles[0], angles[1], angles[2]
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rx = torch.stack([torch.stack([one, zero, zero]), torch.stack([zero, a.cos(), -a.sin()]), torch.stack([zero, a.sin(), a.cos()])])
    ry = torch.stack([torch.stack([b.cos(), zero, b.sin()]), torch.stack([zero, one, zero]), torch.stack([-b.sin(), zero, b.cos()])])
    rz = torch.stack([torch.stack([g.cos(), -g.sin(), zero]), torch.stack([g.sin(), g.cos(), zero]), torch.stack([zero, zero, one])])
    return rz @ ry @ rx


def rotation_axis_angle(v: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation by |v| radians about v / |v| (smooth at v = 0)."""
    theta2 = (v * v).sum()
    theta = torch.sqrt(theta2 + 1e-30)
    k = torch.stack([torch.stack([0 * v[0], -v[2], v[1]]), torch.stack([v[2], 0 * v[0], -v[0]]), torch.stack([-v[1], v[0], 0 * v[0]])])
    # sin(t)/t and (1-cos t)/t^2 with Taylor fallbacks near 0 keep gradients finite.
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-30))
    return torch.eye(3, dtype=v.dtype, device=v.device) + a * k + b * (k @ k)


def _parameter_values(value, default: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """float32 tensor of ``shape`` from ``value`` (array-like, read in float64), or ``default`` when None."""
    return torch.as_tensor(default if value is None else np.asarray(value, np.float64)).float().reshape(shape)


class LinearTransform(Transform):
    """Base of all linear models. Subclasses implement :meth:`matrix`."""

    linear = True

    def __init__(self, dim: int, center=None, translation=None):
        super().__init__()
        self.dim = dim
        self.register_buffer("center", _parameter_values(center, np.zeros(dim), (dim,)))
        self.translation = nn.Parameter(_parameter_values(translation, np.zeros(dim), (dim,)))

    def matrix(self) -> torch.Tensor:
        raise NotImplementedError

    def offset(self) -> torch.Tensor:
        """o in y = A x + o."""
        a = self.matrix()
        return self.center + self.translation - a @ self.center

    def homogeneous(self) -> torch.Tensor:
        """(dim+1, dim+1) matrix of the map in world mm."""
        m = torch.eye(self.dim + 1, dtype=self.translation.dtype, device=self.translation.device)
        m[: self.dim, : self.dim] = self.matrix()
        m[: self.dim, self.dim] = self.offset()
        return m

    def points(self, x: torch.Tensor) -> torch.Tensor:
        a = self.matrix().to(x.dtype)
        return x @ a.T + self.offset().to(x.dtype)

    def jacobian(self, grid: Grid, dtype=torch.float32, device=None) -> torch.Tensor:
        a = self.matrix().to(dtype=dtype, device=device)
        return a.expand(1, *grid.shape, self.dim, self.dim)

    def inverse(self, grid: Grid | None = None, **_) -> AffineTransform:
        """Closed form: x = A^-1 (y - c - t) + c, expressed about the same centre."""
        a = self.matrix().detach().double()
        a_inv = torch.linalg.inv(a)
        t = self.translation.detach().double()
        return AffineTransform(self.dim, matrix=a_inv.numpy(), translation=(-a_inv @ t).numpy(), center=self.center.numpy())

    def compose(self, other: Transform) -> Transform:
        if isinstance(other, LinearTransform):
            m = self.homogeneous().detach().double() @ other.homogeneous().detach().double()
            return AffineTransform(self.dim, matrix=m[: self.dim, : self.dim].numpy(), translation=m[: self.dim, self.dim].numpy())
        return super().compose(other)

    def to_affine(self) -> AffineTransform:
        """Same map as a general affine about the same centre."""
        return AffineTransform(self.dim, matrix=self.matrix().detach().double().numpy(),
                               translation=self.translation.detach().double().numpy(), center=self.center.numpy())

    def _base_dict(self) -> dict:
        return {"type": type(self).__name__, "dim": self.dim, "center": self.center.tolist(),
                "translation": self.translation.detach().tolist()}


class TranslationTransform(LinearTransform):
    """y = x + t."""

    def matrix(self) -> torch.Tensor:
        return torch.eye(self.dim, dtype=self.translation.dtype, device=self.translation.device)

    def to_dict(self) -> dict:
        return self._base_dict()

    @classmethod
    def from_dict(cls, d):
        return cls(d["dim"], center=d["center"], translation=d["translation"])


class RigidTransform(LinearTransform):
    """Rotation about ``center`` then translation.

    2D: one angle (rad). 3D: ``rotation="euler"`` with angles (alpha, beta, gamma) and R = Rz Ry Rx,
    or ``rotation="versor"``: axis-angle vector (rad), which has no gimbal lock.
    """

    def __init__(self, dim: int, angles=None, translation=None, center=None, rotation: str = "euler"):
        super().__init__(dim, center, translation)
        if rotation not in ("euler", "versor"):
            raise ValueError(f"rotation must be 'euler' or 'versor', got {rotation!r}")
        self.rotation = rotation
        n = 1 if dim == 2 else 3
        self.angles = nn.Parameter(_parameter_values(angles, np.zeros(n), (n,)))

    def rotation_matrix(self) -> torch.Tensor:
        if self.dim == 2:
            return rotation_2d(self.angles[0])
        return rotation_euler_zyx(self.angles) if self.rotation == "euler" else rotation_axis_angle(self.angles)

    def matrix(self) -> torch.Tensor:
        return self.rotation_matrix()

    def to_dict(self) -> dict:
        return {**self._base_dict(), "angles": self.angles.detach().tolist(), "rotation": self.rotation}

    @classmethod
    def from_dict(cls, d):
        return cls(d["dim"], d["angles"], d["translation"], d["center"], d.get("rotation", "euler"))


class SimilarityTransform(RigidTransform):
    """Rigid plus isotropic scale s > 0 (parameterised as log s so it stays positive)."""

    def __init__(self, dim: int, angles=None, translation=None, center=None, scale: float = 1.0, rotation: str = "euler"):
        super().__init__(dim, angles, translation, center, rotation)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale), dtype=torch.float32))

    def matrix(self) -> torch.Tensor:
        return torch.exp(self.log_scale) * self.rotation_matrix()

    def to_dict(self) -> dict:
        # log_scale is stored as is: exp then log would not give back the same float32.
        return {**super().to_dict(), "scale": float(torch.exp(self.log_scale.detach())), "log_scale": float(self.log_scale.detach())}

    @classmethod
    def from_dict(cls, d):
        t = cls(d["dim"], d["angles"], d["translation"], d["center"], d["scale"], d.get("rotation", "euler"))
        if "log_scale" in d:
            with torch.no_grad():
                t.log_scale.fill_(d["log_scale"])
        return t


class AffineTransform(LinearTransform):
    """General affine. ``parameterization="matrix"`` optimises A directly; ``"decomposed"`` uses
    A = Shear * Scale * Rotation (upper-triangular unit shear, log scales, rotation as in RigidTransform)."""

    def __init__(self, dim: int, matrix=None, translation=None, center=None, parameterization: str = "matrix",
                 angles=None, log_scales=None, shears=None):
        super().__init__(dim, center, translation)
        self.parameterization = parameterization
        if parameterization == "matrix":
            self.matrix_ = nn.Parameter(_parameter_values(matrix, np.eye(dim), (dim, dim)))
        elif parameterization == "decomposed":
            if matrix is not None:
                raise ValueError("give angles/log_scales/shears with parameterization='decomposed', not a matrix")
            n_rot, n_shear = (1, 1) if dim == 2 else (3, 3)
            self.angles = nn.Parameter(_parameter_values(angles, np.zeros(n_rot), (n_rot,)))
            self.log_scales = nn.Parameter(_parameter_values(log_scales, np.zeros(dim), (dim,)))
            self.shears = nn.Parameter(_parameter_values(shears, np.zeros(n_shear), (n_shear,)))
        else:
            raise ValueError(f"parameterization must be 'matrix' or 'decomposed', got {parameterization!r}")

    def matrix(self) -> torch.Tensor:
        if self.parameterization == "matrix":
            return self.matrix_
        rot = rotation_2d(self.angles[0]) if self.dim == 2 else rotation_euler_zyx(self.angles)
        shear = torch.eye(self.dim, dtype=self.shears.dtype, device=self.shears.device)
        iu = torch.triu_indices(self.dim, self.dim, offset=1)
        shear = shear.index_put((iu[0], iu[1]), self.shears)
        return shear @ torch.diag(torch.exp(self.log_scales)) @ rot

    def to_dict(self) -> dict:
        d = {**self._base_dict(), "parameterization": self.parameterization}
        if self.parameterization == "matrix":
            d["matrix"] = self.matrix_.detach().tolist()
        else:
            d.update(angles=self.angles.detach().tolist(), log_scales=self.log_scales.detach().tolist(),
                     shears=self.shears.detach().tolist())
        return d

    @classmethod
    def from_dict(cls, d):
        if d.get("parameterization", "matrix") == "matrix":
            return cls(d["dim"], d["matrix"], d["translation"], d["center"])
        return cls(d["dim"], None, d["translation"], d["center"], "decomposed", d["angles"], d["log_scales"], d["shears"])


def rotation_angles_from_matrix(a: np.ndarray, dim: int) -> np.ndarray:
    """Rotation angles of the rotation closest to ``a`` (polar decomposition); R = Rz Ry Rx in 3D."""
    u, _, vt = np.linalg.svd(a)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    if dim == 2:
        return np.array([np.arctan2(r[1, 0], r[0, 0])])
    beta = np.arcsin(-np.clip(r[2, 0], -1, 1))
    alpha = np.arctan2(r[2, 1], r[2, 2])
    gamma = np.arctan2(r[1, 0], r[0, 0])
    return np.array([alpha, beta, gamma])
