"""Linear stages: translation, rigid, similarity, affine (one class, four registry entries).

The first linear stage starts from its ``init`` (``identity``, ``geometry``, ``moments``,
``principal_axes``, ``fft``, or ``labels``: the centres of mass of the label maps) unless the run
has an initial transform; a later one refines the linear transform so far (affine starts from rigid).
Parameters are optimised about the fixed image centre, scaled so one unit moves the domain's corners
by about 1 mm (:class:`morphreg.optim.models.LinearModel`).
"""
from __future__ import annotations

from morphreg.errors import MorphregError
from morphreg.optim.models import LinearModel
from morphreg.optim.multires import StageInputs
from morphreg.register.initialize import initialize
from morphreg.register.methods.base import (
    Method,
    Prior,
    StageContext,
    StageOutcome,
    new_record,
    optimise,
    stage_inputs,
    stage_levels,
)
from morphreg.transforms import LinearTransform, Transform

INITS = ("identity", "geometry", "moments", "principal_axes", "fft", "labels")


def initial_linear(inputs: StageInputs, name: str, params: dict) -> Transform:
    """The initial rigid transform; "labels" = centres of mass of the label maps (needs labels)."""
    if name == "labels":
        if inputs.fixed_labels is None:
            name = "geometry"  # label-driven presets still run (image-only) without labels
        else:
            fl, ml = inputs.fixed_labels, inputs.moving_labels
            return initialize(fl.with_data(fl.data.sum(0, keepdim=True)), ml.with_data(ml.data.sum(0, keepdim=True)),
                              "moments", **params)
    return initialize(inputs.fixed, inputs.moving, name, inputs.fixed_mask, inputs.moving_mask, **params)


def init_spec(stage: dict) -> tuple[str, dict]:
    """A linear stage's ``init``: a name, or [name, {parameters}] (default identity)."""
    init = stage.get("init") or "identity"
    return (init[0], dict(init[1])) if isinstance(init, (list, tuple)) else (init, {})


class Linear(Method):
    """``"model": "translation" | "rigid" | "similarity" | "affine"``; see the module docstring."""

    params = {"center": None}  # rotation centre in mm (default: the fixed image centre)
    linear = True

    def __init__(self, kind: str):
        self.name = kind

    def check(self, stage: dict) -> None:
        super().check(stage)
        name, _ = init_spec(stage)
        if name not in INITS:
            raise MorphregError(f"unknown init {name!r} of a {self.name} stage (choose from {', '.join(INITS)})")

    def run(self, stage: dict, context: StageContext, prior: Prior) -> StageOutcome:
        params = self.model_params(stage)
        inputs = stage_inputs(context.inputs, stage)
        levels = stage_levels(stage, inputs.fixed)
        record = new_record(stage, context, levels)
        start = None
        if prior.transform is None:
            t0 = initial_linear(context.inputs, *init_spec(stage))
            prior = start = Prior(t0, t0.inverse())
            record.initial_transform = t0.to_dict()
        elif not isinstance(prior.transform, LinearTransform):
            raise MorphregError(f"a {self.name} stage cannot follow a deformable stage")
        model = LinearModel(self.name, inputs.fixed.grid, prior.transform, params["center"])
        optimise(model, stage, context, levels, inputs, record=record)
        if record.diverged:
            return StageOutcome(prior.transform, prior.inverse, record, start=start)
        return StageOutcome(model.stage_transform(), model.inverse_transform(), record, start=start)
