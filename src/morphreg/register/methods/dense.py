"""Dense deformable stages: a stationary velocity field (``svf``, diffeomorphic, SyN-style symmetric by
default) or a displacement field (``displacement``), on top of the previous stages.

``"solver": "fast"`` (the SyN class of the ``default`` and ``accurate`` presets) runs the same model
through the same loop with the options that make it fast on large volumes (:class:`LoopOptions`):
the moving image is resampled once through the prior onto the fixed grid and every level compares
two images on one grid; the velocity lives on a coarse grid (``field_shrink``, at least 32 points
along the shortest axis), is smoothed (``smoothing_mm``) and exponentiated there, with the
log-domain gradient (``exact_gradient`` False); Adam's step shrinks with the level's voxels; with
``patches`` = (count, size) full-resolution levels compare random cubes of the fixed foreground;
the result exp(v) is integrated on the finer ``exp_shrink`` grid. A stage that needs more than the
images (labels, landmarks, a moving mask, masked or Jacobian penalties, a similarity weight) runs the
general evaluation instead, with the same model.
"""
from __future__ import annotations

from morphreg.errors import MorphregError
from morphreg.optim.models import DenseModel
from morphreg.optim.multires import LoopOptions, StageInputs
from morphreg.optim.terms import StageLoss
from morphreg.register.methods.base import (
    Method,
    Prior,
    StageContext,
    StageOutcome,
    compose,
    optimise,
    stage_inputs,
    stage_levels,
    stage_loss,
)

SOLVERS = ("generic", "fast")
SAME_GRID_PENALTIES = ("diffusion", "bending", "elastic")  # act on the velocity itself
# Defaults that differ between the two solvers (the rest are in Dense.params).
SOLVER_DEFAULTS = {
    "generic": {"smoothing_mm": 0.0, "field_shrink": 1.0},
    "fast": {"smoothing_mm": 2.0, "field_shrink": 4.0},
}


def same_grid_possible(loss: StageLoss, inputs: StageInputs) -> bool:
    """Whether the fast same-grid evaluation covers everything the stage minimises."""
    return ((inputs.fixed_labels is None or not loss.label_weight)
            and (inputs.landmarks is None or not loss.landmark_weight)
            and inputs.moving_mask is None and loss.similarity_weight == 1.0
            and all(p.get("mask") is None and p["name"] in SAME_GRID_PENALTIES for p in loss.penalties))


class Dense(Method):
    """``"model": "svf" | "displacement"``; see the module docstring."""

    params = {"solver": "generic", "symmetric": None, "smoothing_mm": None, "field_shrink": None, "steps": 7,
              "exact_gradient": None, "exp_shrink": None, "patches": None, "cube_field_shrink": None, "threads": None}

    def __init__(self, kind: str):
        self.name = kind

    def model_params(self, stage: dict) -> dict:
        params = super().model_params(stage)
        if params["solver"] not in SOLVERS:
            raise MorphregError(f"unknown {self.name} solver {params['solver']!r} (choose from {', '.join(SOLVERS)})")
        if params["solver"] == "fast" and self.name != "svf":
            raise MorphregError("the fast solver is for svf stages")
        for key, value in SOLVER_DEFAULTS[params["solver"]].items():
            params[key] = value if params[key] is None else params[key]
        if params["symmetric"] is None:
            params["symmetric"] = self.name == "svf"
        return params

    def run(self, stage: dict, context: StageContext, prior: Prior) -> StageOutcome:
        params = self.model_params(stage)
        inputs = stage_inputs(context.inputs, stage)
        levels = stage_levels(stage, inputs.fixed)
        fast = params["solver"] == "fast" and same_grid_possible(stage_loss(stage, context), inputs)
        exact = params["exact_gradient"] if params["exact_gradient"] is not None else not fast
        model = DenseModel(prior.transform, inputs.fixed.grid, self.name, bool(params["symmetric"]),
                           float(params["smoothing_mm"]), float(params["field_shrink"]), int(params["steps"]),
                           exact_gradient=bool(exact) if fast else True, min_field_points=32 if fast else 0,
                           exp_shrink=None if params["exp_shrink"] is None else float(params["exp_shrink"]))
        options = None
        if fast:
            patches = params["patches"]
            options = LoopOptions(same_grid=True, patches=None if not patches else (int(patches[0]), int(patches[1])),
                                  cube_field_shrink=params["cube_field_shrink"], level_step_scale=True,
                                  threads=params["threads"])
        record = optimise(model, stage, context, levels, inputs, options)
        if record.diverged:
            return StageOutcome(prior.transform, prior.inverse, record)
        stage_t = model.stage_transform()
        return StageOutcome(*compose(prior, stage_t, model.inverse_transform()), record, stage_transform=stage_t)
