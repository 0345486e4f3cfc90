"""Thin-plate spline through corresponding landmarks (interpolating, or smoothing with ``smoothing``).

No optimisation: the spline maps the fixed landmarks onto the moving ones, after the linear stages
so far (it maps fixed points to the linearly aligned space). No inverse.
"""
from __future__ import annotations

import time

from morphreg.errors import MorphregError
from morphreg.register.methods.base import Method, Prior, StageContext, StageOutcome, compose, new_record
from morphreg.transforms import LinearTransform, ThinPlateSplineTransform


class ThinPlateSpline(Method):
    name = "tps"
    params = {"smoothing": 0.0}

    def run(self, stage: dict, context: StageContext, prior: Prior) -> StageOutcome:
        t0 = time.perf_counter()
        params = self.model_params(stage)
        inputs = context.inputs
        if inputs.landmarks is None:
            raise MorphregError("the tps method needs fixed and moving landmarks")
        p, q = inputs.landmarks
        if prior.transform is not None:
            if not isinstance(prior.transform, LinearTransform):
                raise MorphregError("a tps stage can only follow linear stages")
            q = prior.transform.inverse().points(q)
        tps = ThinPlateSplineTransform(p.detach(), q.detach(), float(params["smoothing"]), domain=inputs.fixed.grid)
        record = new_record(stage, context)
        record.seconds = [time.perf_counter() - t0]
        transform, _ = compose(prior, tps, None)
        return StageOutcome(transform, None, record, stage_transform=tps)
