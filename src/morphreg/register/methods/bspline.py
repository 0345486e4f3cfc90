"""Cubic B-spline free-form deformation on top of the previous stages (Rueckert et al. 1999).

The control spacing halves at each level (exact refinement) down to ``control_spacing_mm`` at the
last level (:class:`morphreg.optim.models.BSplineModel`); the result composes with the prior.
"""
from __future__ import annotations

from morphreg.optim.models import BSplineModel
from morphreg.register.methods.base import (
    Method,
    Prior,
    StageContext,
    StageOutcome,
    compose,
    optimise,
    stage_inputs,
    stage_levels,
)


class BSpline(Method):
    name = "bspline"
    params = {"control_spacing_mm": 10.0, "refine": True}

    def run(self, stage: dict, context: StageContext, prior: Prior) -> StageOutcome:
        params = self.model_params(stage)
        inputs = stage_inputs(context.inputs, stage)
        levels = stage_levels(stage, inputs.fixed)
        model = BSplineModel(prior.transform, inputs.fixed.grid, float(params["control_spacing_mm"]), len(levels),
                             bool(params["refine"]))
        record = optimise(model, stage, context, levels, inputs)
        if record.diverged:
            return StageOutcome(prior.transform, prior.inverse, record)
        stage_t = model.stage_transform()
        return StageOutcome(*compose(prior, stage_t, model.inverse_transform()), record, stage_transform=stage_t)
