"""Run the peer tools (ANTs via antspyx, elastix via itk-elastix, dipy) and turn each result into
one morphreg fixed -> moving transform, so every tool is evaluated by the same independent code.

Settings follow ../shared/PEERS.md (defaults that reproduce the figures in the issues). Thread
counts must be set before the peers are imported: call :func:`set_threads` first.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from morphreg.image.image import Image
from morphreg.image.io import read_image
from morphreg.transforms import CompositeTransform, DisplacementFieldTransform, Transform, load_transform, warp


def set_threads(n: int) -> None:
    """Same core count for every tool, or the comparison is unfair."""
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    except ImportError:
        pass


@dataclass
class PeerResult:
    tool: str
    transform: Transform          # fixed -> moving, world mm
    seconds: float                # the tool's own registration call, I/O excluded
    warped: np.ndarray | None = None   # the tool's own warped moving image (x, y, z order), for the orientation check
    info: dict = field(default_factory=dict)


def orientation_check(result: PeerResult, fixed: Image, moving: Image) -> float:
    """Correlation of the tool's own warped image with ours through the converted transform (~1.0)."""
    if result.warped is None:
        return float("nan")
    with torch.no_grad():
        ours = warp(moving.float(), result.transform, fixed.grid).data[0].numpy()
    theirs = np.asarray(result.warped, dtype=np.float64)
    if theirs.shape != ours.shape:
        theirs = theirs.transpose(*reversed(range(theirs.ndim)))
    return float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])


# ----- ANTs ---------------------------------------------------------------------------------------
def run_ants(fixed_path: Path, moving_path: Path, type_of_transform: str = "SyN", seed: int | None = None) -> PeerResult:
    import ants

    fixed, moving = ants.image_read(str(fixed_path)), ants.image_read(str(moving_path))
    start = time.perf_counter()
    kwargs = {"random_seed": seed} if seed is not None else {}
    reg = ants.registration(fixed, moving, type_of_transform=type_of_transform, **kwargs)
    seconds = time.perf_counter() - start
    # ANTs lists transforms last-applied-first; morphreg/ITK composites list them in the other order.
    parts = [load_transform(p) for p in reversed(reg["fwdtransforms"])]
    t = parts[0] if len(parts) == 1 else CompositeTransform(parts)
    warped = reg["warpedmovout"].numpy().transpose(*reversed(range(fixed.dimension)))
    return PeerResult(f"ANTs {type_of_transform}", t, seconds, warped)


# ----- elastix ------------------------------------------------------------------------------------
def run_elastix(fixed_path: Path, moving_path: Path, maps: tuple[str, ...] = ("affine", "bspline")) -> PeerResult:
    import itk

    fixed = itk.imread(str(fixed_path), itk.F)
    moving = itk.imread(str(moving_path), itk.F)
    params = itk.ParameterObject.New()
    for name in maps:
        params.AddParameterMap(params.GetDefaultParameterMap(name))
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # elastix/transformix drop files into the working directory
        try:
            start = time.perf_counter()
            warped, result_params = itk.elastix_registration_method(fixed, moving, parameter_object=params,
                                                                    log_to_console=False, output_directory=tmp)
            seconds = time.perf_counter() - start
        finally:
            os.chdir(cwd)
        # Write the chain of TransformParameters files and read it with morphreg's elastix reader.
        n = result_params.GetNumberOfParameterMaps()
        files = []
        for i in range(n):
            pm = {k: list(v) for k, v in dict(result_params.GetParameterMap(i)).items()}
            if i > 0:  # chain each map to the previous one, as elastix itself does
                pm["InitialTransformParametersFileName"] = [files[-1]]
            path = Path(tmp) / f"TransformParameters.{i}.txt"
            path.write_text(_elastix_text(pm), encoding="utf-8")
            files.append(str(path))
        t = load_transform(files[-1])
    return PeerResult("elastix " + "+".join(maps), t, seconds, itk.array_from_image(warped))


def _elastix_text(parameter_map: dict[str, list[str]]) -> str:
    """elastix's parameter-file syntax: (Key v1 v2 ...), non-numbers quoted."""
    def fmt(v: str) -> str:
        try:
            float(v)
            return v
        except ValueError:
            return f'"{v}"'
    return "".join(f"({k} {' '.join(fmt(v) for v in vals)})\n" for k, vals in parameter_map.items())


# ----- dipy ---------------------------------------------------------------------------------------
def run_dipy(fixed_path: Path, moving_path: Path, level_iters=(100, 50, 25), radius: int = 4) -> PeerResult:
    """dipy SyN with CC. dipy works with any consistent voxel->world affine; we hand it morphreg's
    LPS index->world matrices (index order x, y, z) and read the mapping back by warping the moving
    image's world coordinates (linear in space, so linear interpolation returns them exactly)."""
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    fixed, moving = read_image(fixed_path, dtype=torch.float32), read_image(moving_path, dtype=torch.float32)
    f = fixed.data[0].numpy().transpose(*reversed(range(fixed.dim)))
    m = moving.data[0].numpy().transpose(*reversed(range(moving.dim)))
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(fixed.dim, radius=radius), level_iters=list(level_iters))
    start = time.perf_counter()
    mapping = sdr.optimize(f, m, static_grid2world=fixed.grid.index_to_world(), moving_grid2world=moving.grid.index_to_world())
    seconds = time.perf_counter() - start
    coords = moving.grid.points(dtype=torch.float64).numpy()  # (*shape, dim)
    mapped = np.stack([mapping.transform(coords[..., k].transpose(*reversed(range(moving.dim))), interpolation="linear")
                       for k in range(moving.dim)], axis=0)  # (dim, x, y, z) on the fixed grid
    mapped = mapped.transpose(0, *reversed(range(1, moving.dim + 1)))  # -> (dim, z, y, x)
    disp = torch.from_numpy(mapped).float() - torch.movedim(fixed.grid.points(dtype=torch.float32), -1, 0)
    t = DisplacementFieldTransform(disp[None], fixed.grid)
    return PeerResult("dipy SyN CC", t, seconds, mapping.transform(m, interpolation="linear"))
