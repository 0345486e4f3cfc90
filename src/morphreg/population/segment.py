"""``morphreg segment TARGET --atlases ATLASES.csv -o seg.nii.gz``: multi-atlas segmentation.

Every atlas image (moving) is registered to the target (fixed) as one Dask task; its labels are
warped onto the target grid (``label`` interpolation: the label whose linearly interpolated one-hot
channel is largest) and the warped maps are fused (:mod:`morphreg.population.fusion`). The atlas
table has the columns ``image, labels`` and an optional ``id``; paths are relative to the table.
Atlas labels are integer maps or one-hot stacks (channel k -> label k + 1); ``label_channels``
keeps some of them (e.g. "0": the prostate gland of the MR-TRUS stacks).

Memory: the client holds one int16 map per atlas (and a float32 weight map for ``weighted``),
e.g. 40 atlases of 69x69x64 voxels: 24 MB (+ 49 MB).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from morphreg.errors import MorphregError
from morphreg.image.image import Image
from morphreg.population.cluster import as_finished, dask_client, dashboard, lost_record, recorded, set_threads
from morphreg.population.fusion import FUSIONS, fuse, label_map, local_weights
from morphreg.core.tables import read_table

@dataclass
class Atlas:
    """One atlas: ``id`` and the absolute paths of its image and label map."""

    id: str
    image: str
    labels: str


def read_atlases(csv_path: str | Path) -> list[Atlas]:
    """The rows of an atlas table (columns image, labels [, id]); one-line errors name the file and row."""
    return [Atlas(atlas_id, paths["image"], paths["labels"])
            for atlas_id, paths in read_table(csv_path, "atlas", ("image", "labels"), (), "atlas{:03d}")]


def register_atlas(atlas: Atlas, target: str, preset: str = "default", overrides: dict | None = None,
                   modality: str = "mono", label_channels: str | None = None, weighted: bool = False,
                   threads: int = 1, seed: int = 0, target_dim: int | None = None) -> dict:
    """Register one atlas to the target and warp its labels onto the target grid (runs in a worker).
    Never raises for a bad atlas: ``{"id", "status", "error", "seconds", "final_metric", "folding_percent",
    "similarity", "labels": (*shape) int16 array, "weights": (*shape) float32 array when ``weighted``}``;
    ``similarity`` is the mean vote weight over the target grid (:func:`local_weights`), the score of
    atlas selection."""
    record: dict = {"id": atlas.id, "status": "failed", "error": None}
    with recorded(record):
        set_threads(threads)
        from morphreg.image.io import read_image
        from morphreg.register import register
        from morphreg.transforms.warp import warp

        image, labels = read_image(atlas.image), read_image(atlas.labels, labels=True)
        target_dim = target_dim or read_image(target).dim  # the caller knows it: no second read per atlas
        for path, item in ((atlas.image, image), (atlas.labels, labels)):
            if item.dim != target_dim:
                raise MorphregError(f"a {item.dim}D atlas file for a {target_dim}D target", path)
        if labels.grid != image.grid:  # fine in world mm, but the user should know
            record["note"] = (f"labels {Path(atlas.labels).name} lie on another grid than the atlas image; warped from "
                              "their own grid (world mm, label interpolation)")
        labels = label_map(labels, label_channels)
        result = register(target, image, preset, modality=modality, seed=seed, **(overrides or {}))
        warped = warp(labels, result.transform, result.fixed.grid, "label")
        weights = local_weights(result.fixed, result.warped)
        if weighted:
            record["weights"] = weights.numpy().astype(np.float32)
        record.update(status="ok", similarity=float(weights.mean()), final_metric=result.final_metric,
                      folding_percent=result.folding_percent,
                      labels=warped.data[0].numpy().astype(np.int16))
    return record


@dataclass
class Segmentation:
    """A multi-atlas segmentation of the target: fused ``labels`` (int16) and ``confidence`` (float32,
    the chosen label's share of the votes) on the target grid; per atlas its record (status, error,
    seconds, final_metric); ``warped``: each atlas' warped labels by id when asked for."""

    labels: Image
    confidence: Image
    fusion: str
    atlases: list[dict]
    seconds: float
    dashboard: str | None = None
    warped: dict[str, Image] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        return [a for a in self.atlases if a["status"] != "ok"]

    def save(self, path: str | Path, inputs=()) -> dict[str, Path]:
        """Write ``path`` (labels), ``<name>_confidence<suffix>`` and ``<name>.json`` (the atlas records);
        each file appears complete or not at all, the labels last."""
        from morphreg.core.files import atomic_path
        from morphreg.image.io import write_image

        paths = segmentation_paths(path)
        check_sidecars(path)
        write_image(self.confidence, paths["confidence"], inputs=inputs)
        with atomic_path(paths["record"], inputs) as tmp:
            record = {"written_by": "morphreg segment", "files": [p.name for p in paths.values()], "fusion": self.fusion,
                      "seconds": self.seconds, "failed": len(self.failed), "atlases": self.atlases}
            tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
        write_image(self.labels, paths["labels"], inputs=inputs)
        return paths


def segmentation_paths(path: str | Path) -> dict[str, Path]:
    """The three files of a segmentation written to ``path``: labels, confidence map, atlas records."""
    from morphreg.image.io import image_stem

    path = Path(path)
    stem = image_stem(path)
    return {"labels": path, "confidence": path.with_name(f"{stem}_confidence{path.name[len(stem):]}"),
            "record": path.with_name(f"{stem}.json")}


def check_sidecars(path: str | Path) -> None:
    """The files that ``segment -o PATH`` writes beside PATH without being named (``<name>_confidence``,
    ``<name>.json``) are replaced only when an earlier segmentation wrote them (its record names them)."""
    paths = segmentation_paths(path)
    try:
        record = json.loads(paths["record"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    ours = isinstance(record, dict) and "atlases" in record and "fusion" in record  # earlier versions: no "files"
    named = set(record.get("files", [p.name for p in paths.values()])) if ours else set()
    for key in ("confidence", "record"):
        if paths[key].exists() and paths[key].name not in named:
            raise MorphregError(f"segment writes {paths[key].name} beside its output, and the one there was not written "
                                "by morphreg: move it away or choose another output name", paths[key])


def segment(target: str | Path, atlases: str | Path | list[Atlas], fusion: str = "majority", preset: str = "default",
            overrides: dict | None = None, modality: str = "mono", label_channels: str | None = None,
            scheduler: str = "local", workers: int = 1, threads_per_worker: int = 1, seed: int = 0,
            select: int | None = None, keep_warped: bool = False, on_start=None, on_atlas=None) -> Segmentation:
    """Segment ``target`` (a path) with the atlases (a table path or :class:`Atlas` list) on Dask.

    ``select``: fuse only the ``select`` atlases that match the target best after registration (highest
    ``similarity``, the mean local-NCC vote weight; atlas selection as in Aljabar et al., NeuroImage
    2009); the records of the others say ``"selected": false``.

    ``modality`` defaults to "mono": atlases and target are normally one modality, and the automatic
    detection calls some inter-subject MR pairs multimodal (prostate obs005 vs obs050). Atlases that
    fail are recorded and left out; if none succeeds, a MorphregError says why.
    ``on_start(n_atlases, dashboard)`` / ``on_atlas(record)``: progress hooks.
    """
    from morphreg.image.io import read_image
    from morphreg.register.api import resolve_stages

    if fusion not in FUSIONS:
        raise MorphregError(f"unknown fusion {fusion!r} (choose from {', '.join(FUSIONS)})")
    if select is not None and select < 1:
        raise MorphregError(f"select must be at least 1, not {select}")
    resolve_stages(preset, overrides)  # a wrong preset or --set fails before any registration
    target = str(Path(target).resolve())
    grid = read_image(target).grid  # a readable target before any work starts
    atlases = read_atlases(atlases) if isinstance(atlases, (str, Path)) else list(atlases)
    t0 = time.perf_counter()
    maps: dict[str, torch.Tensor] = {}
    weights: dict[str, torch.Tensor] = {}
    records: dict[str, dict] = {}
    with dask_client(scheduler, workers) as client:
        link = dashboard(client)
        if on_start is not None:
            on_start(len(atlases), link)
        for atlas, rec in as_finished(client, register_atlas, atlases, target, preset, overrides, modality,
                                      label_channels, fusion == "weighted", threads_per_worker, seed, grid.dim,
                                      name="morphreg-segment",
                                      on_lost=lambda atlas, exc: lost_record("id", atlas.id, exc)):
            if rec["status"] == "ok":
                maps[atlas.id] = torch.from_numpy(rec.pop("labels"))
                if "weights" in rec:
                    weights[atlas.id] = torch.from_numpy(rec.pop("weights"))
            records[atlas.id] = rec
            if on_atlas is not None:
                on_atlas(rec)
    ordered = [records[a.id] for a in atlases]
    if not maps:
        raise MorphregError(f"no atlas could be registered (first error: {ordered[0]['error']})", target)
    ids = [a.id for a in atlases if a.id in maps]
    if select is not None:
        ids = sorted(ids, key=lambda i: -records[i]["similarity"])[:select]
        for a in atlases:
            records[a.id]["selected"] = a.id in ids
    fused, confidence = fuse([maps[i] for i in ids], grid, fusion, [weights[i] for i in ids] if weights else None)
    warped = {i: Image(maps[i], grid, name=f"atlas {i} (warped labels)") for i in ids} if keep_warped else {}
    return Segmentation(Image(fused, grid, name=f"{target} (segmentation)"), Image(confidence, grid), fusion, ordered,
                        time.perf_counter() - t0, link, warped)
