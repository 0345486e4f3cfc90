"""The training configuration: a YAML file with the sections ``data``, ``model``, ``loss``, ``train``,
validated before anything runs (an unknown key or a wrong type is a one-line error naming it) and
saved in the run folder. ``--set section.key=VALUE`` (VALUE is YAML) changes one key.

Every key, its type and default is a field below; ``morphreg train --help`` points here.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from morphreg.errors import MorphregError


@dataclass
class AugmentConfig:
    """Random changes of every training batch (0 = off); see morphreg/learn/augment.py. With
    loss.endpoint > 0 the spatial ones make the synthetic pairs of supervised training."""

    rotation_deg: float = 0.0  # uniform in +-
    scale: float = 0.0  # per axis, relative, uniform in +-
    shift_mm: float = 0.0  # per axis, uniform in +-
    deformation_mm: float = 0.0  # largest |v| of the random velocity field (drawn up to this)
    control_mm: float = 20.0  # its smoothness: spacing of the random values
    noise: float = 0.0  # std of Gaussian noise (intensities are in [0, 1])
    bias: float = 0.0  # amplitude of a smooth log bias field
    gamma: float = 0.0  # std of log gamma
    contrast: float = 0.0  # relative +- of contrast (and half of it as brightness)
    mirror: list[int] = field(default_factory=list)  # axes of the model grid, each mirrored about its centre with
    #                                                 probability 1/2 (e.g. [0]: left-right, for a roughly symmetric organ;
    #                                                 on the prostate MR-TRUS pairs it was worse at step 750: RESULTS session 14)


@dataclass
class DataConfig:
    mode: str = "pairs"  # pairs (data.pairs) | unpaired (every pair of data.images) | atlas (data.atlas with each image)
    pairs: str = ""  # CSV: fixed, moving [, fixed_labels, moving_labels, fixed_mask, moving_mask, id]; relative to the CSV
    images: str | None = None  # unpaired / atlas: CSV with image [, labels, mask, id]
    atlas: str | None = None  # atlas mode: the atlas image
    atlas_labels: str | None = None  # and its labels
    atlas_side: str = "moving"  # atlas mode: the atlas is the moving image (atlas to subject) or the fixed one
    val_pairs: str | None = None  # same columns; validated every train.validate_every steps
    label_channels: str | None = None  # label channels / values that the labels term and validation use, e.g. "0"
    synthesise: bool = False  # train on images made from the label maps alone (random contrast per label: SynthMorph)
    label_sampling: str = "all"  # all: every channel (pairs in a batch need as many) | one: one random channel
    #                              pair per pair and step (e.g. the gland or one landmark; counts may differ)
    workers: int = 0  # worker processes that load and resample the pairs (0: in this process)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    dim: int = 3
    network: str = "unet"  # unet (voxelmorph-style) | dilated (the lung-MRI network's encoder, full resolution)
    kind: str = "svf"  # svf (diffeomorphic) | displacement | gradients (per-axis grid steps in (0, 2), integrated)
    #                    | bspline (cubic B-spline control points every control_mm) | none (model.affine alone)
    size: list[int] = field(default_factory=lambda: [64, 64, 64])  # model grid points, x y [z]; divisible by 2**levels
    spacing: list[float] = field(default_factory=lambda: [2.0, 2.0, 2.0])  # model grid spacing, mm
    encoder: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    decoder: list[int] = field(default_factory=lambda: [32, 32, 32, 16])
    steps: int = 7  # scaling and squaring steps (svf)
    control_mm: float = 10.0  # control point spacing, mm (bspline)
    cascade: int = 1  # coarse-to-fine stages (svf, displacement): stage k of K works at 2 ** (K - k) x the spacing on
    #                   the moving image warped by the stages before; their fields compose. size divides by 2 ** (levels + K - 1)
    percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])  # intensity normalisation
    linear: str = "affine"  # the affine head's map: affine | rigid (a rotation and a shift; with model.kind none and
    #                         loss.endpoint this is rigid training with the transformed-grid distance, TGD)
    #                         | translation (model.keypoints only)
    keypoints: int = 0  # > 0: the affine head finds this many keypoints in each image (soft-argmax of heatmaps,
    #                     one U-Net per image) and fits model.linear (translation, or affine) to them
    keypoint_maps: str = "softmax"  # softmax: free keypoints (soft-argmax) | segmentation: each keypoint is the
    #                                 centroid of a sigmoid map; the first map learns loss.segmentation_channel
    #                                 of each image (with loss.segmentation > 0)
    affine: bool = False  # an affine head first (global pooling -> matrix + shift), the deformable part after it


@dataclass
class LossConfig:
    similarity: str | None = "lncc"  # any engine similarity (morphreg.metrics.SIMILARITIES), or null
    similarity_weight: float = 1.0
    similarity_params: dict = field(default_factory=dict)
    labels: float = 0.0  # weight of 1 - soft Dice of the warped labels (weak supervision)
    label_scales_mm: list[float] = field(default_factory=list)  # multi-scale Dice: mean over Gaussian sigmas (mm,
    #                                                             0 = as is) of both label maps; [] = plain Dice
    centroids: float = 0.0  # weight of mean |centroid(fixed label) - centroid(warped label)| / 10 mm (landmark blobs)
    boxes: float = 0.0  # weight of the mean distance of the labels' bounding boxes / 10 mm (centroid +- sqrt(3) std)
    endpoint: float = 0.0  # > 0: supervised on synthetic pairs (moving = fixed through a random map S of
    #                        data.augment), weight of the mean endpoint error |T(x) - S(x)| in mm
    penalties: list[dict] = field(default_factory=lambda: [{"name": "diffusion", "weight": 1.0}])  # engine penalties;
    #   an entry with mask: rigidity acts inside the pairs' rigidity_mask column (e.g. {name: rigidity, mask: rigidity})
    symmetric: bool = False  # svf: also the reverse direction (fixed through exp(-v) onto the moving image), the data
    #                          terms averaged over both directions (bidirectional, as VoxelMorph-diff)
    affine: float = 0.0  # weight of mean |A - I| of the affine head (model.affine)
    segmentation: float = 0.0  # weight of 1 - soft Dice between each image's first keypoint map
    #                            (model.keypoint_maps segmentation) and its own label channel segmentation_channel
    segmentation_channel: int = 0  # e.g. the prostate gland
    segmentation_cross_entropy: float = 0.0  # weight, relative to the Dice part, of the binary cross-entropy of the
    #                                         maps in loss.segmentation (keeps a map from dying; see segmentation_loss)
    segmentation_centroid: float = 0.0  # weight, relative to the Dice part, of the distance / 10 mm between each
    #                                    map's centroid (the keypoint the map gives) and its target's centroid
    #                                    (prostate CV folds 0-1: no better, 9.63 / 6.86 mm against 8.81 / 6.10 and
    #                                    8.61 / 7.16 for two seeds without it; RESULTS session 14)
    gradients: float = 0.0  # weight of mean |g - 1| of the grid steps (model.kind gradients; the paper's beta)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant | cosine
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None  # torch threads (default: torch's)
    checkpoint_every: int = 100
    validate_every: int = 100
    patience: int | None = None  # early stopping: validations without improvement of the validation loss


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_value(value, kind, where: str):
    """``value`` as type ``kind`` (ints accepted as floats), else a one-line error naming ``where``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _check_value(value, next(a for a in args if a is not type(None)), where)
    if origin is list:
        if not isinstance(value, list):
            raise MorphregError(f"{where} must be a list, not {value!r}")
        return [_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool, dict) and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise MorphregError(f"{where} must be {kind.__name__}, not {value!r}")
    return value


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise MorphregError(f"{where or 'the config'} must be a mapping, not {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise MorphregError(f"unknown key {where + '.' if where else ''}{unknown[0]} (valid: {', '.join(names)})")
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        key = f"{where}.{name}" if where else name
        kwargs[name] = _build(kind, value, key) if dataclasses.is_dataclass(kind) else _check_value(value, kind, key)
    return cls(**kwargs)


def apply_sets(values: dict, items: list[str] | None) -> dict:
    """``--set section.key=VALUE`` items (VALUE is YAML) applied to the raw config mapping."""
    import yaml
    from morphreg.core.yaml_values import load_yaml

    if not isinstance(values, dict):
        raise MorphregError(f"the config must be a mapping of sections (data, model, loss, train), not {type(values).__name__}")
    for item in items or []:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2:
            raise MorphregError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.steps=500")
        try:
            value = load_yaml(text)
        except yaml.YAMLError as exc:
            raise MorphregError(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MorphregError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return values


def load_config(path: str | Path | None = None, sets: list[str] | None = None, base: Path | None = None) -> RunConfig:
    """The validated config of a YAML file (or the defaults) with ``--set`` items applied. Relative data
    paths are made absolute against the config file's folder (or ``base``)."""
    import yaml
    from morphreg.core.yaml_values import load_yaml

    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            values = load_yaml(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise MorphregError(f"cannot read the config ({exc.strerror or exc})", path) from None
        except yaml.YAMLError as exc:
            raise MorphregError(f"not valid YAML: {str(exc).splitlines()[0]}", path) from None
    try:
        config = _build(RunConfig, apply_sets(values, sets), "")
    except MorphregError as exc:
        raise MorphregError(exc.problem, path) from None
    root = base or (path.parent if path is not None else Path.cwd())
    for key in ("pairs", "val_pairs", "images", "atlas", "atlas_labels"):
        value = getattr(config.data, key)
        if value:
            setattr(config.data, key, str((root / value).resolve()))
    _check_meaning(config, path)
    return config


def _check_meaning(config: RunConfig, path) -> None:
    from morphreg.core.devices import device_name_problem
    from morphreg.learn.model import FIELD_KINDS, NETWORKS, size_multiple, structure_problems
    from morphreg.metrics import SIMILARITIES
    from morphreg.regularizers.penalties import PENALTIES

    m, loss, t = config.model, config.loss, config.train
    problems = []
    d = config.data
    if d.mode not in ("pairs", "unpaired", "atlas") or d.atlas_side not in ("moving", "fixed"):
        problems.append("data.mode must be pairs, unpaired or atlas and data.atlas_side moving or fixed")
    elif d.mode == "pairs" and not d.pairs:
        problems.append("data.pairs is required (a CSV of training pairs)")
    elif d.mode != "pairs" and (not d.images or (d.mode == "atlas" and not d.atlas)):
        problems.append(f"data.mode {d.mode} needs data.images (a CSV of images){' and data.atlas' if d.mode == 'atlas' else ''}")
    if m.dim not in (2, 3) or len(m.size) != m.dim or len(m.spacing) != m.dim:
        problems.append(f"model.dim must be 2 or 3 and model.size / model.spacing have dim values ({m.dim})")
    if m.kind not in FIELD_KINDS:
        problems.append(f"model.kind must be one of {', '.join(FIELD_KINDS)}, not {m.kind!r}")
    multiple = size_multiple(m.network, len(m.encoder), m.cascade)
    if m.network not in NETWORKS:
        problems.append(f"model.network must be one of {', '.join(NETWORKS)}, not {m.network!r}")
    if any(s % multiple for s in m.size) or min(m.spacing, default=1) <= 0 or len(m.decoder) < len(m.encoder):
        problems.append(f"model.size {m.size} must divide by {multiple} (2 ** (len(model.encoder) + cascade - 1)), model.spacing be "
                        "positive and model.decoder have at least as many levels as model.encoder")
    problems += structure_problems(m.dim, m.kind, m.affine, m.linear, m.keypoints, m.cascade, m.keypoint_maps)
    if m.control_mm <= 0:
        problems.append(f"model.control_mm must be > 0, not {m.control_mm}")
    if loss.similarity is not None and loss.similarity not in SIMILARITIES:
        problems.append(f"loss.similarity {loss.similarity!r} is not one of {', '.join(SIMILARITIES)}")
    for p in loss.penalties:
        if not isinstance(p, dict) or p.get("name") not in PENALTIES or set(p) - {"name", "weight", "params", "mask"} \
                or p.get("mask") not in (None, "rigidity"):
            problems.append(f"loss.penalties entry {p!r}: {{name: one of {', '.join(PENALTIES)}, weight, params, "
                            "mask: rigidity (inside the pairs' rigidity_mask)}}")
    if loss.similarity is None and not (loss.labels or loss.endpoint or loss.centroids or loss.boxes or loss.segmentation):
        problems.append("the loss has no data term: set loss.similarity, loss.labels, loss.centroids, loss.boxes, "
                        "loss.segmentation or loss.endpoint")
    a = config.data.augment
    if loss.endpoint and not (a.rotation_deg or a.scale or a.shift_mm or a.deformation_mm):
        problems.append("loss.endpoint (supervised training) needs random maps: set data.augment.deformation_mm "
                        "(or rotation_deg, scale, shift_mm)")
    if t.steps < 1 or t.batch_size < 1 or t.lr <= 0 or t.checkpoint_every < 1 or t.validate_every < 1:
        problems.append("train.steps, batch_size, checkpoint_every, validate_every must be >= 1 and train.lr > 0")
    if device_name_problem(t.device, "train.device"):
        problems.append(device_name_problem(t.device, "train.device"))
    if t.lr_schedule not in ("constant", "cosine"):
        problems.append(f"train.lr_schedule must be constant or cosine, not {t.lr_schedule!r}")
    if len(m.percentiles) != 2 or not 0 <= m.percentiles[0] < m.percentiles[1] <= 100:
        problems.append(f"model.percentiles must be [low, high] with 0 <= low < high <= 100, not {m.percentiles}")
    a = config.data.augment
    if not 0 <= a.scale < 1 or a.control_mm <= 0 or min(a.rotation_deg, a.shift_mm, a.deformation_mm, a.noise, a.bias,
                                                         a.gamma, a.contrast) < 0:
        problems.append("data.augment: amplitudes must be >= 0, scale < 1 and control_mm > 0")
    if not all(isinstance(axis, int) and 0 <= axis < m.dim for axis in a.mirror):
        problems.append(f"data.augment.mirror: axes of the model grid (0 .. {m.dim - 1}), not {a.mirror}")
    if config.data.workers < 0 or (t.threads is not None and t.threads < 1):
        problems.append("data.workers must be >= 0 and train.threads >= 1")
    if config.data.label_sampling not in ("all", "one"):
        problems.append(f"data.label_sampling must be all or one, not {config.data.label_sampling!r}")
    if loss.gradients and m.kind != "gradients":
        problems.append("loss.gradients weighs the grid steps of model.kind: gradients")
    if any(s < 0 for s in loss.label_scales_mm) or (loss.label_scales_mm and not loss.labels):
        problems.append(f"loss.label_scales_mm {loss.label_scales_mm} must be sigmas >= 0 mm, with loss.labels > 0")
    if loss.symmetric and (m.kind != "svf" or m.affine):
        problems.append("loss.symmetric needs model.kind svf without model.affine (the exact inverse exp(-v))")
    if loss.segmentation and (m.keypoint_maps != "segmentation" or not m.keypoints):
        problems.append("loss.segmentation supervises the keypoint maps: set model.keypoints and model.keypoint_maps: "
                        "segmentation")
    for name in ("segmentation_cross_entropy", "segmentation_centroid"):
        if getattr(loss, name) < 0:
            problems.append(f"loss.{name} must be >= 0, not {getattr(loss, name)}")
        elif getattr(loss, name) and not loss.segmentation:  # a part of loss.segmentation: alone it would do nothing
            problems.append(f"loss.{name} weighs a part of loss.segmentation: set loss.segmentation > 0")
    if loss.segmentation_channel < 0:
        problems.append(f"loss.segmentation_channel must be >= 0, not {loss.segmentation_channel}")
    if loss.affine and not m.affine:
        problems.append("loss.affine weighs the affine head: set model.affine: true (or loss.affine: 0)")
    for p in loss.penalties:
        if isinstance(p, dict) and (not isinstance(p.get("weight", 1.0), (int, float)) or not isinstance(p.get("params") or {}, dict)):
            problems.append(f"loss.penalties entry {p!r}: weight must be a number and params a mapping")
    if problems:
        raise MorphregError(problems[0], path)
