"""The protocol of a registration method (one stage of a preset) and what every method shares.

A method is one module with one class: ``name`` (the stage's ``"model"``), ``params`` (its
``model_params`` keys and their defaults: anything else is refused before the run starts) and
``run(stage, context, prior) -> StageOutcome``. It receives the previous stages' transform (``prior``,
fixed -> moving) and returns the transform after its stage (fixed -> moving), its inverse when it
has one, and a :class:`StageRecord` (what ``summary.json`` reports). The driver
(:func:`morphreg.register.api.register`) knows nothing else about a method: it runs the stages in
order, applies a stage's ``guard`` and keeps the prior when a stage diverged.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


import torch

from morphreg.core.grid import Grid
from morphreg.errors import MorphregError
from morphreg.image.image import Image
from morphreg.image.sampling import sample_points
from morphreg.optim.models import StageModel
from morphreg.optim.multires import Level, LoopOptions, StageInputs, run_stage
from morphreg.optim.optimizers import OptimizerConfig
from morphreg.optim.terms import StageLoss
from morphreg.register.presets import stage_similarity
from morphreg.register.regions import field_of_view_region
from morphreg.transforms import CompositeTransform, Transform


@dataclass
class Prior:
    """The transform of the stages so far (fixed -> moving) and its inverse (None: none, or not known)."""

    transform: Transform | None = None
    inverse: Transform | None = None


@dataclass
class StageContext:
    """What a method needs besides its stage: the inputs and the run's settings.

    label_weight, landmark_weight: the run's defaults (a stage's own keys win); seed: this stage's;
    index: the stage's position in the preset; progress: a rich Progress or None.
    """

    inputs: StageInputs
    modality: str
    index: int = 0
    seed: int = 0
    progress: Any = None
    label_weight: float = 1.0
    landmark_weight: float = 1.0


@dataclass(eq=False)
class StageRecord(Mapping):
    """One stage in ``summary.json``: the stage as run and what happened. Read-only as a mapping
    (``record["trace"]``, ``record.get("diverged")``, ``dict(record)``), the same keys as the JSON;
    ``to_dict()`` gives a JSON-ready copy. Methods set the typed fields; ``details`` holds what only
    one method reports (its keys may not be field names)."""

    index: int
    stage: dict
    levels: list | None = None
    similarity: str | None = None
    similarity_params: dict | None = None
    trace: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    initial_objective: float | None = None
    final_objective: float | None = None
    terms: dict | None = None
    diverged: bool = False
    guard: dict | None = None
    initial_transform: dict | None = None
    details: dict = field(default_factory=dict)  # method-specific entries (e.g. convex: "discrete")

    def to_dict(self) -> dict:
        clash = set(self.details) & {f.name for f in dataclasses.fields(self)}
        if clash:
            raise ValueError(f"stage record details may not set the fields {sorted(clash)}")
        out = {"index": self.index, **copy.deepcopy(self.stage)}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in ("index", "stage", "details") and value is not None:
                out[f.name] = value
        out.update(copy.deepcopy(self.details))
        return out

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and self.to_dict() == dict(other)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass
class StageOutcome:
    """transform: the map after this stage (fixed -> moving); inverse: its inverse or None;
    stage_transform: the stage's own deformable part (for the Jacobian guard), None for linear ones;
    start: what the stage started from when that is not the prior (a first linear stage's
    initialisation): the driver keeps it when the stage diverged or its guard refused it."""

    transform: Transform | None
    inverse: Transform | None
    record: StageRecord
    stage_transform: Transform | None = None
    start: Prior | None = None


class Method:
    """Base of the registry's methods; see the module docstring."""

    name: ClassVar[str]
    params: ClassVar[dict[str, Any]] = {}
    linear: ClassVar[bool] = False  # replaces a linear prior instead of composing with it

    def model_params(self, stage: dict) -> dict:
        """The stage's ``model_params`` over the defaults; an unknown key is an error naming the valid ones."""
        given = dict(stage.get("model_params") or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            valid = ", ".join(self.params) or "none"
            raise MorphregError(f"unknown {self.name} parameter(s) {', '.join(map(repr, unknown))} in model_params "
                                f"(valid: {valid})")
        return {**copy.deepcopy(self.params), **given}

    def check(self, stage: dict) -> None:
        """Refuse a stage this method cannot run, before anything runs: its parameters, and the names
        of the similarity (for both modalities), penalties and optimiser the stage uses."""
        self.model_params(stage)
        check_stage_terms(stage)

    def run(self, stage: dict, context: StageContext, prior: Prior) -> StageOutcome:
        raise NotImplementedError


# ----- what the methods share -------------------------------------------------------------------------
def check_stage_terms(stage: dict) -> None:
    """Unknown similarity, penalty or optimiser names (or optimiser keys): one error before the run."""
    from morphreg.metrics.losses import similarity_entry
    from morphreg.regularizers.penalties import penalty_function

    if "similarity" in stage:
        for modality in ("mono", "multi"):
            sim = stage["similarity"]
            if isinstance(sim, dict) and modality not in sim:
                raise MorphregError(f"similarity {sim!r}: give both 'mono' and 'multi', or one name")
            similarity_entry(stage_similarity(stage, modality)[0])
    for penalty in stage.get("penalties") or []:
        if not isinstance(penalty, dict) or "name" not in penalty:
            raise MorphregError(f"a penalty is a mapping with a 'name' (and 'weight', 'params', 'mask'), not {penalty!r}")
        penalty_function(penalty["name"])
    try:
        OptimizerConfig(**(stage.get("optimizer") or {}))
    except TypeError as exc:
        raise MorphregError(f"optimizer: {exc}".replace("OptimizerConfig.__init__() ", "")) from None


def resolve_levels(levels, fixed: Image) -> list[Level]:
    """[[shrink, sigma, iterations], ...] -> Levels. sigma: mm, "<k>vox" (k fixed voxels, the finest
    spacing) or None (= shrink / 2 fixed voxels)."""
    out = []
    for entry in levels:
        shrink, sigma, its = (list(entry) + [None, 50])[:3] if not isinstance(entry, dict) else (
            entry["shrink"], entry.get("sigma_mm"), entry.get("iterations", 50))
        if sigma is None:
            sigma = 0.0 if shrink <= 1 else 0.5 * float(shrink) * float(fixed.grid.spacing.min())
        elif isinstance(sigma, str):
            number = sigma[:-3] if sigma.endswith("vox") else ""
            try:
                sigma = float(number) * float(fixed.grid.spacing.min())
            except ValueError:
                raise MorphregError(f"level sigma {sigma!r}: give mm, '<k>vox' or None") from None
        out.append(Level(float(shrink), float(sigma), int(its)))
    return out


def stage_levels(stage: dict, fixed: Image) -> list[Level]:
    return resolve_levels(stage.get("levels", [[1, 0, 50]]), fixed)


def stage_inputs(inputs: StageInputs, stage: dict) -> StageInputs:
    """The stage's inputs: the fixed field-of-view mask when ``fov_mask`` is set and no fixed mask was
    given; the one-hot labels Gaussian-smoothed by ``label_sigma_mm`` when set (a soft
    Dice on blurred masks has a wide capture range and pulls the whole outline, not just its edge)."""
    if stage.get("fov_mask") and inputs.fixed_mask is None:
        roi = stage["fov_mask"].get("roi") if isinstance(stage["fov_mask"], dict) else None
        inputs = dataclasses.replace(inputs, fixed_mask=field_of_view_region(inputs.fixed, roi))
    sigma = float(stage.get("label_sigma_mm") or 0.0)
    if not sigma or inputs.fixed_labels is None:
        return inputs
    from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox

    def blur(img: Image) -> Image:
        return img.with_data(gaussian_filter(img.data[None].float(), sigma_mm_to_vox(sigma, img.grid))[0])

    return dataclasses.replace(inputs, fixed_labels=blur(inputs.fixed_labels), moving_labels=blur(inputs.moving_labels))


def stage_loss(stage: dict, context: StageContext) -> StageLoss:
    """What the stage minimises: its similarity for the pair's modality, penalties and term weights."""
    sim, params = stage_similarity(stage, context.modality)
    return StageLoss(sim, params, float(stage.get("similarity_weight", 1.0)), list(stage.get("penalties") or []),
                     float(stage.get("label_weight", context.label_weight)),
                     float(stage.get("landmark_weight", context.landmark_weight)))


def compose(prior: Prior, stage_transform: Transform, stage_inverse: Transform | None) -> tuple[Transform, Transform | None]:
    """prior o stage (ITK order: the stage is applied to fixed points first) and its inverse when known."""
    if prior.transform is None:
        return stage_transform, stage_inverse
    inverse = None if stage_inverse is None or prior.inverse is None else CompositeTransform([stage_inverse, prior.inverse])
    return CompositeTransform([prior.transform, stage_transform]), inverse


def new_record(stage: dict, context: StageContext, levels: list[Level] | None = None) -> StageRecord:
    lv = None if levels is None else [[x.shrink, x.sigma_mm, x.iterations] for x in levels]
    return StageRecord(index=context.index, stage=copy.deepcopy(stage), levels=lv)


def optimise(model: StageModel, stage: dict, context: StageContext, levels: list[Level], inputs: StageInputs,
             options: LoopOptions | None = None, record: StageRecord | None = None) -> StageRecord:
    """Run the one optimisation loop on ``model`` for ``stage`` and fill its record."""
    loss = stage_loss(stage, context)
    record = record or new_record(stage, context, levels)
    record.similarity, record.similarity_params = loss.similarity, dict(loss.similarity_params)
    outcome = run_stage(model, inputs, levels, loss, OptimizerConfig(**(stage.get("optimizer") or {})), options,
                        seed=context.seed, progress=context.progress, name=f"{context.index}:{stage.get('model')} {loss.similarity}")
    record.trace, record.seconds, record.terms = outcome.trace, outcome.seconds, outcome.terms
    record.initial_objective, record.final_objective, record.diverged = outcome.initial, outcome.final, outcome.diverged
    return record


def prior_points(prior: Transform | None, points: torch.Tensor) -> torch.Tensor:
    """prior(points) for (1, *shape, dim) world points (identity without a prior)."""
    return points if prior is None else prior.points(points)


def level_grid_points(grid: Grid) -> torch.Tensor:
    """(1, *grid.shape, dim) world mm of the grid's voxels."""
    return grid.points(dtype=torch.float32).unsqueeze(0)


def overlap_mask(moving: Image, points: torch.Tensor, moving_mask: Image | None,
                 fixed_mask: torch.Tensor | None) -> torch.Tensor:
    """(1, 1, *shape) {0, 1}: voxels whose mapped point lies inside the moving image (and masks)."""
    with torch.no_grad():
        w = sample_points(Image(torch.ones(1, *moving.grid.shape), moving.grid), points, "linear", 0.0)
        if moving_mask is not None:
            w = w * sample_points(moving_mask, points, "linear", 0.0)
        if fixed_mask is not None:
            w = w * fixed_mask
        return (w > 0.5).float()
