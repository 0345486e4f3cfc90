"""Thin-plate spline from landmark pairs (Bookstein), with a smoothing (approximation) weight."""
from __future__ import annotations

import numpy as np
import torch

from morphreg.errors import MorphregError
from morphreg.transforms.base import Transform, grid_from_dict, grid_to_dict


def tps_kernel(r: torch.Tensor, dim: int) -> torch.Tensor:
    """Radial basis U(r): r^2 log r in 2D, -r in 3D (the biharmonic Green's functions), r in mm."""
    if dim == 2:
        return torch.where(r > 0, r * r * torch.log(r.clamp_min(1e-30)), torch.zeros_like(r))
    return -r


class ThinPlateSplineTransform(Transform):
    """T(x) = A x + b + sum_i w_i U(|x - p_i|) fitted so that T(p_i) ~ q_i.

    Args:
        source: (K, dim) landmarks in the fixed image, world mm.
        target: (K, dim) corresponding landmarks in the moving image, world mm.
        smoothing: lambda >= 0; 0 interpolates exactly, larger values approach the best affine fit.
    """

    def __init__(self, source, target, smoothing: float = 0.0, domain=None):
        super().__init__()
        # Solve from the float32 landmarks that are stored, so that a saved and reloaded spline
        # (rebuilt from them) is exactly the same map.
        p = torch.as_tensor(np.asarray(source, np.float64)).float().double()
        q = torch.as_tensor(np.asarray(target, np.float64)).float().double()
        if p.shape != q.shape or p.dim() != 2 or p.shape[1] not in (2, 3):
            raise MorphregError(f"landmark sets must both be (K, 2|3); got {tuple(p.shape)} and {tuple(q.shape)}")
        k, dim = p.shape
        if k < dim + 1:
            raise MorphregError(f"a thin-plate spline needs at least {dim + 1} landmark pairs, got {k}")
        spread = torch.linalg.svdvals(p - p.mean(0))
        if float(spread[-1]) <= 1e-6 * float(spread[0]):
            # The affine part is then undetermined: the solution would be arbitrary (and not reproducible).
            raise MorphregError(f"the fixed landmarks lie on a {'line' if dim == 2 else 'plane or line'}; a thin-plate "
                                f"spline needs them to span {dim}D")
        self.dim = dim
        self.smoothing = float(smoothing)
        self.domain_grid = domain
        kmat = tps_kernel(torch.cdist(p, p), dim) + self.smoothing * torch.eye(k, dtype=torch.float64)
        pmat = torch.cat([p, torch.ones(k, 1, dtype=torch.float64)], 1)
        system = torch.zeros(k + dim + 1, k + dim + 1, dtype=torch.float64)
        system[:k, :k], system[:k, k:], system[k:, :k] = kmat, pmat, pmat.T
        rhs = torch.cat([q, torch.zeros(dim + 1, dim, dtype=torch.float64)])
        sol = torch.linalg.lstsq(system, rhs).solution
        self.register_buffer("source", p.float())
        self.register_buffer("target", q.float())
        self.register_buffer("weights", sol[:k].float())
        self.register_buffer("affine", sol[k:].float())  # (dim + 1, dim): rows A^T then b

    def domain(self):
        return self.domain_grid

    def points(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.dim)
        out = []
        for chunk in torch.split(flat, 1 << 16):
            u = tps_kernel(torch.cdist(chunk.double(), self.source.double()), self.dim)
            y = u @ self.weights.double() + chunk.double() @ self.affine[: self.dim].double() + self.affine[self.dim].double()
            out.append(y.to(x.dtype))
        return torch.cat(out).reshape(x.shape)

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "source": self.source.tolist(), "target": self.target.tolist(),
                "smoothing": self.smoothing, "domain": grid_to_dict(self.domain_grid)}

    @classmethod
    def from_dict(cls, d):
        return cls(d["source"], d["target"], d["smoothing"], grid_from_dict(d.get("domain")))
