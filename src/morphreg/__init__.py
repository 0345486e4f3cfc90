"""morphreg: medical image registration in PyTorch, in physical space."""
from morphreg.errors import MorphregError
from morphreg.image import Grid, Image, read_image, write_image
from morphreg.transforms import load_transform, warp

__version__ = "0.1.0"
__all__ = ["MorphregError", "Grid", "Image", "read_image", "write_image", "load_transform", "warp"]
