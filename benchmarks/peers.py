"""Run the peer tools (ANTs via antspyx, elastix via itk-elastix, dipy, FireANTs in its own venv,
NiftyReg) and turn each result into one morphreg fixed -> moving transform, so every tool is
evaluated by the same independent code.

Settings follow ../shared/PEERS.md (defaults that reproduce the figures in the issues). Thread
counts must be set before the peers are imported: call :func:`set_threads` first.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
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


# ----- FireANTs (own venv) ------------------------------------------------------------------------
FIREANTS_VENV = Path("/work/venvs/fireants")
FIREANTS_RUNNER = Path(__file__).with_name("fireants_runner.py")


def fireants_python(python: str | os.PathLike | None = None) -> Path:
    """The FireANTs venv's interpreter: ``python`` argument, else $FIREANTS_PYTHON (an interpreter or
    a venv folder), else /work/venvs/fireants. FireANTs pins SimpleITK 2.2.1, so it never shares the
    project's environment."""
    p = Path(python or os.environ.get("FIREANTS_PYTHON") or FIREANTS_VENV)
    if p.is_dir():
        p = p / "bin" / "python"
    if not p.exists():
        raise RuntimeError(f"FireANTs python not found at {p}: create the venv (python -m venv /work/venvs/fireants; "
                           "pip install torch==2.13.0 (CPU wheel first), then fireants==1.5.0) or set FIREANTS_PYTHON")
    return p


def run_fireants(fixed_path: Path, moving_path: Path, threads: int | None = None, params: dict | None = None,
                 python: str | os.PathLike | None = None) -> PeerResult:
    """FireANTs 1.5.0 tutorial pipeline on the CPU (moments -> affine -> Greedy; settings in
    fireants_runner.py, overridable through ``params``), run as a subprocess in its own venv.

    The runner writes FireANTs' own ANTs-format export (displacement u = T(x) - x on the fixed grid,
    ITK LPS world mm, T: fixed -> moving, affine folded in), read here as a displacement-field
    transform. ``seconds`` is the registration calls only (reported by the runner; process start,
    imports and I/O excluded); the whole subprocess wall time is in ``info["process_s"]``."""
    threads = int(threads or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                     "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")}}
    env.pop("PYTHONPATH", None)  # keep the project's site-packages out of the FireANTs interpreter
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(fireants_python(python)), str(FIREANTS_RUNNER), str(fixed_path), str(moving_path), tmp,
               "--threads", str(threads), "--params", json.dumps(params or {})]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, cwd=tmp)
        process_s = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"FireANTs runner failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        info = json.loads((Path(tmp) / "result.json").read_text(encoding="utf-8"))
        t = load_transform(Path(tmp) / "warp.nii.gz")
        moved = read_image(Path(tmp) / "moved.nii.gz", dtype=torch.float32)
    warped = moved.data[0].numpy().transpose(*reversed(range(moved.dim)))  # -> (x, y, z)
    info["process_s"] = process_s
    return PeerResult("FireANTs moments+affine+Greedy", t, info["seconds"]["registration"], warped, info)


# ----- NiftyReg -----------------------------------------------------------------------------------
def niftyreg_bin(name: str) -> str:
    """A NiftyReg binary: $NIFTYREG_BIN/name, else the PyPI ``niftyreg`` package's bin folder, else PATH."""
    if os.environ.get("NIFTYREG_BIN"):
        return str(Path(os.environ["NIFTYREG_BIN"]) / name)
    try:
        import niftyreg

        if (niftyreg.bin_path / name).exists():
            return str(niftyreg.bin_path / name)
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"NiftyReg's {name} not found: pip install niftyreg (1.5.70rc1 builds from source; "
                           "with CMake >= 4 set CMAKE_POLICY_VERSION_MINIMUM=3.5) or set NIFTYREG_BIN")
    return found


def run_niftyreg(fixed_path: Path, moving_path: Path, threads: int | None = None,
                 aladin_args: tuple[str, ...] = (), f3d_args: tuple[str, ...] = ()) -> PeerResult:
    """NiftyReg with its defaults: ``reg_aladin`` (rigid then affine, block matching, 3 levels) then
    ``reg_f3d -aff`` (cubic B-spline, final grid 5 voxels, NMI 64 bins, bending energy 0.001,
    linear elasticity 0.01, 3 levels, 150 iterations at the last level), both with ``-omp threads``.

    ``reg_transform -def`` turns the control-point grid (affine included) into a deformation field:
    for each fixed voxel, the moving point in NIfTI world (RAS) mm. Read with nibabel (no ITK
    vector reorientation in between), RAS -> LPS is a sign flip of x and y; the field's voxel grid is
    the fixed image's (checked). ``seconds`` is reg_aladin + reg_f3d wall time."""
    import nibabel as nib

    threads = int(threads or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    fixed = read_image(fixed_path, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        aff, cpp, res, dfield = (str(tmp_p / n) for n in ("affine.txt", "cpp.nii.gz", "warped.nii.gz", "def.nii.gz"))

        def call(cmd: list[str]) -> float:
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, cwd=tmp)
            if proc.returncode != 0:
                raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
            return time.perf_counter() - start

        omp = ["-omp", str(threads)]
        t_aladin = call([niftyreg_bin("reg_aladin"), "-ref", str(fixed_path), "-flo", str(moving_path), "-aff", aff,
                         "-res", str(tmp_p / "affine_warped.nii.gz"), *omp, *aladin_args])
        t_f3d = call([niftyreg_bin("reg_f3d"), "-ref", str(fixed_path), "-flo", str(moving_path), "-aff", aff,
                      "-cpp", cpp, "-res", res, *omp, *f3d_args])
        call([niftyreg_bin("reg_transform"), "-ref", str(fixed_path), "-def", cpp, dfield])
        img = nib.load(dfield)
        pos = np.asarray(img.dataobj, dtype=np.float64)  # (x, y, z, 1, 3): moving points, NIfTI RAS mm
        vox2ras = img.affine
        # reg_f3d pads with NaN outside the moving image (its -pad default, also used while optimising).
        warped = np.nan_to_num(np.asarray(nib.load(res).dataobj, dtype=np.float32), nan=0.0)  # (x, y, z)
    dim = fixed.dim
    flip = np.diag([-1.0, -1.0] + [1.0] * (dim - 2))  # RAS <-> LPS
    vox2lps = np.eye(dim + 1)
    vox2lps[:dim, :dim] = flip @ vox2ras[:dim, :dim]
    vox2lps[:dim, dim] = flip @ vox2ras[:dim, 3]
    expected = np.asarray(fixed.grid.index_to_world(), dtype=np.float64)
    if pos.shape[:dim] != tuple(reversed(fixed.grid.shape)) or not np.allclose(vox2lps, expected, atol=1e-3):
        raise RuntimeError(f"NiftyReg deformation field grid {pos.shape[:dim]} / {vox2lps.tolist()} does not match "
                           f"the fixed image {fixed.grid.shape} / {expected.tolist()}")
    pos = pos.reshape(*pos.shape[:dim], dim) @ flip.T  # -> LPS, (x, y, z, dim)
    pos = pos.transpose(dim, *reversed(range(dim)))    # -> (dim, z, y, x)
    disp = torch.from_numpy(pos).float() - torch.movedim(fixed.grid.points(dtype=torch.float64), -1, 0).float()
    t = DisplacementFieldTransform(disp[None], fixed.grid)
    return PeerResult("NiftyReg aladin+f3d", t, t_aladin + t_f3d, warped.reshape(warped.shape[:dim]),
                      {"seconds": {"reg_aladin": t_aladin, "reg_f3d": t_f3d}})
