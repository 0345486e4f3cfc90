"""Reading and writing images through SimpleITK (NIfTI, MHA/MHD, NRRD, DICOM series)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from morphreg.core.files import atomic_path
from morphreg.core.native import captured_native_stderr, native_reason
from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.nifti import check_nifti_payload

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".png", ".tif", ".tiff")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def image_stem(path: str | Path) -> str:
    """The file name without its image suffix ("seg.nii.gz" -> "seg"); a MorphregError naming the file
    when the suffix is not an image format morphreg writes."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise MorphregError(f"unsupported image format {suffix!r} (use one of {', '.join(IMAGE_SUFFIXES)})", path)
    return path.name[: len(path.name) - len(suffix)]


def _sitk_read(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise MorphregError("folder holds no DICOM series", path)
        files = reader.GetGDCMSeriesFileNames(str(path), series[0])
        reader.SetFileNames(files)
        return reader.Execute()
    return sitk.ReadImage(str(path))


def from_sitk(img: sitk.Image, name: str = "<sitk>", channels_from_4d: bool = True) -> Image:
    """Convert a SimpleITK image to an Image. A 4D scalar image becomes a 3D multi-channel image."""
    dim = img.GetDimension()
    arr = sitk.GetArrayFromImage(img)  # (z, y, x[, c]) or (t, z, y, x) for 4D
    if dim == 4 and channels_from_4d:
        grid = Grid(img.GetSize()[:3], img.GetOrigin()[:3], img.GetSpacing()[:3],
                    np.asarray(img.GetDirection()).reshape(4, 4)[:3, :3])
        data = arr  # (t, z, y, x): the 4th axis is the channel axis
    elif dim in (2, 3):
        grid = Grid(img.GetSize(), img.GetOrigin(), img.GetSpacing(), np.asarray(img.GetDirection()).reshape(dim, dim))
        data = np.moveaxis(arr, -1, 0) if img.GetNumberOfComponentsPerPixel() > 1 else arr[None]
    else:
        raise MorphregError(f"{dim}D images are not supported (2D or 3D, optionally multi-channel)", name)
    if data.dtype == np.uint64 or data.dtype == np.uint32:
        data = data.astype(np.int64)
    elif data.dtype == np.uint16:
        data = data.astype(np.int32)
    elif data.dtype == np.float64:
        data = data.astype(np.float32)
    elif data.dtype == np.int8:
        data = data.astype(np.int16)
    return Image(torch.from_numpy(np.ascontiguousarray(data)), grid, name)


# What says "label map" in a file name, or in the first or last word of its folder's name. Names are split into
# words at non-letters and at lower -> upper case steps ("labelsTr" -> labels, tr). A word that contains
# one of LABEL_PARTS counts ("aparc+aseg", "subject_a_labels", "brainMask", "sub-01_dseg", "wmparc"), or
# one of LABEL_WORDS whole ("patient001_gt", "ribbon", "gland_us"). "atlas" and "roi" are left out: they
# name intensity templates and crops as often as label maps.
LABEL_PARTS = ("label", "lbl", "seg", "mask", "parc")
LABEL_WORDS = frozenset({"gt", "ribbon", "gland", "labelmap"})
MAX_LABEL_VALUES = 1000


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[^a-z]+", spaced.lower()) if w]


def _label_word(word: str) -> bool:
    return word in LABEL_WORDS or any(part in word for part in LABEL_PARTS)


def looks_like_labels(image: Image, path: Path) -> bool:
    """The automatic rule for a file read without a stated role: integer data with at most
    ``MAX_LABEL_VALUES`` distinct values AND a file name with a word such as label/seg/mask/parc/gt,
    or a folder name starting or ending with one (``labelsTr/case_001.nii.gz``, ``fixed_labels/obs000.nii.gz``).
    An int16 CT named ``moving.mha`` is an intensity image; ``aseg.nii.gz`` and ``fixed_labels/obs000.nii.gz`` are label maps."""
    folder = _words(path.parent.name)
    named = any(_label_word(w) for w in _words(path.name)) or any(_label_word(w) for w in folder[:1] + folder[-1:])
    if not image.is_label or not named:
        return False
    return int(torch.unique(image.data).numel()) <= MAX_LABEL_VALUES


def read_image(path: str | Path, dtype: torch.dtype | None = None, check_finite: bool = True,
               labels: bool | None = None) -> Image:
    """Read an image file or DICOM folder.

    ``labels``: True = a label map or mask (integer data kept, warped without mixing values); False =
    an intensity image (integer data becomes float32, so a CT is interpolated like any image); None =
    decided by :func:`looks_like_labels`. ``dtype`` converts afterwards.

    Raises MorphregError naming the file for a missing/unreadable/truncated file, a bad direction
    matrix, or (``check_finite``) NaN/inf voxels, in every format: NIfTI payloads are checked on
    disk (:mod:`morphreg.image.nifti`), since ITK reads their NaN as 0 and a truncated file as zeros.
    """
    path = Path(path)
    if not path.exists():
        raise MorphregError("file not found", path)
    with captured_native_stderr() as messages:
        try:
            img, failure = _sitk_read(path), None
        except RuntimeError as exc:
            img, failure = None, exc
    if failure is not None:
        raise MorphregError(f"cannot read image ({_suffix(path) or 'no suffix'}): {native_reason(failure, messages)}", path)
    if any(m.startswith("WARNING") for m in messages):  # e.g. "unexpected scales in sform": pass it on, in one line
        print(f"note: {path}: ITK: {native_reason(None, messages)}", file=sys.stderr)
    nonfinite = check_nifti_payload(path) if _suffix(path) in (".nii", ".nii.gz") else 0
    if check_finite and nonfinite:
        raise MorphregError(f"image has {nonfinite} NaN/inf voxels", path)
    try:
        image = from_sitk(img, name=str(path))
    except MorphregError as exc:
        raise MorphregError(exc.problem, path) from None
    if labels is None:
        labels = looks_like_labels(image, path)
    if not labels and image.is_label:
        image = image.float()
    if dtype is not None:
        image = image.to(dtype=dtype)
    return image.check_finite() if check_finite else image


def nonfinite_voxels(path: str | Path, image: Image) -> int:
    """NaN/inf voxels of ``image`` as read from ``path`` (for NIfTI, counted on disk: ITK reads them as 0)."""
    if _suffix(Path(path)) in (".nii", ".nii.gz"):
        return check_nifti_payload(path)
    data = image.data
    return int((~torch.isfinite(data)).sum()) if data.is_floating_point() else 0


def to_sitk(image: Image, as_4d: bool = False) -> sitk.Image:
    """Convert to SimpleITK. Multi-channel images become vector images (or 4D scalar with ``as_4d``)."""
    arr = image.data.detach().cpu().numpy()
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    g = image.grid
    if image.channels == 1:
        img = sitk.GetImageFromArray(arr[0])
    elif as_4d:
        img = sitk.GetImageFromArray(arr)
        img.SetOrigin(tuple(g.origin) + (0.0,))
        img.SetSpacing(tuple(g.spacing) + (1.0,))
        d = np.eye(4)
        d[:3, :3] = g.direction
        img.SetDirection(d.ravel().tolist())
        return img
    else:
        img = sitk.GetImageFromArray(np.moveaxis(arr, 0, -1), isVector=True)
    img.SetOrigin(tuple(float(v) for v in g.origin))
    img.SetSpacing(tuple(float(v) for v in g.spacing))
    img.SetDirection(tuple(float(v) for v in g.direction.ravel()))
    return img


def write_image(image: Image, path: str | Path, as_4d: bool = False, compress: bool | str = True, inputs=()) -> Path:
    """Write atomically (temp file + rename). The format follows the suffix.

    ``compress``: True deflates (.nii.gz always, .mha/.nrrd with ITK's compression); False stores the
    data uncompressed (a ``.nii.gz`` as a gzip stream of stored blocks: still a valid .nii.gz for every
    reader); ``"auto"`` deflates at level 1 only when a sample of the data shrinks below
    ``DEFLATE_WORTH`` of its size. That is for float fields: a smooth brain displacement field barely
    deflates (-10 %) at 5x the writing time, an all-zero one shrinks 200x (benchmarks/RESULTS.md, session 21).
    ``path`` is never one of ``inputs`` (:func:`morphreg.core.files.atomic_path`).
    """
    path = Path(path)
    if _suffix(path) not in IMAGE_SUFFIXES:
        raise MorphregError(f"unsupported image format {_suffix(path)!r} (use one of {', '.join(IMAGE_SUFFIXES)})", path)
    img = to_sitk(image, as_4d=as_4d)
    if compress == "auto":
        compress = _deflates_well(sitk.GetArrayViewFromImage(img))
        level = 1
    else:
        level = -1
    with atomic_path(path, inputs) as tmp:
        try:
            if _suffix(path) == ".nii.gz":  # ITK always deflates .nii.gz, at its own level
                _write_gzip(img, tmp, level if compress else 0)
            else:
                sitk.WriteImage(img, str(tmp), useCompression=bool(compress), compressionLevel=level)
        except RuntimeError as exc:
            raise MorphregError(f"cannot write image: {str(exc).strip().splitlines()[-1][:200]}", path) from None
    return path


DEFLATE_WORTH = 0.7  # deflate a float field when a sample shrinks below this share of its size


def _deflates_well(array: np.ndarray, samples: int = 4, sample_bytes: int = 1 << 20) -> bool:
    """Whether zlib level 1 shrinks evenly spread samples of ``array``'s bytes below ``DEFLATE_WORTH``."""
    import zlib

    data = memoryview(np.ascontiguousarray(array)).cast("B")
    if len(data) <= samples * sample_bytes:
        chunks = [data]
    else:
        step = (len(data) - sample_bytes) // (samples - 1)
        chunks = [data[i * step: i * step + sample_bytes] for i in range(samples)]
    size = sum(len(c) for c in chunks)
    return size > 0 and sum(len(zlib.compress(c, 1)) for c in chunks) < DEFLATE_WORTH * size


def _write_gzip(img: sitk.Image, target: Path, level: int) -> None:
    """``img`` as NIfTI inside a gzip stream at ``level`` (0: stored blocks; -1: ITK's own deflate)."""
    import gzip
    import shutil

    if level < 0:
        sitk.WriteImage(img, str(target), useCompression=True)
        return
    raw = target.with_suffix("")  # "<tmp>.nii.gz" -> "<tmp>.nii"
    try:
        sitk.WriteImage(img, str(raw), useCompression=False)
        with open(raw, "rb") as src, gzip.open(target, "wb", compresslevel=level) as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
    finally:
        raw.unlink(missing_ok=True)
