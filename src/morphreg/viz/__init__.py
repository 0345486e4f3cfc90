"""Headless quality-control pictures (matplotlib Agg) for registrations, 2D and tri-planar 3D."""
from morphreg.viz.figures import (
    checkerboard,
    contours,
    deformed_grid,
    difference,
    flicker_gif,
    histogram_edges,
    jacobian_histogram,
    jacobian_map,
    overlay,
    quiver,
    slice_center,
    to_png,
)

__all__ = ["checkerboard", "contours", "deformed_grid", "difference", "flicker_gif", "histogram_edges",
           "jacobian_histogram", "jacobian_map", "overlay", "quiver", "slice_center", "to_png"]
