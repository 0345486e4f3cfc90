"""Saving and loading transforms, dispatched on the file suffix."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from morphreg.core.files import atomic_path
from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.transforms.base import TRANSFORM_TYPES, Transform

NATIVE_SUFFIXES = (".pt", ".pth")
ITK_SUFFIXES = (".tfm", ".txt", ".mat", ".h5", ".hdf5", ".xfm")
FIELD_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def transform_from_dict(d: dict) -> Transform:
    cls = TRANSFORM_TYPES.get(d.get("type", ""))
    if cls is None:
        raise MorphregError(f"unknown transform type {d.get('type')!r}")
    return cls.from_dict(d)


def save_transform(t: Transform, path, grid: Grid | None = None) -> Path:
    """Write ``t`` atomically. ``.pt``: exact morphreg model; ITK suffixes: ITK transform file
    (dense parts as displacement fields, .h5 recommended for those); image suffixes: one ITK
    displacement-field image (world mm, LPS) of the whole mapping on ``grid`` or the model's domain,
    computed in float64 and stored as float32 (as ANTs stores its warps: ~1e-7 relative, half the size
    and write time; SimpleITK's DisplacementFieldTransform wants ``sitk.ReadImage(p, sitk.sitkVectorFloat64)``)."""
    from morphreg.transforms.itk import write_itk_transform

    path = Path(path)
    suffix = _suffix(path)
    if suffix in NATIVE_SUFFIXES:
        with atomic_path(path) as tmp, _write_errors(path):
            torch.save({"morphreg_transform": 1, **t.to_dict()}, tmp)
    elif suffix in ITK_SUFFIXES:
        with atomic_path(path) as tmp, _write_errors(path):
            write_itk_transform(t, tmp, grid)
    elif suffix in FIELD_SUFFIXES:
        grid = grid or t.domain()
        if grid is None:
            raise MorphregError("a displacement-field file needs a reference grid for this transform", path)
        save_displacement_field(t.displacement(grid, dtype=torch.float64).detach(), grid, path)
    else:
        raise MorphregError(f"unknown transform file type {suffix!r} (use .pt, {', '.join(ITK_SUFFIXES)} or a displacement image)", path)
    return path


def save_displacement_field(field: torch.Tensor, grid: Grid, path) -> Path:
    """Write a displacement field (1 | -, dim, *grid.shape) world mm (LPS) as an ITK vector image, float32
    (computed in float64 by the callers; see :func:`save_transform`), deflated only when that pays
    (:func:`morphreg.image.io.write_image` with ``compress="auto"``: float fields barely deflate, zero ones do)."""
    from morphreg.image.image import Image
    from morphreg.image.io import write_image

    field = field[0] if field.dim() == grid.dim + 2 else field
    write_image(Image(field.detach().float(), grid), path, compress="auto")
    return Path(path)


@contextlib.contextmanager
def _write_errors(path: Path):
    """torch and ITK report a full disk or a failed write as RuntimeError: one line naming the file."""
    try:
        yield
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise MorphregError(f"cannot write the transform: {lines[-1][:200] if lines else type(exc).__name__}", path) from None


def load_transform(path) -> Transform:
    """Read a transform: morphreg ``.pt``, ITK/ANTs transform files, elastix TransformParameters
    (``TransformParameters*.txt``), or an ITK displacement-field image.

    Raises MorphregError naming the file when it is missing, unreadable, truncated or holds NaN/inf
    parameters or displacement vectors (one NaN vector would spread over the warped image).
    """
    from morphreg.core.native import captured_native_stderr

    path = Path(path)
    if not path.exists():
        raise MorphregError("file not found", path)
    if path.is_dir():
        raise MorphregError("is a folder, not a transform file", path)
    with captured_native_stderr() as messages:
        try:
            t = _read_transform(path)
        except _NativeFailure as exc:
            failure = exc
        else:
            failure = None
    if failure is not None:
        from morphreg.core.native import native_reason

        raise MorphregError(f"{failure.what}: {native_reason(failure.__cause__, messages)}", path)
    tensors = [*t.parameters(), *t.buffers()] if isinstance(t, torch.nn.Module) else []
    bad = sum(int((~torch.isfinite(x)).sum()) for x in tensors if x.is_floating_point())
    if bad:
        raise MorphregError(f"transform has {bad} NaN/inf values", path)
    return t


class _NativeFailure(Exception):
    """A SimpleITK read failed; ``what`` says what the file was expected to be."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _read_transform(path: Path) -> Transform:
    import SimpleITK as sitk

    from morphreg.image.nifti import check_nifti_payload
    from morphreg.transforms.dense import DisplacementFieldTransform
    from morphreg.transforms.itk import from_sitk_transform, read_elastix_transform, sitk_image_to_field

    suffix = _suffix(path)
    if suffix in NATIVE_SUFFIXES:
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt files
            raise MorphregError(f"not a readable morphreg transform file ({type(exc).__name__})", path) from None
        if not isinstance(d, dict) or "morphreg_transform" not in d:
            raise MorphregError("not a morphreg transform file", path)
        try:
            return transform_from_dict(d)
        except MorphregError as exc:
            raise MorphregError(exc.problem, path) from None
    if suffix == ".txt" and path.read_text(encoding="utf-8", errors="replace").lstrip().startswith("("):
        return read_elastix_transform(path)
    if suffix in ITK_SUFFIXES:
        try:
            tx = sitk.ReadTransform(str(path))
        except RuntimeError as exc:
            raise _NativeFailure("not a readable ITK transform file") from exc
        return from_sitk_transform(tx, str(path))
    if suffix in FIELD_SUFFIXES:
        try:
            img = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
        except RuntimeError as exc:
            raise _NativeFailure("not a readable displacement-field image") from exc
        if img.GetNumberOfComponentsPerPixel() != img.GetDimension():
            raise MorphregError(f"a displacement field needs {img.GetDimension()} components per voxel, "
                                f"found {img.GetNumberOfComponentsPerPixel()}", path)
        if suffix in (".nii", ".nii.gz") and (bad := check_nifti_payload(path)):
            raise MorphregError(f"displacement field has {bad} NaN/inf values", path)
        field, grid = sitk_image_to_field(img)
        return DisplacementFieldTransform(field, grid)
    raise MorphregError(f"unknown transform file type {suffix!r}", path)
