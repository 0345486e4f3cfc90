"""Images with physical geometry: grids, I/O, intensity helpers, filtering, resampling."""
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.io import from_sitk, read_image, to_sitk, write_image

__all__ = ["Grid", "Image", "read_image", "write_image", "from_sitk", "to_sitk"]
