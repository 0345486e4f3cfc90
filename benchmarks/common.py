"""Shared pieces of the side-by-side benchmarks: run the morphreg CLI, evaluate any tool's transform
with the same independent code, and print tables of ratios."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from morphreg.evaluate.run import evaluate_registration
from morphreg.image.image import Image
from morphreg.transforms import Transform, load_transform

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_morphreg_cli(fixed: Path, moving: Path, extra: list[str] | None = None, threads: int = 2) -> tuple[Transform, float, dict]:
    """Time the whole ``morphreg register`` command (process start, I/O and writing included)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result"
        cmd = [shutil.which("morphreg") or "morphreg", "register", str(fixed), str(moving), "-o", str(out), *(extra or [])]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"morphreg register failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        return load_transform(out / "transform.h5"), seconds, summary


def evaluate(transform: Transform, fixed_labels: Image, moving_labels: Image, landmark_channels: str | None = None) -> dict:
    """Warp the moving labels with the tool's transform (nearest) and measure; same code for every tool.
    ``landmark_channels`` (e.g. "1-"): structures scored by centroid TRE |T(p) - q| instead of overlap."""
    return evaluate_registration(transform, fixed_labels, moving_labels, centroid_landmarks=True,
                                 landmark_channels=landmark_channels)


def sitk_dice(transform: Transform, fixed_labels: Path, moving_labels: Path) -> float:
    """Mean Dice over the labels of either map, the moving labels warped by SimpleITK (nearest), not by
    morphreg: the transform on the fixed labels' grid as an ITK displacement field (world mm, LPS), read
    back as SimpleITK's DisplacementFieldTransform. An independent check of :func:`evaluate`'s figure."""
    import SimpleITK as sitk

    from morphreg.image.io import from_sitk
    from morphreg.transforms import save_transform

    fixed_itk, moving_itk = sitk.ReadImage(str(fixed_labels)), sitk.ReadImage(str(moving_labels))
    with tempfile.TemporaryDirectory() as tmp:  # the fixed labels' grid from the image already read
        field = save_transform(transform, Path(tmp) / "field.nii", from_sitk(fixed_itk).grid)
        warp_itk = sitk.DisplacementFieldTransform(sitk.ReadImage(str(field), sitk.sitkVectorFloat64))
    warped = sitk.GetArrayFromImage(sitk.Resample(moving_itk, fixed_itk, warp_itk, sitk.sitkNearestNeighbor, 0))
    fixed = sitk.GetArrayFromImage(fixed_itk)
    g, w = fixed.astype(np.int64).ravel(), warped.astype(np.int64).ravel()
    labels = sorted((set(np.unique(g)) | set(np.unique(sitk.GetArrayFromImage(moving_itk)))) - {0})
    n = int(max(g.max(), w.max(), max(labels))) + 1
    inter = np.bincount(g[g == w], minlength=n)
    sizes = np.bincount(g, minlength=n) + np.bincount(w, minlength=n)
    return float(np.mean([2 * inter[k] / sizes[k] if sizes[k] else 1.0 for k in labels]))


def fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values) -> float:
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return float(np.median(vals)) if vals.size else math.nan
