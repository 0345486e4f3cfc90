"""The Grid lives in :mod:`morphreg.core.grid` (the bottom layer, below the sampler); it is imported
here too because an image's geometry is where users look for it."""
from morphreg.core.grid import ORTHONORMAL_TOL, Grid

__all__ = ["Grid", "ORTHONORMAL_TOL"]
