"""Landmarks: reading point files (world LPS mm), label centroids, target registration error (TRE).

Supported files:
- CSV: optional header; columns named x, y, z (and optionally name/label), else the first
  ``dim`` numeric columns. World LPS mm.
- JSON: ``[[x, y, z], ...]``, ``{"points": [...], "names": [...]}``, a list of ``{"x":..,"name":..}``
  or ``{"position": [...]}`` objects, or a 3D Slicer markups file (``.mrk.json``; its
  ``coordinateSystem`` RAS/LPS is honoured). An optional top-level ``"coordinate_system": "RAS"``
  converts from RAS.
- Slicer ``.fcsv``: the ``# CoordinateSystem`` header (RAS/LPS or 0/1) is honoured; RAS when absent.
- elastix / ITK point-set ``.txt``: first line ``point`` (world) or ``index`` (voxel indices, which
  need the image grid), second line the count, then one point per line.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.transforms.base import Transform
from morphreg.evaluate.labels import label_masks, union_keys


@dataclass
class PointSet:
    """Named world points: ``points`` (N, dim) LPS mm (NaN rows = absent), ``names`` N strings."""

    points: np.ndarray
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float64).reshape(len(self.points), -1)
        if not self.names:
            self.names = [str(i) for i in range(len(self.points))]
        if len(self.names) != len(self.points):
            raise MorphregError(f"{len(self.names)} names for {len(self.points)} points")

    @property
    def dim(self) -> int:
        return int(self.points.shape[1])

    def __len__(self) -> int:
        return len(self.points)


def _ras_to_lps(points: np.ndarray) -> np.ndarray:
    out = points.copy()
    out[:, :2] *= -1  # RAS and LPS differ by the sign of the first two axes
    return out


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: Path, dim: int | None) -> PointSet:
    rows = [r for r in csv.reader(path.read_text(encoding="utf-8").splitlines()) if r and not r[0].lstrip().startswith("#")]
    if not rows:
        raise MorphregError("no points in file", path)
    header = [c.strip().lower() for c in rows[0]]
    has_header = any(_float(c) is None for c in rows[0])
    body = rows[1:] if has_header else rows
    if has_header and {"x", "y"} <= set(header):
        axes = [header.index(a) for a in ("x", "y", "z") if a in header]
        name_col = next((header.index(n) for n in ("name", "label", "id") if n in header), None)
    else:
        numeric = [i for i, c in enumerate(body[0]) if _float(c) is not None] if body else []
        axes = numeric[: dim or (3 if len(numeric) >= 3 else 2)]
        name_col = None
    try:
        pts = [[float(r[i]) for i in axes] for r in body]
    except (ValueError, IndexError):
        raise MorphregError("rows must hold numeric x, y[, z] columns", path) from None
    names = [r[name_col].strip() for r in body] if name_col is not None else []
    return PointSet(np.asarray(pts).reshape(len(pts), len(axes)), names)


def _read_json(path: Path) -> PointSet:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MorphregError(f"not valid JSON ({exc.msg}, line {exc.lineno})", path) from None
    ras = False
    if isinstance(d, dict) and "markups" in d:  # 3D Slicer markups JSON
        pts, names = [], []
        for m in d["markups"]:
            ras = str(m.get("coordinateSystem", "LPS")).upper() == "RAS"
            for cp in m.get("controlPoints", []):
                pts.append(cp["position"])
                names.append(str(cp.get("label", len(names))))
        arr = np.asarray(pts, np.float64)
        return PointSet(_ras_to_lps(arr) if ras and len(arr) else arr, names)
    names: list[str] = []
    if isinstance(d, dict):
        ras = str(d.get("coordinate_system", "LPS")).upper() == "RAS"
        names = [str(n) for n in d.get("names", [])]
        d = d.get("points", d.get("landmarks"))
    if not isinstance(d, list):
        raise MorphregError("expected a list of points or {'points': [...]}", path)
    pts = []
    for i, p in enumerate(d):
        if isinstance(p, dict):
            pts.append(p["position"] if "position" in p else [p[a] for a in ("x", "y", "z") if a in p])
            if "name" in p or "label" in p:
                names.append(str(p.get("name", p.get("label"))))
        else:
            pts.append(p)
    try:
        arr = np.asarray(pts, np.float64)
    except ValueError:
        raise MorphregError("points must all have the same number of coordinates", path) from None
    return PointSet(_ras_to_lps(arr) if ras else arr, names if len(names) == len(arr) else [])


def _read_fcsv(path: Path) -> PointSet:
    ras = True  # Slicer wrote RAS before version 4.11 and says so in the header since
    columns = ["id", "x", "y", "z"]
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            if key.strip().lower() == "coordinatesystem":
                ras = value.strip().upper() in ("RAS", "0")
            elif key.strip().lower() == "columns":
                columns = [c.strip().lower() for c in value.split(",")]
        elif line.strip():
            rows.append(next(csv.reader([line])))
    ix = [columns.index(a) for a in ("x", "y", "z")]
    il = columns.index("label") if "label" in columns else None
    try:
        pts = np.asarray([[float(r[i]) for i in ix] for r in rows], np.float64).reshape(len(rows), 3)
    except (ValueError, IndexError):
        raise MorphregError("malformed .fcsv row (expected id,x,y,z,...)", path) from None
    names = [r[il] for r in rows] if il is not None else []
    return PointSet(_ras_to_lps(pts) if ras else pts, names)


def _read_elastix_points(path: Path, grid: Grid | None) -> PointSet:
    lines = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    kind = lines[0][0].lower()
    try:
        count = int(lines[1][0])
        pts = np.asarray([[float(v) for v in ln] for ln in lines[2: 2 + count]], np.float64)
    except (ValueError, IndexError):
        raise MorphregError("malformed elastix point set (expected 'point'|'index', count, then rows)", path) from None
    if len(pts) != count:
        raise MorphregError(f"header announces {count} points but {len(pts)} follow", path)
    if kind == "index":
        if grid is None:
            raise MorphregError("points are voxel indices ('index'); give the image they refer to", path)
        pts = grid.index_to_world_points(pts)
    return PointSet(pts)


def read_landmarks(path: str | Path, grid: Grid | None = None, dim: int | None = None) -> PointSet:
    """Read a landmark file (see module doc) into world LPS mm.

    Args:
        grid: the image grid, needed only for elastix ``index`` point sets.
        dim: number of coordinates for header-less CSV (default 3 when available).
    """
    path = Path(path)
    if not path.exists():
        raise MorphregError("file not found", path)
    name = path.name.lower()
    try:
        if name.endswith(".fcsv"):
            return _read_fcsv(path)
        if name.endswith(".json"):
            return _read_json(path)
        first = path.read_text(encoding="utf-8").lstrip().split(None, 1)[0].lower() if path.read_text(encoding="utf-8").strip() else ""
        if first in ("point", "index"):
            return _read_elastix_points(path, grid)
        return _read_csv(path, dim)
    except (KeyError, TypeError) as exc:
        raise MorphregError(f"unexpected landmark file layout ({type(exc).__name__}: {exc})", path) from None


def write_landmarks_csv(points: PointSet, path: str | Path) -> Path:
    """Write ``name,x,y[,z]`` (LPS mm) atomically."""
    from morphreg.core.files import atomic_path

    axes = "xyz"[: points.dim]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["name", *axes])
            for n, p in zip(points.names, points.points):
                w.writerow([n, *(f"{v:.6f}" for v in p)])
    return Path(path)


def label_centroids(labels: Image, keys: list[str] | None = None) -> PointSet:
    """World centroid (mm) of each structure (one per channel, or per label value); NaN if empty.

    One pass over the image for all label values of an integer map (scipy's labelled centre of mass)."""
    data = labels.data.detach().cpu().numpy()
    keys = keys or union_keys(label_masks(labels))
    index = np.full((len(keys), labels.dim), np.nan)  # tensor order (z, y, x)
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty structure: 0 / 0 = NaN, as wanted
        if labels.channels > 1:
            for i, k in enumerate(keys):
                c = int(k[2:]) if k.startswith("ch") and k[2:].isdigit() else -1
                if 0 <= c < labels.channels:
                    index[i] = ndimage.center_of_mass(data[c] != 0)
        else:
            values = [int(k) if k.lstrip("-").isdigit() else None for k in keys]
            asked = [i for i, v in enumerate(values) if v is not None and v != 0]
            if asked:
                found = ndimage.center_of_mass(data[0] != 0, data[0], [values[i] for i in asked])
                index[asked] = np.asarray(found, dtype=np.float64).reshape(len(asked), labels.dim)
    pts = np.full_like(index, np.nan)
    ok = np.isfinite(index).all(1)
    if ok.any():
        pts[ok] = labels.grid.index_to_world_points(index[ok][:, ::-1])
    return PointSet(pts, list(keys))


def _summary(errors: np.ndarray) -> dict:
    e = errors[np.isfinite(errors)]
    if not e.size:
        return {"n": 0, "mean_mm": math.nan, "std_mm": math.nan, "median_mm": math.nan, "max_mm": math.nan}
    return {"n": int(e.size), "mean_mm": float(e.mean()), "std_mm": float(e.std()),
            "median_mm": float(np.median(e)), "max_mm": float(e.max())}


def point_distances(a: PointSet, b: PointSet) -> np.ndarray:
    """Euclidean distance (mm) between corresponding points (NaN where either is NaN)."""
    if len(a) != len(b) or a.dim != b.dim:
        raise MorphregError(f"landmark sets do not correspond: {len(a)} x {a.dim}D vs {len(b)} x {b.dim}D")
    return np.linalg.norm(a.points - b.points, axis=1)


def map_points(transform: Transform, points: PointSet) -> PointSet:
    """T(p) for each point (fixed -> moving world mm); NaN points stay NaN."""
    # Transform parameters are float32; mapping in float32 costs ~1e-5 mm, far below any TRE.
    x = torch.as_tensor(np.nan_to_num(points.points), dtype=torch.float32)
    with torch.no_grad():
        y = transform.points(x).double().reshape(len(points), points.dim).numpy()
    y[~np.isfinite(points.points).all(1)] = np.nan
    return PointSet(y, points.names)


def tre(fixed: PointSet, moving: PointSet, transform: Transform | None) -> dict:
    """Target registration error: |T(f_i) - m_i| in mm, and the initial error |f_i - m_i|.

    The transform maps fixed points to moving points (backward mapping), so fixed landmarks are
    mapped and compared with the moving ones. Returns ``{"initial": summary, "final": summary,
    "points": [{name, initial_mm, final_mm}], "notes": [...]}``.
    """
    notes: list[str] = []
    initial = point_distances(fixed, moving)
    final = point_distances(map_points(transform, fixed), moving) if transform is not None else initial
    missing = int((~np.isfinite(final)).sum())
    if missing:
        notes.append(f"{missing} landmark(s) missing in one of the sets: left out of the TRE")
    points = [{"name": n, "initial_mm": float(i), "final_mm": float(f)} for n, i, f in zip(fixed.names, initial, final)]
    return {"initial": _summary(initial), "final": _summary(final), "points": points, "notes": notes}
