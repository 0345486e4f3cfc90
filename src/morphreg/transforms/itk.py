"""Conversion between morphreg transforms and SimpleITK transforms (ITK files, ANTs .mat, elastix)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.transforms.base import Transform
from morphreg.transforms.bspline import BSplineTransform
from morphreg.transforms.composite import CompositeTransform
from morphreg.transforms.dense import DisplacementFieldTransform, StationaryVelocityFieldTransform
from morphreg.transforms.linear import AffineTransform, LinearTransform


# ----- geometry helpers -------------------------------------------------------------------------------
def _set_geometry(img: sitk.Image, grid: Grid) -> sitk.Image:
    img.SetOrigin(tuple(float(v) for v in grid.origin))
    img.SetSpacing(tuple(float(v) for v in grid.spacing))
    img.SetDirection(tuple(float(v) for v in grid.direction.ravel()))
    return img


def _grid_of(img: sitk.Image) -> Grid:
    d = img.GetDimension()
    return Grid(img.GetSize(), img.GetOrigin(), img.GetSpacing(), np.asarray(img.GetDirection()).reshape(d, d))


def field_to_sitk_image(field: torch.Tensor, grid: Grid) -> sitk.Image:
    """(1, dim, *shape) displacement (world mm) -> SimpleITK float64 vector image."""
    arr = np.moveaxis(field.detach().cpu().double().numpy()[0], 0, -1)
    return _set_geometry(sitk.GetImageFromArray(arr, isVector=True), grid)


def sitk_image_to_field(img: sitk.Image) -> tuple[torch.Tensor, Grid]:
    arr = sitk.GetArrayFromImage(img)  # (*shape, dim)
    return torch.from_numpy(np.moveaxis(arr, -1, 0)[None].astype(np.float32)), _grid_of(img)


# ----- morphreg -> SimpleITK --------------------------------------------------------------------------
def to_sitk_transform(t: Transform, grid: Grid | None = None) -> sitk.Transform:
    """Equivalent SimpleITK transform. Linear models become AffineTransform (exact: matrix, translation,
    centre); B-splines BSplineTransform; composites CompositeTransform (same order); displacement and
    velocity fields a DisplacementFieldTransform on their own grid (exact); any other model a
    DisplacementFieldTransform sampled on ``grid`` (or its domain)."""
    if isinstance(t, LinearTransform):
        a = t.matrix().detach().double().numpy()
        out = sitk.AffineTransform(t.dim)
        out.SetMatrix(a.ravel().tolist())
        out.SetCenter(t.center.double().tolist())
        out.SetTranslation(t.translation.detach().double().tolist())
        return out
    if isinstance(t, BSplineTransform):
        t = t.padded()  # ITK leaves points near the control grid's edge unmoved; padding makes that moot
        coef = t.coefficients.detach().cpu().double().numpy()[0]
        images = [_set_geometry(sitk.GetImageFromArray(coef[k]), t.control_grid) for k in range(t.dim)]
        return sitk.BSplineTransform(images, 3)
    if isinstance(t, CompositeTransform):
        out = sitk.CompositeTransform(t.dim)
        for part in t.transforms:
            out.AddTransform(to_sitk_transform(part, grid))
        return out
    # A dense model's own grid is its exact representation (ITK interpolates it linearly and treats
    # points outside the buffer as we do); ``grid`` is for models without one (TPS, additive).
    grid = t.domain() if isinstance(t, (DisplacementFieldTransform, StationaryVelocityFieldTransform)) else (grid or t.domain())
    if grid is None:
        raise MorphregError(f"{type(t).__name__} has no grid of its own; give a reference grid to export it as a displacement field")
    field = t.displacement(grid, dtype=torch.float64) if not isinstance(t, DisplacementFieldTransform) or not grid.same_as(t.grid) \
        else t.field.detach().double()
    return sitk.DisplacementFieldTransform(field_to_sitk_image(field, grid))


# ----- SimpleITK -> morphreg --------------------------------------------------------------------------
def _linear_from_sitk(tx: sitk.Transform, dim: int) -> AffineTransform:
    """Any linear ITK transform, read through how it maps points (exact for linear maps)."""
    o = np.asarray(tx.TransformPoint((0.0,) * dim))
    a = np.stack([np.asarray(tx.TransformPoint(tuple(np.eye(dim)[k]))) - o for k in range(dim)], axis=1)
    center = np.zeros(dim)
    try:
        center = np.asarray(sitk.AffineTransform(tx).GetCenter()) if tx.GetTransformEnum() != sitk.sitkTranslation else center
    except (RuntimeError, TypeError):
        pass
    translation = o - center + a @ center
    return AffineTransform(dim, matrix=a, translation=translation, center=center)


def from_sitk_transform(tx: sitk.Transform, name: str = "<transform>") -> Transform:
    dim = tx.GetDimension()
    kind = tx.GetName()
    if kind == "CompositeTransform":
        comp = sitk.CompositeTransform(tx)
        parts = [from_sitk_transform(comp.GetNthTransform(i), name) for i in range(comp.GetNumberOfTransforms())]
        return parts[0] if len(parts) == 1 else CompositeTransform(parts)
    if kind.startswith("DisplacementFieldTransform"):
        field, grid = sitk_image_to_field(sitk.DisplacementFieldTransform(tx).GetDisplacementField())
        return DisplacementFieldTransform(field, grid)
    if kind.startswith("BSplineTransform"):
        b = sitk.BSplineTransform(tx)
        if b.GetOrder() != 3:
            raise MorphregError(f"B-spline transforms of order {b.GetOrder()} are not supported (cubic only)", name)
        imgs = b.GetCoefficientImages()
        coef = np.stack([sitk.GetArrayFromImage(im) for im in imgs])[None]
        return BSplineTransform(_grid_of(imgs[0]), torch.from_numpy(coef.astype(np.float32)), itk_valid_region=True)
    if tx.IsLinear():
        return _linear_from_sitk(tx, dim)
    raise MorphregError(f"unsupported ITK transform type {kind}", name)


def write_itk_transform(t: Transform, path: str | Path, grid: Grid | None = None) -> None:
    sitk.WriteTransform(to_sitk_transform(t, grid), str(path))


# ----- elastix TransformParameters files --------------------------------------------------------------
def parse_elastix_parameters(text: str) -> dict[str, list]:
    """Parse ``(Key value value ...)`` lines into {key: [values]} (numbers as float, strings unquoted)."""
    params: dict[str, list] = {}
    for line in text.splitlines():
        line = line.split("//")[0].strip()
        m = re.match(r"^\((\w+)\s*(.*)\)$", line)
        if not m:
            continue
        values = re.findall(r'"[^"]*"|\S+', m.group(2))
        parsed: list = []
        for v in values:
            if v.startswith('"'):
                parsed.append(v.strip('"'))
            else:
                try:
                    parsed.append(float(v))
                except ValueError:
                    parsed.append(v)
        params[m.group(1)] = parsed
    return params


def read_elastix_transform(path: str | Path) -> Transform:
    """Read an elastix TransformParameters file (Euler, Similarity, Affine, Translation, BSpline),
    following InitialTransformParametersFileName chains (composed, elastix's default)."""
    path = Path(path)
    if not path.exists():
        raise MorphregError("file not found", path)
    p = parse_elastix_parameters(path.read_text(encoding="utf-8", errors="replace"))
    if "Transform" not in p:
        raise MorphregError("not an elastix TransformParameters file (no (Transform ...) entry)", path)
    kind = p["Transform"][0]
    dim = int(p.get("FixedImageDimension", p.get("MovingImageDimension", [3]))[0])
    params = np.asarray(p.get("TransformParameters", []), np.float64)
    center = np.asarray(p.get("CenterOfRotationPoint", [0.0] * dim), np.float64)
    if kind == "EulerTransform":
        if dim == 2:
            tx = sitk.Euler2DTransform(center.tolist(), params[0], params[1:3].tolist())
        else:
            tx = sitk.Euler3DTransform()
            tx.SetCenter(center.tolist())
            tx.SetComputeZYX(str(p.get("ComputeZYX", ["false"])[0]).lower() == "true")
            tx.SetRotation(*params[:3].tolist())
            tx.SetTranslation(params[3:6].tolist())
        t: Transform = _linear_from_sitk(tx, dim)
    elif kind == "SimilarityTransform":
        tx = sitk.Similarity2DTransform() if dim == 2 else sitk.Similarity3DTransform()
        tx.SetCenter(center.tolist())
        tx.SetParameters(params.tolist())
        t = _linear_from_sitk(tx, dim)
    elif kind == "AffineTransform":
        t = AffineTransform(dim, matrix=params[: dim * dim].reshape(dim, dim), translation=params[dim * dim :], center=center)
    elif kind == "TranslationTransform":
        t = AffineTransform(dim, translation=params[:dim])
    elif kind in ("BSplineTransform", "RecursiveBSplineTransform"):
        order = int(p.get("BSplineTransformSplineOrder", [3])[0])
        if order != 3:
            raise MorphregError(f"elastix B-spline of order {order} is not supported (cubic only)", path)
        size = [int(v) for v in p["GridSize"]]
        grid = Grid(size, p["GridOrigin"], p["GridSpacing"],
                    np.asarray(p.get("GridDirection", np.eye(dim).ravel()), np.float64).reshape(dim, dim, order="F"))
        coef = params.reshape(dim, *reversed(size))  # all x coefficients, then y, then z; x fastest
        t = BSplineTransform(grid, torch.from_numpy(coef[None].astype(np.float32)), itk_valid_region=True)
    else:
        raise MorphregError(f"unsupported elastix transform {kind!r} (Euler, Similarity, Affine, Translation, BSpline)", path)
    initial = p.get("InitialTransformParametersFileName", ["NoInitialTransform"])[0]
    if initial and initial != "NoInitialTransform":
        init_path = Path(initial) if Path(initial).is_absolute() else path.parent / Path(initial).name
        how = p.get("HowToCombineTransforms", ["Compose"])[0]
        if how != "Compose":
            raise MorphregError(f"HowToCombineTransforms {how!r} is not supported (Compose only)", path)
        # elastix's AdvancedCombinationTransform maps x -> T_current(T_initial(x)).
        t = CompositeTransform([t, read_elastix_transform(init_path)])
    return t


def velocity_to_sitk(t: StationaryVelocityFieldTransform) -> sitk.Transform:
    return sitk.DisplacementFieldTransform(field_to_sitk_image(t.field().detach().double(), t.grid))
