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
images (labels, landmarks, a moving mask, masked or other penalties: ``SameGridObjective.unsupported``)
runs the general evaluation instead, with the same model; summary.json says which ran ("evaluation").
"""
from __future__ import annotations

from morphreg.errors import MorphregError
from morphreg.optim.models import DenseModel
from morphreg.optim.multires import LoopOptions
from morphreg.optim.objective import SameGridObjective
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
FAST_ONLY = ("exact_gradient", "patches", "cube_field_shrink", "threads")
# Defaults that differ between the two solvers (the rest are in Dense.params).
SOLVER_DEFAULTS = {
    "generic": {"smoothing_mm": 0.0, "field_shrink": 1.0},
    "fast": {"smoothing_mm": 2.0, "field_shrink": 4.0},
}


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
        given = [k for k in FAST_ONLY if params[k] is not None]
        if params["solver"] == "generic" and given:
            raise MorphregError(f"{self.name} parameter(s) {', '.join(given)} need \"solver\": \"fast\"")
        for key, value in SOLVER_DEFAULTS[params["solver"]].items():
            params[key] = value if params[key] is None else params[key]
        if params["symmetric"] is None:
            params["symmetric"] = self.name == "svf"
        return params

    def check(self, stage: dict) -> None:
        super().check(stage)
        optimizer = (stage.get("optimizer") or {}).get("name", "adam")
        if self.model_params(stage)["patches"] and optimizer not in ("adam", "asgd"):
            raise MorphregError(f"{self.name} with patches (stochastic cubes) needs the adam or asgd optimiser, "
                                f"not {optimizer!r}")

    def run(self, stage: dict, context: StageContext, prior: Prior) -> StageOutcome:
        params = self.model_params(stage)
        inputs = stage_inputs(context.inputs, stage)
        levels = stage_levels(stage, inputs.fixed)
        why = SameGridObjective.unsupported(stage_loss(stage, context), inputs.fixed_labels is not None,
                                            inputs.landmarks is not None, inputs.moving_mask is not None)
        fast = params["solver"] == "fast" and why is None
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
        if params["solver"] == "fast":
            record.details["evaluation"] = "same-grid" if fast else f"general ({why})"
        if record.diverged:
            return StageOutcome(prior.transform, prior.inverse, record)
        stage_t = model.stage_transform()
        return StageOutcome(*compose(prior, stage_t, model.inverse_transform()), record, stage_transform=stage_t)
