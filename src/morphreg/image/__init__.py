"""Images with physical geometry: grids, I/O, intensity helpers, filtering, resampling."""
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.io import from_sitk, read_image, to_sitk, write_image
from morphreg.image.filters import box_filter, gaussian_filter, gaussian_smooth, separable_filter
from morphreg.image.intensity import match_histogram, rescale_intensity, zscore
from morphreg.image.resample import crop, crop_to_mask, pad, resample, resample_to_spacing
from morphreg.image.pyramid import gaussian_pyramid

__all__ = ["Grid", "Image", "read_image", "write_image", "from_sitk", "to_sitk",
           "box_filter", "gaussian_filter", "gaussian_smooth", "separable_filter",
           "match_histogram", "rescale_intensity", "zscore",
           "crop", "crop_to_mask", "pad", "resample", "resample_to_spacing", "gaussian_pyramid"]
