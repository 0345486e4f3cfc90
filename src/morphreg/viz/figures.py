"""Quality-control pictures (matplotlib, headless Agg): 2D, or tri-planar for 3D.

Every function takes images that share one grid (the fixed grid) and returns a matplotlib Figure;
:func:`to_png` renders it. Views are shown in radiological convention (patient's right on the
left of the screen), in mm, with the orientation letters at the borders.
"""
from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap, TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from morphreg.errors import MorphregError  # noqa: E402
from morphreg.image.grid import Grid  # noqa: E402
from morphreg.image.image import Image  # noqa: E402
from morphreg.viz.orient import Plane, lps_array, planes  # noqa: E402

LABEL_COLOURS = {"fixed": "#00d000", "moving": "#ff2020", "warped": "#ffe000"}
DPI = 80
FOLD_CMAP = ListedColormap(["#000000"])


def _array(x, grid: Grid) -> np.ndarray:
    if isinstance(x, Image):
        if not x.grid.same_as(grid):
            raise MorphregError("pictures need all images on the same (fixed) grid", x.name)
        x = x.data
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _intensity(x, grid: Grid) -> np.ndarray:
    """Channel 0 in LPS display order, windowed to [0, 1] by the 1st-99th percentiles."""
    a = _array(x, grid)
    a = a[0] if a.ndim == grid.dim + 1 else a
    a = lps_array(a.astype(np.float64), grid)[0]
    lo, hi = np.percentile(a, [1, 99])
    return np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)


def _masks(labels, grid: Grid) -> list[np.ndarray]:
    """One bool mask per structure (channel or label value), LPS display order."""
    a = _array(labels, grid)
    if a.ndim == grid.dim:
        a = a[None]
    if a.shape[0] > 1:
        ms = [a[k] != 0 for k in range(a.shape[0])]
    else:
        ms = [a[0] == v for v in np.unique(a[0]) if v != 0]
    return [lps_array(m, grid)[0] for m in ms]


def slice_center(grid: Grid, labels=None) -> np.ndarray | None:
    """LPS-ordered index (x, y, z) of the centroid of the first structure of ``labels`` (or None =
    the middle of the grid), so the planes cut through the anatomy of interest."""
    if labels is None or grid.dim == 2:
        return None
    ms = _masks(labels, grid)
    ms = [m for m in ms if m.any()]
    if not ms:
        return None
    return np.argwhere(ms[0]).mean(0)[::-1]


def _layout(grid: Grid, rows: list[str], center, title: str, extra_width: float = 0.0):
    spacing = lps_array(np.zeros(grid.shape, bool), grid)[1]
    shape = lps_array(np.zeros(grid.shape, bool), grid)[0].shape
    ps = planes(shape, spacing, center)
    ncol = len(ps)
    width = 3.4 * ncol + extra_width
    # Bold 12 pt text is ~0.11 inch a character: a long title on a one-column (2D) figure is wrapped,
    # not clipped at the figure's edge.
    lines = textwrap.wrap(title, max(20, int(width / 0.11)))
    fig = Figure(figsize=(width, 3.3 * len(rows) + 0.3 + 0.2 * len(lines)), dpi=DPI, layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), ncol, squeeze=False))
    fig.suptitle("\n".join(lines), fontsize=12, fontweight="bold")
    for r, row in enumerate(rows):
        for c, p in enumerate(ps):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{row} - {p.name}" if row else p.name, fontsize=9)
            _letters(ax, p)
    return fig, axes, ps, spacing


def _letters(ax, p: Plane) -> None:
    kw = dict(transform=ax.transAxes, color="#ffa500", fontsize=8, fontweight="bold", ha="center", va="center")
    ax.text(0.03, 0.5, p.letters[0], **kw)
    ax.text(0.97, 0.5, p.letters[1], **kw)
    ax.text(0.5, 0.96, p.letters[2], **kw)
    ax.text(0.5, 0.04, p.letters[3], **kw)


def _show(ax, p: Plane, img2d: np.ndarray, **kw):
    return ax.imshow(img2d, extent=p.extent, origin=p.origin, interpolation="nearest", **kw)


def to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _pairs(fixed, warped, before) -> list[tuple[str, object]]:
    return ([("before", before)] if before is not None else []) + [("after", warped)]


def checkerboard(fixed: Image, warped: Image, before: Image | None = None, squares: int = 8, center=None) -> Figure:
    """Alternating squares of fixed and (before: unregistered, after: warped) moving image."""
    g = fixed.grid
    f = _intensity(fixed, g)
    pairs = _pairs(fixed, warped, before)
    fig, axes, ps, spacing = _layout(g, [n for n, _ in pairs], center, "Checkerboard: fixed / moving")
    for r, (_, m) in enumerate(pairs):
        mv = _intensity(m, g)
        for c, p in enumerate(ps):
            a, b = p.take(f), p.take(mv)
            ii, jj = np.indices(a.shape)
            board = ((ii * squares // a.shape[0]) + (jj * squares // a.shape[1])) % 2 == 0
            _show(axes[r, c], p, np.where(board, a, b), cmap="gray", vmin=0, vmax=1)
    return fig


def difference(fixed: Image, warped: Image, before: Image | None = None, center=None) -> Figure:
    """Fixed minus moving (windowed intensities): grey = agreement (only meaningful for one modality)."""
    g = fixed.grid
    f = _intensity(fixed, g)
    pairs = _pairs(fixed, warped, before)
    fig, axes, ps, _ = _layout(g, [n for n, _ in pairs], center, "Difference: fixed - moving (windowed)", 0.6)
    im = None
    for r, (_, m) in enumerate(pairs):
        d = f - _intensity(m, g)
        for c, p in enumerate(ps):
            im = _show(axes[r, c], p, p.take(d), cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="fixed - moving")
    return fig


def overlay(fixed: Image, warped: Image, before: Image | None = None, center=None) -> Figure:
    """Colour fusion: fixed in magenta, moving in green; aligned structures look grey/white."""
    g = fixed.grid
    f = _intensity(fixed, g)
    pairs = _pairs(fixed, warped, before)
    fig, axes, ps, _ = _layout(g, [n for n, _ in pairs], center, "Colour overlay: fixed (magenta) / moving (green)")
    for r, (_, m) in enumerate(pairs):
        mv = _intensity(m, g)
        for c, p in enumerate(ps):
            a, b = p.take(f), p.take(mv)
            _show(axes[r, c], p, np.stack([a, b, a], axis=-1))
    return fig


def contours(background: Image, fixed_labels, warped_labels=None, moving_labels=None, center=None) -> Figure:
    """Label outlines on the fixed image: fixed green, moving (unregistered) red, warped moving yellow."""
    g = background.grid
    f = _intensity(background, g)
    layers = [("fixed", fixed_labels), ("moving", moving_labels), ("warped", warped_labels)]
    layers = [(n, _masks(x, g)) for n, x in layers if x is not None]
    fig, axes, ps, spacing = _layout(g, [""], center, "Label contours: fixed (green), moving (red), warped (yellow)")
    for c, p in enumerate(ps):
        ax = axes[0, c]
        _show(ax, p, p.take(f), cmap="gray", vmin=0, vmax=1)
        for name, masks in layers:
            for m in masks:
                cut = p.take(m).astype(float)
                if cut.any() and cut.min() != cut.max():
                    hh, vv = p.coords(cut.shape, spacing)
                    ax.contour(hh, vv, cut, levels=[0.5], colors=LABEL_COLOURS[name], linewidths=1.4)
    return fig


def _field(displacement, grid: Grid) -> np.ndarray:
    u = _array(displacement, grid)
    if u.ndim == grid.dim + 2:
        u = u[0]
    if u.shape[0] != grid.dim:
        raise MorphregError(f"displacement field must be (dim, *shape), got {u.shape}")
    return lps_array(u.astype(np.float64), grid)[0]


def deformed_grid(displacement, grid: Grid, background: Image | None = None, step: int | None = None, center=None) -> Figure:
    """Lines of the fixed grid moved by the in-plane displacement (x -> x + u(x), mm)."""
    u = _field(displacement, grid)
    bg = _intensity(background, grid) if background is not None else None
    fig, axes, ps, spacing = _layout(grid, [""], center, "Deformed grid (fixed -> moving)")
    for c, p in enumerate(ps):
        ax = axes[0, c]
        uh, uv = p.take(u[p.h]), p.take(u[p.v])
        hh, vv = p.coords(uh.shape, spacing)
        if bg is not None:
            _show(ax, p, p.take(bg), cmap="gray", vmin=0, vmax=1, alpha=0.6)
        else:
            _show(ax, p, np.ones_like(uh), cmap="gray", vmin=0, vmax=1)
        k = step or max(1, min(uh.shape) // 16)
        x, y = hh + uh, vv + uv
        for i in range(0, uh.shape[0], k):
            ax.plot(x[i, :], y[i, :], color="#1f77b4", lw=0.8)
        for j in range(0, uh.shape[1], k):
            ax.plot(x[:, j], y[:, j], color="#1f77b4", lw=0.8)
        ax.set_xlim(p.extent[0], p.extent[1])
        ax.set_ylim(p.extent[2], p.extent[3])
    return fig


def quiver(displacement, grid: Grid, background: Image | None = None, step: int | None = None, center=None) -> Figure:
    """In-plane displacement arrows (true length in mm), coloured by the full 3D magnitude."""
    u = _field(displacement, grid)
    mag = np.sqrt((u**2).sum(0))
    bg = _intensity(background, grid) if background is not None else None
    fig, axes, ps, spacing = _layout(grid, [""], center, "Displacement (arrows to scale, colour = |u| mm)", 0.6)
    q = None
    for c, p in enumerate(ps):
        ax = axes[0, c]
        uh, uv, m = p.take(u[p.h]), p.take(u[p.v]), p.take(mag)
        hh, vv = p.coords(uh.shape, spacing)
        if bg is not None:
            _show(ax, p, p.take(bg), cmap="gray", vmin=0, vmax=1)
        k = step or max(1, min(uh.shape) // 14)
        s = (slice(k // 2, None, k), slice(k // 2, None, k))
        q = ax.quiver(hh[s], vv[s], uh[s], uv[s], m[s], angles="xy", scale_units="xy", scale=1.0, cmap="viridis",
                      clim=(0, max(float(mag.max()), 1e-6)), width=0.006)
        ax.set_xlim(p.extent[0], p.extent[1])
        ax.set_ylim(p.extent[2], p.extent[3])
    fig.colorbar(q, ax=axes.ravel().tolist(), shrink=0.6, label="|u| (mm)")
    return fig


def jacobian_map(det_j, grid: Grid, center=None) -> Figure:
    """det J colour map (blue: contraction, white: 1, red: expansion); folding (det J <= 0) in black."""
    d = lps_array(np.asarray(det_j, np.float64), grid)[0]
    folded = np.ma.masked_where(d > 0, np.ones_like(d))
    hi = max(2.0, float(np.nanpercentile(d, 99.5)))
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=hi)
    n_fold = int((d <= 0).sum())
    title = f"Jacobian determinant (black = folding, {n_fold} voxels)"
    fig, axes, ps, _ = _layout(grid, [""], center, title, 0.6)
    im = None
    for c, p in enumerate(ps):
        im = _show(axes[0, c], p, p.take(d), cmap="RdBu_r", norm=norm)
        _show(axes[0, c], p, p.take(folded), cmap=FOLD_CMAP, vmin=0, vmax=1)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="det J")
    return fig


def histogram_edges(values: np.ndarray, width: float = 0.01) -> np.ndarray:
    """Bin edges of width ``width`` on multiples of ``width`` covering all finite values."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    lo = np.floor(v.min() / width) if v.size else 0.0
    hi = np.floor(v.max() / width) + 1 if v.size else 1.0
    return np.arange(lo, hi + 1) * width


def jacobian_histogram(det_j, mask: np.ndarray | None = None, width: float = 0.01) -> Figure:
    """Histogram of det J (bin width 0.01) with the folding share; red bins are det J <= 0."""
    d = np.asarray(det_j, np.float64)
    v = d[mask] if mask is not None else d.ravel()
    v = v[np.isfinite(v)]
    edges = histogram_edges(v, width)
    counts, _ = np.histogram(v, edges)
    fig = Figure(figsize=(7.5, 3.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    colours = np.where(edges[:-1] < 0 + 1e-12, "#d62728", "#4c72b0")
    ax.bar(edges[:-1], counts, width=width, align="edge", color=colours, linewidth=0)
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.axvline(0.0, color="#d62728", lw=0.8)
    fold = 100.0 * (v <= 0).sum() / max(v.size, 1)
    ax.set_title(f"det J histogram (bin width {width}); folding {fold:.3g}% of {v.size} voxels", fontsize=10)
    ax.set_xlabel("det J")
    ax.set_ylabel("voxels")
    ax.set_yscale("log" if counts.max(initial=0) > 100 else "linear")
    return fig


def flicker_gif(fixed: Image, warped: Image, center=None, duration_ms: int = 700) -> bytes:
    """Animated GIF alternating fixed and warped moving image (same planes, same window)."""
    from PIL import Image as PILImage

    frames = []
    for name, img in (("fixed", fixed), ("warped moving", warped)):
        fig, axes, ps, _ = _layout(fixed.grid, [name], center, f"Flicker: {name}")
        a = _intensity(img, fixed.grid)
        for c, p in enumerate(ps):
            _show(axes[0, c], p, p.take(a), cmap="gray", vmin=0, vmax=1)
        frames.append(PILImage.open(io.BytesIO(to_png(fig))).convert("RGB").convert("P", palette=PILImage.ADAPTIVE))
        plt.close("all")
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return buf.getvalue()
