"""Every transform model behind one interface (see :class:`Transform`)."""
from morphreg.transforms.base import Transform
from morphreg.transforms.bspline import BSplineTransform, control_grid_for
from morphreg.transforms.composite import AdditiveTransform, CompositeTransform
from morphreg.transforms.dense import (
    DisplacementFieldTransform,
    StationaryVelocityFieldTransform,
    fixed_point_inverse,
    scaling_and_squaring,
)
from morphreg.transforms.io import load_transform, save_transform
from morphreg.transforms.linear import (
    AffineTransform,
    LinearTransform,
    RigidTransform,
    SimilarityTransform,
    TranslationTransform,
)
from morphreg.transforms.tps import ThinPlateSplineTransform
from morphreg.transforms.warp import warp

__all__ = [
    "Transform", "LinearTransform", "TranslationTransform", "RigidTransform", "SimilarityTransform",
    "AffineTransform", "BSplineTransform", "DisplacementFieldTransform", "StationaryVelocityFieldTransform",
    "ThinPlateSplineTransform", "CompositeTransform", "AdditiveTransform", "control_grid_for",
    "fixed_point_inverse", "scaling_and_squaring", "load_transform", "save_transform", "warp",
]
