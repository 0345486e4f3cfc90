"""The registry of methods, the one loop and the loss terms (issue 11, items 1-3).

Each built-in method reproducing its golden result through the registry is test_golden.py.
"""
from __future__ import annotations

import ast
import itertools
import json
from pathlib import Path

import pytest
import torch

from morphreg.core.grid import Grid
from morphreg.data.phantom import make_phantom_pair
from morphreg.errors import MorphregError
from morphreg.metrics import SIMILARITIES, similarity_term, soft_dice
from morphreg.metrics.losses import ngf_loss
from morphreg.optim.cubes import PatchSampler, foreground
from morphreg.optim.models import DenseModel
from morphreg.optim.objective import SameGridObjective
from morphreg.optim.optimizers import OptimizerConfig, minimize
from morphreg.optim.terms import PenaltyTerm, StageLoss, loss_terms, total
from morphreg.register import register
from morphreg.register.methods import METHODS, Method, StageOutcome, add_method, get_method, remove_method
from morphreg.register.methods.base import compose, new_record
from morphreg.transforms import TranslationTransform

SRC = Path(__file__).resolve().parents[1] / "src" / "morphreg"


@pytest.fixture(scope="module")
def pair():
    return make_phantom_pair(dim=2, size=32, spacing=1.5, seed=3)


# ----- the registry -----------------------------------------------------------------------------------
def test_unknown_method_is_one_error_naming_the_choices(pair):
    with pytest.raises(MorphregError, match=r"unknown method \(stage model\) 'rigidd'.*rigid, similarity, affine"):
        register(pair.fixed, pair.moving, [{"model": "rigidd"}])


@pytest.mark.parametrize("model", ["rigid", "bspline", "svf", "displacement", "demons", "convex", "tps"])
def test_an_unknown_parameter_names_the_key_and_the_valid_ones(pair, model):
    with pytest.raises(MorphregError, match=rf"unknown {model} parameter\(s\) 'smothing_mm'.*valid: "):
        register(pair.fixed, pair.moving, [{"model": model, "model_params": {"smothing_mm": 1.0}}])


def test_every_stage_is_checked_before_anything_runs(pair, monkeypatch):
    ran = []
    rigid = METHODS["rigid"]
    monkeypatch.setattr(type(rigid), "run", lambda self, *a: ran.append(1))
    with pytest.raises(MorphregError, match="unknown bspline parameter"):
        register(pair.fixed, pair.moving, [{"model": "rigid"}, {"model": "bspline", "model_params": {"spacing": 5}}])
    assert not ran
    with pytest.raises(MorphregError, match="unknown svf solver 'fastest'"):
        register(pair.fixed, pair.moving, [{"model": "svf", "model_params": {"solver": "fastest"}}])
    with pytest.raises(MorphregError, match="unknown init 'centre'"):
        register(pair.fixed, pair.moving, [{"model": "rigid", "init": "centre"}])


class CentreShift(Method):
    """A toy method: the translation between the intensity centres of mass (no optimisation)."""

    name = "centre-shift"
    params = {"fraction": 1.0}

    def run(self, stage, context, prior):
        params = self.model_params(stage)
        f, m = context.inputs.fixed, context.inputs.moving

        def centre(img):
            w = img.data[0].double().clamp(min=0)
            pts = img.grid.points(dtype=torch.float64)
            return (pts * w[..., None]).sum(tuple(range(img.dim))) / w.sum()

        shift = params["fraction"] * (centre(m) - centre(f))
        t = TranslationTransform(f.dim, translation=shift.float())
        record = new_record(stage, context)
        record.details["shift_mm"] = shift.tolist()
        return StageOutcome(*compose(prior, t, t.inverse()), record, stage_transform=None)


def test_a_method_registered_in_a_test_runs_through_register_and_chains_with_built_in_ones(pair, tmp_path):
    add_method(CentreShift())
    try:
        with pytest.raises(MorphregError, match="already registered"):
            add_method(CentreShift())
        r = register(pair.fixed, pair.moving, [{"model": "centre-shift", "model_params": {"fraction": 1.0}},
                                               {"model": "svf", "levels": [[2, None, 5]]}])
        assert [s["model"] for s in r.stages] == ["centre-shift", "svf"]
        assert len(r.stages[0]["shift_mm"]) == 2 and not r.stages[1]["diverged"]
        assert r.inverse is not None  # translation inverse o svf inverse
        r.save(tmp_path / "out")
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["stages"][0]["model"] == "centre-shift" and "shift_mm" in summary["stages"][0]
        with pytest.raises(MorphregError, match=r"unknown centre-shift parameter\(s\) 'frac'.*valid: fraction"):
            register(pair.fixed, pair.moving, [{"model": "centre-shift", "model_params": {"frac": 1}}])
    finally:
        remove_method("centre-shift")
    with pytest.raises(MorphregError):
        get_method("centre-shift")


def test_stage_records_are_typed_and_read_only(pair):
    r = register(pair.fixed, pair.moving, "affine", levels=[[2, None, 5]])
    rec = r.stages[1]
    assert rec.final_objective == rec["final_objective"] and rec.get("diverged") is False
    assert rec["model"] == "affine" and rec["levels"] == [[2.0, rec.levels[0][1], 5]]
    with pytest.raises(TypeError):
        rec["model"] = "rigid"  # a Mapping, not a dict: modules cannot edit each other's records
    json.dumps(rec.to_dict())


# ----- one loop ---------------------------------------------------------------------------------------
def test_one_adam_and_one_level_loop_in_the_package():
    """Fast SyN runs on the generic loop: no module of the classical engine but the optimisers uses
    torch's optimisers (network training does, in learn/train.py: torch's Adam and its state_dict make
    --resume exact), and no module but multires loops over levels calling minimize."""
    optimisers, minimizers = set(), set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("Adam", "AdamW", "SGD", "LBFGS", "optim"):
                optimisers.add(path.name)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.optim"):
                optimisers.add(path.name)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "minimize":
                minimizers.add(path.name)
    assert optimisers == {"optimizers.py", "train.py"}, optimisers
    assert minimizers == {"multires.py"}, minimizers


def test_stochastic_adam_runs_every_iteration_and_keeps_the_last_iterate():
    def run(stochastic: bool):
        x, calls = torch.zeros(3, requires_grad=True), itertools.count()

        def fn():  # values of different samples are not comparable: here they drift upwards
            return (x - 1).pow(2).sum() + 2.0 * next(calls)

        trace = minimize(fn, [x], [1.0], 30, OptimizerConfig("adam", lr=0.1, tolerance=1e-3, patience=3), stochastic=stochastic)
        return trace, x.detach()

    trace, x = run(True)
    assert len(trace) == 30 and float(x.min()) > 0.5  # all steps taken, the last iterate kept
    trace, x = run(False)
    assert len(trace) < 30 and torch.equal(x, torch.zeros(3))  # stopped; the best (first) value kept
    with pytest.raises(MorphregError, match="stochastic"):
        minimize(lambda: torch.zeros(()), [torch.zeros(1, requires_grad=True)], [1.0], 3, OptimizerConfig("lbfgs"),
                 stochastic=True)


def test_the_fast_path_passes_the_grid_to_ngf():
    """The old fast solver computed NGF in voxel units; the same-grid objective gets the grid from the registry."""
    grid = Grid([24, 20], [0.0, 0.0], [2.5, 0.7])
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 20, 24, generator=g), 3, 1, 1)
    m = torch.roll(f, 1, -1)
    model = DenseModel(None, grid, "svf", symmetric=False)
    model.start_level(grid)
    objective = SameGridObjective(f, m, grid, StageLoss("ngf"))
    value = objective.probe(model)
    assert value == pytest.approx(float(ngf_loss(f, m, grid=grid)), rel=1e-5)
    assert abs(value - float(ngf_loss(f, m))) > 1e-3  # voxel units would differ on this anisotropic grid
    assert SIMILARITIES["ngf"].needs_grid and not SIMILARITIES["lncc"].needs_grid


def test_same_grid_objective_on_cubes_draws_reproducible_samples():
    grid = Grid([16, 16, 16], [0.0] * 3, 1.0)
    f = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    sampler = PatchSampler(grid, foreground(f), 2, 6, seed=4)
    model = DenseModel(None, grid, "svf")
    model.start_level(grid)
    a = SameGridObjective(f, f, grid, StageLoss("mse"), sampler=sampler, probe_seed=9)
    b = SameGridObjective(f, f.flip(-1), grid, StageLoss("mse"), sampler=PatchSampler(grid, foreground(f), 2, 6, seed=4),
                          probe_seed=9)
    assert a.probe(model) == 0.0 and b.probe(model) > 0 and b.probe(model) == b.probe(model)
    assert a.probe_points.shape == (1, 8, 6, 6, 6, 3)  # 4 fixed draws of 2 cubes


# ----- loss terms -------------------------------------------------------------------------------------
def test_loss_terms_are_named_weighted_and_batched():
    g = torch.Generator().manual_seed(2)
    grid = Grid([12, 10], [0.0, 0.0], [1.0, 2.0])
    fixed, warped = torch.rand(2, 1, 10, 12, generator=g), torch.rand(2, 1, 10, 12, generator=g)
    fl = (torch.rand(2, 3, 10, 12, generator=g) > 0.5).float()
    wl = (torch.rand(2, 3, 10, 12, generator=g) > 0.5).float()
    p, q = torch.rand(2, 5, 2, generator=g) * 10, torch.rand(2, 5, 2, generator=g) * 10
    field = torch.rand(2, 2, 10, 12, generator=g)
    loss = StageLoss("ncc", {}, 0.5, [{"name": "diffusion", "weight": 2.0}], label_weight=3.0, landmark_weight=4.0)
    terms = loss_terms(loss, fixed=fixed, warped=warped, grid=grid, fixed_labels=fl, warped_labels=wl,
                       mapped_points=p, target_points=q, field=field, field_grid=grid,
                       penalties=[PenaltyTerm("diffusion", 2.0)])
    assert list(terms) == ["similarity", "labels", "landmarks", "diffusion"]
    assert float(terms["labels"]) == pytest.approx(3.0 * float(1 - soft_dice(fl, wl).mean()))
    assert soft_dice(fl, wl).shape == (2,)  # one value per pair of the batch
    assert float(terms["landmarks"]) == pytest.approx(4.0 * float(((p - q) ** 2).sum(-1).mean()) / 100)
    assert float(terms["similarity"]) == pytest.approx(0.5 * float(similarity_term("ncc", fixed, warped)))
    assert float(total(terms)) == pytest.approx(sum(float(v) for v in terms.values()))
    # gradients flow to every input that a network would predict
    field.requires_grad_(True)
    total(loss_terms(loss, field=field, field_grid=grid, penalties=[PenaltyTerm("diffusion", 2.0)])).backward()
    assert field.grad is not None and float(field.grad.abs().sum()) > 0


def test_the_same_penalty_twice_adds_up():
    grid = Grid([10, 10], [0.0, 0.0], 1.0)
    field = torch.rand(1, 2, 10, 10, generator=torch.Generator().manual_seed(5))
    one = loss_terms(StageLoss(None), field=field, field_grid=grid, penalties=[PenaltyTerm("bending", 1.0)])
    mask = torch.ones(1, 1, 10, 10)
    two = loss_terms(StageLoss(None), field=field, field_grid=grid,
                     penalties=[PenaltyTerm("bending", 1.0), PenaltyTerm("bending", 2.0, mask=mask)])
    assert float(two["bending"]) == pytest.approx(3 * float(one["bending"]))


@pytest.mark.parametrize("stage, message", [
    ({"model": "rigid", "similarity": "nccc"}, "unknown similarity 'nccc'"),
    ({"model": "svf", "penalties": [{"name": "bend"}]}, "unknown penalty 'bend'"),
    ({"model": "affine", "optimizer": {"nmae": "adam"}}, "unexpected keyword argument 'nmae'"),
    ({"model": "svf", "model_params": {"patches": [2, 8]}}, 'need "solver": "fast"'),
    ({"model": "svf", "model_params": {"solver": "fast", "patches": [2, 8]}, "optimizer": {"name": "lbfgs"}},
     "needs the adam or asgd optimiser"),
])
def test_stage_terms_are_checked_before_the_run(pair, stage, message):
    with pytest.raises(MorphregError, match=message):
        register(pair.fixed, pair.moving, [stage])


def test_the_same_grid_loop_refuses_what_it_does_not_evaluate(pair):
    from morphreg.optim.multires import Level, LoopOptions, StageInputs, run_stage

    model = DenseModel(None, pair.fixed.grid, "svf")
    inputs = StageInputs(pair.fixed, pair.moving, moving_mask=pair.moving.with_data(torch.ones_like(pair.moving.data)))
    with pytest.raises(MorphregError, match="does not cover its moving mask"):
        run_stage(model, inputs, [Level(1, 0, 2)], StageLoss("mse"), OptimizerConfig(), LoopOptions(same_grid=True))


def test_fast_stage_says_which_evaluation_ran(pair):
    stage = {"model": "svf", "model_params": {"solver": "fast"}, "levels": [[2, None, 3]]}
    assert register(pair.fixed, pair.moving, [stage]).stages[0]["evaluation"] == "same-grid"
    r = register(pair.fixed, pair.moving, [stage], fixed_labels=pair.fixed_labels, moving_labels=pair.moving_labels)
    assert r.stages[0]["evaluation"] == "general (label term)"


def test_records_compare_as_mappings_and_details_cannot_hide_fields(pair):
    rec = register(pair.fixed, pair.moving, [{"model": "rigid", "levels": [[2, None, 3]]}]).stages[0]
    assert rec == rec.to_dict() and dict(rec) == rec.to_dict()
    rec.details["diverged"] = True
    with pytest.raises(ValueError, match="diverged"):
        rec.to_dict()


def test_a_frozen_svf_caches_its_exponential_until_the_velocity_changes():
    from morphreg.transforms import StationaryVelocityFieldTransform

    grid = Grid([12, 10], [0.0, 0.0], 1.0)
    v = torch.randn(1, 2, 10, 12, generator=torch.Generator().manual_seed(1))
    t = StationaryVelocityFieldTransform(v.clone(), grid)  # (the parameter would share v's storage)
    assert t.field() is not t.field()  # not frozen: computed each time
    t.freeze()
    first = t.field()
    assert t.field() is first
    with torch.no_grad():
        t.velocity.mul_(2)  # in place: a new version
    assert t.field() is not first and torch.allclose(t.field(), StationaryVelocityFieldTransform(2 * v, grid).field())
    d = t.as_displacement()
    with torch.no_grad():
        d.field.add_(1.0)
    assert torch.allclose(t.field(), StationaryVelocityFieldTransform(2 * v, grid).field())  # the cache is not shared


def test_a_result_writes_the_field_of_its_current_transform(pair, tmp_path):
    from morphreg.image.io import read_image

    r = register(pair.fixed, pair.moving, "affine", levels=[[2, None, 3]])
    assert r.displacement is not None and r.displacement.dtype == torch.float32
    r.transform = TranslationTransform(2, translation=[3.0, 0.0])
    r.save(tmp_path / "out")
    field = read_image(tmp_path / "out" / "displacement.nii.gz", dtype=torch.float64)
    assert torch.allclose(field.data[0], torch.full_like(field.data[0], 3.0), atol=1e-5)
