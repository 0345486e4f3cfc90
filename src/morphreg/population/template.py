"""``morphreg template IMAGES... -o template.nii.gz``: unbiased groupwise template construction.

The loop of ANTs' template construction (Avants et al., NeuroImage 2010), with the shape update of
Guimond et al. (CVIU 2000):

1. Start from ``initial`` or from the average of the images (each divided by its mean intensity)
   resampled onto the first image's grid; that grid is the template grid from then on.
2. Register every image to the current template (one Dask task each): T_k maps template points to
   image k, d_k(x) = T_k(x) - x on the template grid (the whole transform: affine and deformable).
3. Average the warped images (intensity-normalised) -> W; average the displacements -> d.
4. New template = W sampled through the inverse of x -> x + step * d (a fixed-point inverse). Without
   this the template keeps the shape of its start; with it the template sits at the mean of the
   population (the mean of the T_k tends to the identity). The mean of affine displacements is the
   displacement of the mean matrix, so "mean affine" and "mean deformation" are one average here.

Files beside the output, in ``<name>_iterations/``: ``template_00`` (the start) ... ``template_K``,
``convergence.csv`` (per iteration: mean and largest |d| in mm, mean |d_k| over subjects, relative
intensity change of the template, registrations ok / failed, seconds) and ``template.json``. A rerun
with the same images and settings continues after the last finished iteration. The folder is a run
folder (:func:`morphreg.core.files.run_folder`: one run at a time, never among files morphreg did not
write), and the averages add the images in list order whichever worker finishes first, so that two
runs give bitwise the same template with any number of workers.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from morphreg.errors import MorphregError
from morphreg.image.image import Image
from morphreg.population.cluster import dask_client, dashboard, in_submission_order, lost_record, recorded, set_threads

CONVERGENCE_COLUMNS = ("iteration", "mean_update_mm", "max_update_mm", "mean_subject_displacement_mm",
                       "template_change", "registered", "failed", "seconds")


def read_image_list(list_path: str | Path) -> list[str]:
    """Image paths of a list file: one per line, relative to the file; blank lines and '#' comments skipped."""
    list_path = Path(list_path)
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MorphregError(f"cannot read the image list ({exc})", list_path) from None
    paths = [str((list_path.parent / line.strip()).resolve()) for line in lines
             if line.strip() and not line.strip().startswith("#")]
    if not paths:
        raise MorphregError("the image list names no image", list_path)
    return paths


def register_to_template(image: str, template: str, preset: str = "default", overrides: dict | None = None,
                         modality: str = "mono", threads: int = 1, seed: int = 0) -> dict:
    """Register one image to the template (runs in a worker). Never raises for a bad image:
    ``{"image", "status", "error", "seconds", "final_metric", "warped": (*shape) float32,
    "displacement": (dim, *shape) float32 mm}`` on the template grid."""
    record: dict = {"image": image, "status": "failed", "error": None}
    with recorded(record):
        set_threads(threads)
        from morphreg.register import register

        result = register(template, image, preset, modality=modality, seed=seed, **(overrides or {}))
        record.update(status="ok", final_metric=result.final_metric, folding_percent=result.folding_percent,
                      warped=result.warped.data[0].detach().float().numpy(),
                      displacement=result.displacement[0].detach().float().numpy())  # T(x) - x, as register saves it
    return record


def _normalised(data: torch.Tensor) -> torch.Tensor:
    """Intensities divided by their mean over the positive voxels (as ANTs' AverageImages normalises)."""
    positive = data[data > 0]
    return data / positive.mean() if positive.numel() else data


def initial_template(images: list[str]) -> Image:
    """The mean of the intensity-normalised images resampled (linear) onto the first image's grid."""
    from morphreg.image.io import read_image
    from morphreg.image.sampling import sample_onto

    first = read_image(images[0])
    total = torch.zeros(first.grid.shape)
    for path in images:
        image = read_image(path)
        if image.dim != first.dim:
            raise MorphregError(f"a {image.dim}D image in a {first.dim}D population", path)
        total += _normalised(sample_onto(image, first.grid).data[0].float())
    return Image(total / len(images), first.grid, name="initial template")


def shape_update(mean_warped: Image, mean_displacement: torch.Tensor, step: float) -> Image:
    """``mean_warped`` sampled through the inverse of x -> x + step * mean_displacement ((dim, *shape) mm)."""
    from morphreg.transforms.dense import DisplacementFieldTransform, fixed_point_inverse
    from morphreg.transforms.warp import warp

    if step == 0:
        return mean_warped
    grid = mean_warped.grid
    with torch.no_grad():
        mean_map = DisplacementFieldTransform((step * mean_displacement).unsqueeze(0).float(), grid)
        return warp(mean_warped, fixed_point_inverse(mean_map, grid, iterations=100, tolerance=1e-2), grid)


@dataclass
class TemplateSettings:
    """What a template run depends on (a rerun continues only when these match)."""

    images: list[str]
    preset: str = "default"
    overrides: dict | None = None
    modality: str = "mono"
    step: float = 1.0
    seed: int = 0
    initial: str | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class TemplateReport:
    template: Path
    work: Path
    convergence: list[dict]
    failed: list[dict]
    dashboard: str | None
    seconds: float


def _template_path(work: Path, iteration: int) -> Path:
    return work / f"template_{iteration:02d}.nii.gz"


def _resume(work: Path, settings: TemplateSettings) -> list[dict]:
    """Convergence rows of the finished iterations of an earlier run with the same settings."""
    state_file = work / "template.json"
    if not state_file.is_file():
        return []
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MorphregError(f"cannot read the earlier run's state ({exc}); remove the folder to start again", state_file) from None
    if state.get("settings") != json.loads(json.dumps(settings.to_dict())):
        raise MorphregError("an earlier template run with other images or settings is here: remove the folder or "
                            "choose another output name", work)
    rows = []  # the finished iterations 1..k without a gap (a later one without its predecessor is redone)
    for row in state.get("convergence", []):
        if int(row["iteration"]) != len(rows) + 1 or not _template_path(work, len(rows) + 1).is_file():
            break
        rows.append(row)
    return rows


def _earlier_template_folder(work: Path) -> set[str] | None:
    """The files of a template folder written before template folders had a manifest (its template.json, the
    templates and convergence.csv and nothing else), or None."""
    names = {p.name for p in work.iterdir()}
    ours = {n for n in names if n in STATE_FILES or (n.startswith("template_") and n.endswith(".nii.gz"))}
    return ours if "template.json" in names and ours == names else None


STATE_FILES = ("template.json", "convergence.csv")


def _save_state(work: Path, settings: TemplateSettings, rows: list[dict]) -> None:
    from morphreg.core.files import atomic_path

    with atomic_path(work / "template.json") as tmp:
        tmp.write_text(json.dumps({"settings": settings.to_dict(), "convergence": rows}, indent=2), encoding="utf-8")
    with atomic_path(work / "convergence.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CONVERGENCE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def build_template(images: list[str | Path], output: str | Path, iterations: int = 4, preset: str = "default",
                   overrides: dict | None = None, modality: str = "mono", step: float = 1.0,
                   initial: str | Path | None = None, scheduler: str = "local", workers: int = 1,
                   threads_per_worker: int = 1, seed: int = 0, on_start=None, on_image=None,
                   on_iteration=None) -> TemplateReport:
    """Build a template of ``images`` (see the module doc) and write it to ``output``.

    ``step``: the shape update's gradient step (ANTs' -g; 0 = no shape update, the template keeps the
    shape of its start). Images that fail to register in an iteration are recorded and left out of
    that iteration's averages; more than half failing stops the run. Hooks: ``on_start(n_registrations,
    dashboard)``, ``on_image(record)``, ``on_iteration(row)``.
    """
    from morphreg.core.files import check_output_file, run_folder
    from morphreg.image.io import image_stem, read_image, write_image
    from morphreg.register.api import resolve_stages

    if iterations < 1:
        raise MorphregError(f"--iterations must be at least 1, not {iterations}")
    images = [str(Path(p).resolve()) for p in images]
    if len(images) < 2:
        raise MorphregError("a template needs at least two images")
    output = check_output_file(output, images + ([str(initial)] if initial else []))
    stem = image_stem(output)  # also refuses a suffix that is not an image format, before any work
    resolve_stages(preset, overrides)  # a wrong preset or --set fails now, not after the first iteration
    work = output.with_name(f"{stem}_iterations")
    settings = TemplateSettings(images, preset, overrides, modality, float(step), int(seed),
                                str(Path(initial).resolve()) if initial else None)
    inputs = images + ([settings.initial] if initial else [])
    files = [*STATE_FILES, *(_template_path(work, i).name for i in range(iterations + 1))]
    with run_folder(work, "template", inputs, files, recognise=_earlier_template_folder):
        rows = _resume(work, settings)
        if not rows and not _template_path(work, 0).is_file():
            start = read_image(initial) if initial else initial_template(images)
            write_image(Image(start.data[:1].float(), start.grid, name="template"), _template_path(work, 0))
            _save_state(work, settings, rows)
        t0 = time.perf_counter()
        failed: list[dict] = []
        link = None
        todo = range(len(rows) + 1, iterations + 1)
        if len(todo):
            with dask_client(scheduler, workers) as client:
                link = dashboard(client)
                if on_start is not None:
                    on_start(len(todo) * len(images), link)
                for iteration in todo:
                    row, lost = _iteration(client, work, iteration, settings, threads_per_worker, on_image)
                    failed += lost
                    rows.append(row)
                    _save_state(work, settings, rows)
                    if on_iteration is not None:
                        on_iteration(row)
        final = read_image(_template_path(work, min(iterations, len(rows))))
    write_image(Image(final.data, final.grid, name="template"), output, inputs=images)  # in the output's format
    return TemplateReport(output, work, rows[:iterations], failed, link, time.perf_counter() - t0)


def _iteration(client, work: Path, iteration: int, settings: TemplateSettings, threads: int,
               on_image) -> tuple[dict, list[dict]]:
    """One round: register every image to template_{i-1}, average, shape update -> template_i."""
    from morphreg.image.io import read_image, write_image

    t0 = time.perf_counter()
    previous = read_image(_template_path(work, iteration - 1))
    warped_sum = torch.zeros(previous.grid.shape)
    displacement_sum = torch.zeros((previous.dim,) + previous.grid.shape)
    subject_mm, failed = [], []
    on_finished = (lambda image, rec: on_image(rec)) if on_image is not None else None
    for _, rec in in_submission_order(client, register_to_template, settings.images,
                                      str(_template_path(work, iteration - 1)), settings.preset, settings.overrides,
                                      settings.modality, threads, settings.seed, name=f"morphreg-template-{iteration}",
                                      on_lost=lambda image, exc: lost_record("image", image, exc), on_finished=on_finished):
        if rec["status"] == "ok":
            warped_sum += _normalised(torch.from_numpy(rec.pop("warped")))
            displacement = torch.from_numpy(rec.pop("displacement"))
            displacement_sum += displacement
            subject_mm.append(float(displacement.norm(dim=0).mean()))
        else:
            failed.append({"iteration": iteration, **rec})
    n_ok = len(subject_mm)
    if n_ok < max(1, len(settings.images) / 2):
        first = failed[0]["error"] if failed else "no image registered"
        raise MorphregError(f"iteration {iteration}: {len(failed)} of {len(settings.images)} registrations failed "
                            f"(first: {first})")
    scale = float(previous.data[previous.data > 0].mean()) if (previous.data > 0).any() else 1.0
    mean_warped = Image(warped_sum / n_ok * scale, previous.grid, name="template")
    mean_displacement = displacement_sum / n_ok
    template = shape_update(mean_warped, mean_displacement, settings.step)
    write_image(template, _template_path(work, iteration))
    update_mm = mean_displacement.norm(dim=0)
    change = float((template.data - previous.data).pow(2).mean().sqrt() / previous.data.pow(2).mean().sqrt().clamp_min(1e-12))
    row = {"iteration": iteration, "mean_update_mm": float(update_mm.mean()), "max_update_mm": float(update_mm.max()),
           "mean_subject_displacement_mm": float(np.mean(subject_mm)), "template_change": change,
           "registered": n_ok, "failed": len(failed), "seconds": time.perf_counter() - t0}
    return row, failed
