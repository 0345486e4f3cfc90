"""Basic commands: info, apply, demo. The engine (torch, SimpleITK) is imported inside each command,
so that ``morphreg --help`` starts in a fraction of a second."""
from __future__ import annotations

import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from morphreg.core.files import check_output_file, output_folder
from morphreg.errors import MorphregError

console = Console()


class Interpolation(str, Enum):
    nearest = "nearest"
    linear = "linear"
    bspline = "bspline"
    label = "label"


LABELS_OPTION_HELP = ("Say whether IMAGE is a label map (--labels: integer values kept, nearest/label "
                      "interpolation) or an intensity image (--intensity); default: a label map only when its "
                      "data are integer with at most 1000 values and its name says label/seg/mask/atlas/...")


def info_cmd(
    image: Path = typer.Argument(..., help="Image file (NIfTI, MHA/MHD, NRRD) or DICOM series folder."),
    labels: bool = typer.Option(None, "--labels/--intensity", help=LABELS_OPTION_HELP),
) -> None:
    """Show an image's geometry (origin, spacing, direction in LPS mm), intensity range and labels."""
    import torch
    from rich.table import Table

    from morphreg.image.io import looks_like_labels, nonfinite_voxels, read_image
    img = read_image(image, check_finite=False, labels=True)  # as stored: the dtype shown is the file's
    is_labels = looks_like_labels(img, Path(image)) if labels is None else labels
    data = img.data
    table = Table(title=str(image), show_header=False)
    table.add_row("dimension", f"{img.dim}D, {img.channels} channel(s), dtype {str(data.dtype).replace('torch.', '')}")
    table.add_row("size (x, y, z)", " x ".join(map(str, img.grid.size)))
    table.add_row("spacing (mm)", ", ".join(f"{v:.4g}" for v in img.spacing))
    table.add_row("origin (mm, LPS)", ", ".join(f"{v:.4g}" for v in img.origin))
    table.add_row("direction", "\n".join(" ".join(f"{v:+.4f}" for v in row) for row in img.direction))
    table.add_row("extent (mm)", ", ".join(f"{v:.4g}" for v in img.grid.extent))
    finite = torch.isfinite(data) if data.is_floating_point() else torch.ones_like(data, dtype=torch.bool)
    nonfinite = nonfinite_voxels(image, img)
    if nonfinite:
        table.add_row("[red]non-finite voxels[/]", f"{nonfinite} (NaN/inf{', read as 0' if bool(finite.all()) else ''})")
    vals = data[finite].double()
    table.add_row("intensity", f"min {vals.min():.6g}, max {vals.max():.6g}, mean {vals.mean():.6g}")
    how = "as given" if labels is not None else "integer, few values, named so" if is_labels else "default"
    table.add_row("kind", f"{'label map' if is_labels else 'intensity image'} ({how})")
    if is_labels and img.channels == 1:
        values = img.labels()
        shown = ", ".join(map(str, values[:40])) + (" ..." if len(values) > 40 else "")
        table.add_row("labels", f"{len(values)} non-zero: {shown}")
    console.print(table)


def apply_cmd(
    transform: Path = typer.Argument(..., help="Transform (fixed -> moving): .pt, ITK .tfm/.txt/.h5/.mat, elastix "
                                    "TransformParameters, or displacement-field image."),
    image: Path = typer.Argument(..., help="The moving image to resample."),
    reference: Path = typer.Option(..., "--reference", "-r", help="Image whose grid the output is sampled on (the fixed image)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output image file."),
    interpolation: Interpolation = typer.Option(None, "--interpolation", "-i", help="Default: linear, or nearest for label maps."),
    fill_value: float = typer.Option(0.0, "--fill-value", help="Value outside the moving image."),
    labels: bool = typer.Option(None, "--labels/--intensity", help=LABELS_OPTION_HELP + "; -i linear/bspline "
                                "imply --intensity, -i label implies --labels."),
) -> None:
    """Resample IMAGE onto the REFERENCE grid through TRANSFORM (backward mapping, world mm).
    Intensity images come out as float32 (integer ones too, like ANTs' default); label maps keep their
    integer type."""
    import torch

    from morphreg.image.io import read_image, write_image
    from morphreg.transforms.io import load_transform
    from morphreg.transforms.warp import warp

    check_output_file(output, [transform, image, reference])
    if labels is None and interpolation is not None and interpolation != Interpolation.nearest:
        labels = interpolation == Interpolation.label
    moving = read_image(image, labels=labels)
    if labels is None and moving.is_label:
        console.print(f"note: {image} read as a label map (integer, few values, named so): nearest-neighbour, integer "
                      "output; pass --intensity to interpolate it", highlight=False)
    ref = read_image(reference, check_finite=False)
    t = load_transform(transform)
    if t.dim != moving.dim:
        raise MorphregError(f"transform is {t.dim}D but the image {image} is {moving.dim}D", transform)
    if ref.dim != moving.dim:
        raise MorphregError(f"reference is {ref.dim}D but the image {image} is {moving.dim}D", reference)
    start = time.perf_counter()
    with torch.no_grad():
        out = warp(moving, t, ref.grid, interpolation.value if interpolation else None, fill_value)
    write_image(out, output, inputs=[transform, image, reference])
    console.print(f"wrote {output} ({' x '.join(map(str, ref.grid.size))}) in {time.perf_counter() - start:.2f} s")


# Short schedule of the demo (every stage): [shrink, sigma_mm (None = shrink / 2 voxels), iterations].
DEMO_LEVELS = [[4, None, 40], [2, None, 30], [1, 0.0, 15]]


def demo_cmd(
    output: Path = typer.Option(Path("morphreg-demo"), "--output", "-o", help="Folder to write the phantom pair and results to."),
    dim: int = typer.Option(3, "--dim", help="2 or 3."),
    size: int = typer.Option(32, "--size", help="Voxels per axis."),
    seed: int = typer.Option(0, "--seed"),
    preset: str = typer.Option("default", "--preset", "-p", help="Registration preset run on the pair."),
    full: bool = typer.Option(False, "--full", help="Use the preset's own iteration schedule (default: a short "
                              "one, so the demo takes well under a minute)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder that is not a morphreg "
                                   "result (files of the same name are replaced, the others kept)."),
) -> None:
    """Make a synthetic phantom pair with a known rigid + smooth deformation, register it with the
    default method, and show how well the known transform was recovered."""
    import numpy as np
    import torch
    from rich.table import Table

    from morphreg.image.io import write_image
    from morphreg.transforms.warp import warp
    from morphreg.data.phantom import make_phantom_pair
    from morphreg.evaluate import dice
    from morphreg.register import register

    if dim not in (2, 3):
        raise MorphregError(f"--dim must be 2 or 3, got {dim}")
    if size < 16:
        raise MorphregError(f"--size must be at least 16 voxels, got {size}")
    with output_folder(output, overwrite=overwrite) as folder:  # checked and locked before the work starts
        torch.manual_seed(seed)
        pair = make_phantom_pair(dim=dim, size=size, spacing=48.0 / size, seed=seed)  # a 48 mm phantom at any size
        start = time.perf_counter()
        overrides = {} if full else {"levels": DEMO_LEVELS}
        result = register(pair.fixed, pair.moving, preset, seed=seed, progress=not quiet, **overrides)
        elapsed = time.perf_counter() - start
        grid = pair.fixed.grid
        with torch.no_grad():
            # Recovery error inside the body: at the grid edge the known field is cut off (identity outside).
            body = pair.fixed_labels.data[0] > 0
            x = grid.points()[body]
            truth = pair.true_transform.points(x)
            epe = (result.transform.points(x) - truth).norm(dim=-1)
            epe0 = (x - truth).norm(dim=-1)
            warped_labels = warp(pair.moving_labels, result.transform, grid, "label")
        fl, ml, wl = (im.data[0].numpy() for im in (pair.fixed_labels, pair.moving_labels, warped_labels))
        values = [v for v in np.unique(fl) if v != 0]
        dice_before = float(np.mean([dice(fl == v, ml == v) for v in values]))
        dice_after = float(np.mean([dice(fl == v, wl == v) for v in values]))
        write_image(pair.fixed, folder / "fixed.nii.gz")
        write_image(pair.moving, folder / "moving.nii.gz")
        write_image(pair.fixed_labels, folder / "fixed_labels.nii.gz")
        write_image(pair.moving_labels, folder / "moving_labels.nii.gz")
        pair.true_transform.save(folder / "true_transform.pt")
        pair.true_transform.save(folder / "true_transform.h5")
        (folder / "result").mkdir()
        result.write(folder / "result")
        write_image(warped_labels, folder / "result" / "warped_labels.nii.gz")
    voxel = float(np.mean(grid.spacing))
    table = Table(title=f"morphreg demo: {dim}D phantom {size}^{dim} ({voxel:g} mm voxels), known rigid + smooth "
                        f"deformation, preset {result.preset!r}")
    table.add_column("check")
    table.add_column("before", justify="right")
    table.add_column("after registration", justify="right")
    table.add_row("endpoint error in the body, mean (mm)", f"{epe0.mean():.3f}", f"{epe.mean():.3f}")
    table.add_row("endpoint error in the body, max (mm)", f"{epe0.max():.3f}", f"{epe.max():.3f}")
    table.add_row(f"label Dice, mean over {len(values)} labels", f"{dice_before:.3f}", f"{dice_after:.3f}")
    table.add_row("folding (% voxels with det J <= 0)", "", f"{result.folding_percent:.3f}")
    table.add_row("time: registration / total (s)", "", f"{elapsed:.1f} / {result.timings.get('total_s', elapsed):.1f}")
    console.print(table)
    console.print(f"wrote {output}/ (fixed, moving, labels, true_transform.pt/.h5, result/: warped, transform.h5, "
                  "displacement, summary.json, warped_labels)", highlight=False)
