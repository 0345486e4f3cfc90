"""What a registration returns, and how it is written to disk (atomically, as ITK files)."""
from __future__ import annotations

from collections.abc import Mapping

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from morphreg.core.files import output_folder
from morphreg.core.native import captured_native_stderr
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.io import write_image
from morphreg.transforms import Transform
from morphreg.transforms.io import save_displacement_field


def folding_percent(transform: Transform, grid: Grid, mask: Image | None = None) -> float:
    """Share (%) of voxels of ``grid`` (inside ``mask``) where det J of the transform is <= 0."""
    return _jacobian(transform, grid, mask)["folding_percent"]


def _jacobian(transform: Transform, grid: Grid, mask: Image | None, mapped: torch.Tensor | None = None) -> dict:
    """det J statistics on ``grid`` inside ``mask`` (a linear transform's det J is one number)."""
    from morphreg.evaluate import jacobian_determinant, jacobian_stats

    inside = None if mask is None else (mask.data[0] > 0.5).cpu().numpy()
    if transform.linear:
        det_j = np.full(grid.shape, float(torch.linalg.det(transform.matrix().detach().double())))
    else:
        det_j = jacobian_determinant(transform, grid, mapped)
    return jacobian_stats(det_j, inside)


def assess(transform: Transform, inverse: Transform | None, grid: Grid, mask: Image | None = None,
           mapped: torch.Tensor | None = None) -> dict:
    """What the result's warnings are decided from (:mod:`morphreg.evaluate.warnings`): det J
    statistics on ``grid`` (inside ``mask``), the largest displacement (on ``grid`` when ``mapped``,
    T's points of ``grid``, is given, else on a grid of half the resolution) and the inverse
    consistency on that half-resolution grid (enough for these checks, a quarter of the points)."""
    from morphreg.evaluate import displacement_magnitude, inverse_consistency

    coarse = grid.downsample(2)
    largest = displacement_magnitude(transform, coarse) if mapped is None else displacement_magnitude(transform, grid, mapped)
    quality = {"jacobian": _jacobian(transform, grid, mask, mapped), "displacement": {"max_mm": float(largest.max())}}
    if inverse is not None:
        quality["inverse_consistency"] = inverse_consistency(transform, inverse, coarse)
    return quality


def _plain(x):
    """JSON-safe copy: tensors/arrays to lists, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _plain(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        return _plain(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Grid):
        return x.to_dict()
    return x


@dataclass
class Result:
    """A registration's outcome.

    Attributes:
        transform: maps fixed world points to moving world points (mm); ``warp(moving, transform, fixed)``.
        inverse: moving -> fixed points, when the method provides one (linear, SVF-based), else None.
        warped: the moving image on the fixed grid.
        stages: per stage the resolved parameters, metric trace per level, seconds per level,
            objective before/after and whether it diverged (then it was discarded).
        timings: seconds for input checks, each stage, the final warp, and in total.
        final_metric: objective of the last kept stage at full resolution (lower is better).
        notes: what was done to the inputs that the user should know (e.g. a mask resampled).
        quality: det J statistics, largest displacement and inverse consistency (:func:`assess`);
            ``folding_percent`` (share of fixed voxels inside the fixed mask with det J <= 0) reads it.
        warnings: what deserves a red flag, ``{"kind", "text"}`` (:mod:`morphreg.evaluate.warnings`).
        inputs: the paths of the labels, masks and landmarks given (for the report).
        intensity_units: per image ("fixed", "moving"), per channel, the intensities ``{"lo", "hi"}``
            that the stages saw as 0 and 1 (:func:`morphreg.image.intensity.to_unit_range`);
            ``"shared"``: one map for both (mono-modal pairs), else one per image.
    """

    transform: Transform
    inverse: Transform | None
    warped: Image
    fixed: Image
    moving: Image
    stages: list[Mapping] = field(default_factory=list)  # StageRecords (read-only mappings)
    timings: dict = field(default_factory=dict)
    preset: str = "default"
    modality: str = "mono"
    final_metric: float | None = None
    fixed_path: str | None = None
    moving_path: str | None = None
    notes: list[str] = field(default_factory=list)
    quality: dict = field(default_factory=dict)
    warnings: list[dict] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    displacement: torch.Tensor | None = None  # (1, dim, *fixed.shape) float32 mm on the CPU: T(x) - x, as saved
    intensity_units: dict = field(default_factory=dict)  # per image, per channel {"lo", "hi"}: mapped to 0, 1 for the stages

    @property
    def folding_percent(self) -> float:
        """Share (%) of fixed voxels (inside the fixed mask) with det J <= 0 (from ``quality``)."""
        return float(self.quality.get("jacobian", {}).get("folding_percent", 0.0))

    @property
    def trace(self) -> list[list[list[float]]]:
        """Objective values per stage, per level, per iteration."""
        return [s.get("trace", []) for s in self.stages]

    def summary(self) -> dict:
        stages = []
        for s in self.stages:
            s = {k: v for k, v in s.items() if k != "trace"}
            stages.append(s)
        return _plain({
            "preset": self.preset,
            "modality": self.modality,
            "fixed": self.fixed_path,
            "moving": self.moving_path,
            "stages": stages,
            "final_metric": self.final_metric,
            "folding_percent": self.folding_percent,
            "timings": self.timings,
            "has_inverse": self.inverse is not None,
            "notes": self.notes,
            "warnings": self.warnings,
            "quality": self.quality,
            "inputs": self.inputs,
            "intensity_units": self.intensity_units,
            "transform_direction": "fixed -> moving (warped = moving sampled at T(x) for x on the fixed grid)",
            "trace": self.trace,
        })

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write the outputs (see :meth:`write`) into ``out_dir``, which appears complete or not at
        all. ``out_dir`` must be new, empty or a previous morphreg result, and never hold an input;
        ``overwrite`` allows a folder with other files (only the files of the same name are replaced)."""
        out_dir = Path(out_dir)
        with output_folder(out_dir, [self.fixed_path, self.moving_path], overwrite) as tmp:
            self.write(tmp)
        return out_dir

    def __post_init__(self):
        self._displacement_of = self.transform if self.displacement is not None else None

    def _save_displacement(self, path: Path) -> None:
        if self.displacement is not None and self._displacement_of is self.transform:
            save_displacement_field(self.displacement, self.fixed.grid, path)  # computed once by register()
        else:  # no field given, or the transform was replaced since
            self.transform.save(path, grid=self.fixed.grid)

    def write(self, folder: Path, image_suffix: str = ".nii.gz") -> None:
        """Write warped<suffix>, transform.h5 (ITK composite), displacement<suffix> (fixed grid, mm),
        inverse_displacement<suffix> (moving grid; when there is an inverse) and summary.json (which
        lists them under "outputs") into an existing ``folder`` (normally the temporary folder of
        :func:`morphreg.core.files.output_folder`). ``image_suffix``: .nii.gz, .nii, .mha or .nrrd."""
        outputs = {"warped": f"warped{image_suffix}", "transform": "transform.h5",
                   "displacement": f"displacement{image_suffix}"}
        jobs = [lambda: write_image(self.warped, folder / outputs["warped"]),
                lambda: self.transform.save(folder / outputs["transform"], grid=self.fixed.grid),
                lambda: self._save_displacement(folder / outputs["displacement"])]
        if self.inverse is not None:
            outputs["inverse_displacement"] = f"inverse_displacement{image_suffix}"
            jobs.append(lambda: self.inverse.save(folder / outputs["inverse_displacement"], grid=self.moving.grid))
        # gzip in SimpleITK and torch both release the GIL: the files are written side by side
        # (brain T1, 4 files: 9.2 s -> 6.8 s on 2 cores). Leaving the pool waits for every writer, also
        # on an error or a signal, so the caller's clean-up never races a writer.
        # ITK's HDF5 prints pages on fd 2 when a write fails (e.g. a full disk): caught, the exception says it.
        t0 = time.perf_counter()
        with captured_native_stderr(), ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            futures = [pool.submit(j) for j in jobs]
            try:
                for job in futures:
                    job.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # queued writers do not start after a failure
                raise
        summary = {**self.summary(), "outputs": outputs}
        summary["timings"] = {**summary.get("timings", {}), "write_s": time.perf_counter() - t0}  # the files above
        (folder / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
