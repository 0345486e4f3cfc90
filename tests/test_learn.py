"""Learned registration (issue 13, first part): networks on a physical model grid, the trainer with
exact resume, model files without pickled code, predict on any grid, the CLI."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from _cli import cli, one_line_error
from morphreg.data.phantom import make_phantom_pair
from morphreg.errors import MorphregError
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.io import read_image, write_image
from morphreg.learn.config import load_config
from morphreg.learn.data import collate
from morphreg.learn.model import ModelSpace, RegistrationNet, load_model, save_model
from morphreg.learn.networks import average_pool, grid_gradients, integrate_gradients
from morphreg.learn.augment import random_map, synthesised_pair
from morphreg.core.sampling import sample
from morphreg.learn.train import Trainer, batch_loss, changed_batch
from morphreg.learn.zoo import shipped_models
from morphreg.metrics.overlap import soft_dice
from morphreg.metrics.points import centroid_distance

CONFIG_2D = """
data: {pairs: train.csv, val_pairs: val.csv}
model: {dim: 2, size: [32, 32], spacing: [2.5, 2.5], encoder: [8, 16, 16], decoder: [16, 16, 16, 8]}
loss: {similarity: mse, labels: 0.5, penalties: [{name: diffusion, weight: 0.1}]}
train: {steps: 6, batch_size: 2, lr: 0.001, checkpoint_every: 3, validate_every: 3, seed: 1}
"""


def _pairs(folder, dim: int = 2, n: int = 4, size: int = 40):
    rows = []
    for i in range(n):
        p = make_phantom_pair(dim=dim, size=size, spacing=2.0, seed=i, magnitude_mm=5.0)
        for key, image in [("fixed", p.fixed), ("moving", p.moving), ("fixed_labels", p.fixed_labels),
                           ("moving_labels", p.moving_labels)]:
            write_image(image, folder / f"{key}{i}.nii.gz")
        rows.append({k: f"{k}{i}.nii.gz" for k in ("fixed", "moving", "fixed_labels", "moving_labels")})
    for name, part in (("train.csv", rows[:-1]), ("val.csv", rows[-1:])):
        with open(folder / name, "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(part)


@pytest.fixture()
def run_2d(tmp_path, one_thread):
    _pairs(tmp_path)
    (tmp_path / "cfg.yaml").write_text(CONFIG_2D)
    return tmp_path


def _training_loss(trainer: Trainer) -> float:
    with torch.no_grad():
        terms, _, _ = batch_loss(trainer.net, collate(trainer.pairs), trainer.objective)
    return float(sum(terms.values()))


@pytest.mark.parametrize("dim, affine, kind, cascade", [(2, False, "svf", 1), (3, False, "svf", 1), (2, True, "svf", 1),
                                                        (2, False, "bspline", 1), (2, True, "svf", 2)])
def test_training_reduces_the_loss(tmp_path, one_thread, dim, affine, kind, cascade):
    _pairs(tmp_path, dim=dim, n=3, size=40 if dim == 2 else 20)
    size, spacing = ([32, 32], [2.5, 2.5]) if dim == 2 else ([16, 16, 16], [2.5, 2.5, 2.5])
    config = load_config(None, [
        f"data.pairs={tmp_path / 'train.csv'}", f"model.dim={dim}", f"model.size={size}", f"model.spacing={spacing}",
        "model.encoder=[8,16]", "model.decoder=[16,16,8]", "loss.similarity=mse", "loss.labels=1.0",
        "train.steps=60", "train.lr=0.003", "train.batch_size=2", "train.checkpoint_every=60",
        f"model.affine={str(affine).lower()}", f"loss.affine={0.1 if affine else 0}", f"model.kind={kind}",
        "model.control_mm=10", f"loss.boxes={0.5 if kind == 'bspline' else 0}", f"model.cascade={cascade}"])
    trainer = Trainer(config, tmp_path / "run")
    before = _training_loss(trainer)
    trainer.fit()
    after = _training_loss(trainer)
    assert after < 0.8 * before, (before, after)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and {"similarity", "labels", "diffusion"} <= set(rows[0])  # logged term by term
    assert ("affine" in rows[0]) == affine and ("boxes" in rows[0]) == (kind == "bspline")
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000


def test_resume_continues_exactly(run_2d):
    straight = Trainer(load_config(run_2d / "cfg.yaml"), run_2d / "straight")
    straight.fit()
    first = Trainer(load_config(run_2d / "cfg.yaml", ["train.steps=3"]), run_2d / "resumed")
    first.fit()
    second = Trainer(load_config(run_2d / "cfg.yaml"), run_2d / "resumed", resume=True)
    assert second.step == 3
    second.fit()
    for (name, a), b in zip(straight.net.state_dict().items(), second.net.state_dict().values()):
        assert torch.equal(a, b), name
    rows = {name: list(csv.DictReader(open(run_2d / name / "metrics.csv"))) for name in ("straight", "resumed")}
    assert [r["loss"] for r in rows["straight"]] == [r["loss"] for r in rows["resumed"]]


def test_resume_before_the_first_checkpoint_starts_again(run_2d):
    """A run stopped before its first checkpoint leaves config.yaml only: --resume trains it from step 0 (the
    same result as a straight run), where "not empty" had left it neither resumable nor restartable."""
    straight = Trainer(load_config(run_2d / "cfg.yaml"), run_2d / "straight")
    straight.fit()
    stopped = run_2d / "stopped"

    def stop(step, row):
        raise KeyboardInterrupt  # at step 1: before the first checkpoint (every 3 steps)

    with pytest.raises(KeyboardInterrupt):
        Trainer(load_config(run_2d / "cfg.yaml"), stopped).fit(stop)
    assert sorted(p.name for p in stopped.iterdir()) == [".morphreg.json", "config.yaml"]
    with pytest.raises(MorphregError, match="not empty"):
        Trainer(load_config(run_2d / "cfg.yaml"), stopped)
    with pytest.raises(MorphregError, match="differs"):
        Trainer(load_config(run_2d / "cfg.yaml", ["train.lr=0.5"]), stopped, resume=True)
    again = Trainer(load_config(run_2d / "cfg.yaml"), stopped, resume=True)
    assert again.step == 0
    again.fit()
    for (name, a), b in zip(straight.net.state_dict().items(), again.net.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(MorphregError, match="nothing to resume"):
        Trainer(load_config(run_2d / "cfg.yaml"), run_2d / "never", resume=True)


def test_model_file_round_trip_without_pickled_code(tmp_path):
    torch.manual_seed(0)
    net = RegistrationNet(ModelSpace((16, 16), (2.0, 2.0)), "displacement", (8, 8), (8, 8, 8))
    torch.nn.init.normal_(net.head.conv.weight, std=0.05)
    save_model(net, tmp_path / "m.pt", card={"note": "test"})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)  # plain tensors and containers only
    assert payload["config"]["kind"] == "displacement"
    loaded, card = load_model(tmp_path / "m.pt")
    assert card == {"note": "test"}
    pair = make_phantom_pair(dim=2, size=30, spacing=1.5, seed=0)
    a, b = net.eval().predict(pair.fixed, pair.moving), loaded.predict(pair.fixed, pair.moving)
    points = pair.fixed.grid.points()
    assert torch.equal(a.points(points), b.points(points)) and not torch.allclose(a.points(points), points)


def _oblique(image: Image, angle_deg: float) -> Image:
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    rotation = np.array([[c, -s], [s, c]])
    g = image.grid
    return Image(image.data, Grid(g.size, rotation @ g.origin, g.spacing, rotation @ g.direction), image.name)


@pytest.mark.parametrize("affine, kind, cascade", [(False, "svf", 1), (True, "svf", 1), (False, "bspline", 1),
                                                   (True, "displacement", 2)])
def test_prediction_follows_the_fixed_image_in_world_space(tmp_path, affine, kind, cascade):
    # Odd sizes, oblique directions: the model grid follows the fixed image, so turning both images in
    # the world turns the predicted transform with them: T_R(R p) = R T(p) (with an affine head too).
    torch.manual_seed(0)
    net = RegistrationNet(ModelSpace((16, 16), (2.0, 2.0)), kind, (8, 8), (8, 8, 8), affine=affine,
                          control_mm=8.0, cascade=cascade).eval()
    for head in [net.head] + [stage[1] for stage in net.refiners]:
        torch.nn.init.normal_(head.conv.weight, std=0.5)
    if affine:
        torch.nn.init.normal_(net.affine_head.linear.weight, std=0.2)
    pair = make_phantom_pair(dim=2, size=37, spacing=1.5, seed=3)
    fixed = Image(pair.fixed.data[:, :, :33], Grid((33, 37), pair.fixed.grid.origin, (1.5, 1.5)))  # 37 x 33
    base = net.predict(fixed, pair.moving)
    turned = net.predict(_oblique(fixed, 30.0), _oblique(pair.moving, 30.0))
    r = torch.as_tensor(_oblique(fixed, 30.0).grid.direction, dtype=torch.float32)
    p = fixed.grid.points().reshape(-1, 2)
    assert (base.points(p) - p).norm(dim=-1).max() > 0.5  # a real deformation
    torch.testing.assert_close(turned.points(p @ r.T), base.points(p) @ r.T, atol=1e-3, rtol=0)


def test_bspline_network_predicts_the_b_spline_transform_it_trains_with():
    # Training uses the dense field of the coefficients on the model grid; predict writes a BSplineTransform
    # (ITK-exportable). On a fixed image whose grid is the model grid the two must map the same.
    from morphreg.transforms.bspline import BSplineTransform

    torch.manual_seed(0)
    net = RegistrationNet(ModelSpace((16, 16), (2.0, 2.0)), "bspline", (8, 8), (8, 8, 8), control_mm=6.0).eval()
    torch.nn.init.normal_(net.head.conv.weight, std=0.5)
    pair = make_phantom_pair(dim=2, size=16, spacing=2.0, seed=1)
    fixed = Image(pair.fixed.data, net.grid, "f")
    moving = Image(pair.moving.data, net.grid, "m")
    transform = net.predict(fixed, moving)
    assert isinstance(transform, BSplineTransform)
    f, m = (net.space.prepare(x, net.grid).unsqueeze(0) for x in (fixed, moving))
    with torch.no_grad():
        field, matrix, shift = net(f, m)
        mapped = net.mapped(field, matrix, shift)[0]
    assert (mapped - net.grid.points()).norm(dim=-1).max() > 0.3
    torch.testing.assert_close(transform.map_grid(net.grid)[0], mapped, atol=1e-4, rtol=0)


def test_a_cascade_predicts_its_stages_composed_as_it_trains_with():
    # Two coarse-to-fine stages: predict gives Composite([affine, T1, T2]) whose map on the model grid equals the
    # training map x -> A(T1(T2(x))), and the second stage saw the moving image through the first.
    torch.manual_seed(0)
    net = RegistrationNet(ModelSpace((16, 16), (2.0, 2.0)), "svf", (8, 8), (8, 8, 8), affine=True, cascade=2).eval()
    for head in (net.head, net.refiners[0][1]):
        torch.nn.init.normal_(head.conv.weight, std=0.5)
    torch.nn.init.normal_(net.affine_head.linear.weight, std=0.1)
    pair = make_phantom_pair(dim=2, size=16, spacing=2.0, seed=1)
    fixed, moving = Image(pair.fixed.data, net.grid, "f"), Image(pair.moving.data, net.grid, "m")
    transform = net.predict(fixed, moving)
    assert [type(t).__name__ for t in transform.transforms] == ["AffineTransform"] + ["StationaryVelocityFieldTransform"] * 2
    f, m = (net.space.prepare(x, net.grid).unsqueeze(0) for x in (fixed, moving))
    seen = []
    hook = net.refiners[0][0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        field, matrix, shift = net(f, m)
        mapped = net.mapped(field, matrix, shift)[0]
        first = net.mapped(net.stage_fields(field)[0], matrix, shift)  # A(T1(x))
    hook.remove()
    assert field.shape[1] == 4 and all(float(s.abs().max()) > 0.1 for s in net.stage_fields(field))
    # The second stage (full resolution; the first worked at half) saw the original moving image through A o T1.
    expected = torch.cat([f, sample(m, net.grid, first)], 1)
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(transform.map_grid(net.grid)[0], mapped, atol=1e-4, rtol=0)


def test_the_symmetric_loss_averages_both_directions(run_2d):
    # loss.symmetric: the data terms are the mean of fixed vs moving o T and moving vs fixed o T^-1 = exp(-v).
    trainer = Trainer(load_config(run_2d / "cfg.yaml", ["loss.symmetric=true", "train.steps=3"]), run_2d / "sym")
    torch.nn.init.normal_(trainer.net.head.conv.weight, std=0.2)
    batch = collate(trainer.pairs[:2])
    with torch.no_grad():
        one, _, _ = batch_loss(trainer.net, batch, dataclasses.replace(trainer.objective, symmetric=False))
        both, _, _ = batch_loss(trainer.net, batch, trainer.objective)
        field, _, _ = trainer.net(batch["fixed"], batch["moving"])
        back = sample(batch["fixed"], trainer.net.grid, trainer.net.inverse_mapped(field))
        reverse = float(((back - batch["moving"]) ** 2).mean())
    assert float(both["similarity"]) == pytest.approx((float(one["similarity"]) + reverse) / 2, rel=1e-4)
    assert float(both["diffusion"]) == float(one["diffusion"])  # penalties once
    assert trainer.fit().steps == 3
    with pytest.raises(Exception, match="loss.symmetric needs model.kind svf"):
        load_config(run_2d / "cfg.yaml", ["loss.symmetric=true", "model.kind=displacement"])
    with pytest.raises(Exception, match="model.linear rigid and model.keypoints need model.affine"):
        load_config(run_2d / "cfg.yaml", ["model.linear=rigid"])


def test_cli_train_resume_predict(run_2d, capfd):
    code, text, _ = cli(capfd, "train", run_2d / "cfg.yaml", "-o", run_2d / "run", "--set", "train.steps=3", "-q")
    assert code == 0, text
    code, _, err = cli(capfd, "train", run_2d / "cfg.yaml", "-o", run_2d / "run")
    assert code == 2 and "use --resume" in one_line_error(err, "run")
    code, text, _ = cli(capfd, "train", run_2d / "cfg.yaml", "-o", run_2d / "run", "--resume", "-q")
    assert code == 0 and "6 steps" in text
    with open(run_2d / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6] and rows[2]["val_dice"] and rows[5]["val_dice"]
    out = run_2d / "pred"
    code, text, _ = cli(capfd, "predict", run_2d / "run" / "model.pt", run_2d / "fixed3.nii.gz",
                        run_2d / "moving3.nii.gz", "-o", out, "--instance-optimization", "5")
    assert code == 0, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"].startswith("learned") and summary["folding_percent"] == 0.0
    # The saved ITK transform reproduces the warped image in SimpleITK.
    fixed = sitk.ReadImage(str(run_2d / "fixed3.nii.gz"))
    moving = sitk.ReadImage(str(run_2d / "moving3.nii.gz"))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.ReadTransform(str(out / "transform.h5")),
                                                  sitk.sitkLinear, 0.0))
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()
    # register --preset learned: the network alone, the same outputs.
    code, text, _ = cli(capfd, "register", run_2d / "fixed3.nii.gz", run_2d / "moving3.nii.gz", "-o", run_2d / "reg",
                        "--preset", "learned", "--model", run_2d / "run" / "model.pt", "-q")
    assert code == 0 and "the network's transform" in text
    assert json.loads((run_2d / "reg" / "summary.json").read_text())["preset"] == "learned"


@pytest.mark.parametrize("change, message", [
    ("model.foo=1", "unknown key model.foo"), ("train.steps=abc", "train.steps must be int"),
    ("loss.similarity=nope", "loss.similarity 'nope'"), ("model.size=[30,32]", "must divide by 8"),
    ("data.augment.scale=1.5", "scale < 1"), ("loss.affine=0.1", "set model.affine"),
    ("model.percentiles=[99,1]", "model.percentiles"), ("data.augment.mirror=[2]", "data.augment.mirror: axes"),
    ("loss.segmentation_centroid=1", "weighs a part of loss.segmentation")])
def test_config_errors_are_one_line(run_2d, capfd, change, message):
    code, _, err = cli(capfd, "train", run_2d / "cfg.yaml", "-o", run_2d / "bad", "--set", change)
    assert code == 2 and message in one_line_error(err, "cfg.yaml")
    assert not (run_2d / "bad").exists()


def test_predict_refuses_a_file_that_is_not_a_model(run_2d, capfd):
    code, _, err = cli(capfd, "predict", run_2d / "cfg.yaml", run_2d / "fixed0.nii.gz", run_2d / "moving0.nii.gz",
                       "-o", run_2d / "p")
    assert code == 2 and "not a morphreg model file" in one_line_error(err, "cfg.yaml")
    assert not (run_2d / "p").exists()
    code, _, err = cli(capfd, "predict", "no-such-model", run_2d / "fixed0.nii.gz", run_2d / "moving0.nii.gz", "-o", run_2d / "p")
    assert code == 2 and "no shipped model of that name" in one_line_error(err, "no-such-model")
    code, text, _ = cli(capfd, "models")
    assert code == 0 and ("no model is shipped" in text) == (not shipped_models())
    # A bad pairs table: one line, and no run folder left behind (a rerun would be refused).
    (run_2d / "bad.csv").write_text("fixed,moving\nfixed0.nii.gz,missing.nii.gz\n")
    code, _, err = cli(capfd, "train", run_2d / "cfg.yaml", "-o", run_2d / "r", "--set", f"data.pairs={run_2d / 'bad.csv'}")
    assert code == 2 and "missing.nii.gz" in one_line_error(err) and not (run_2d / "r").exists()


def _held_out_endpoint_errors(trainer: Trainer, config, check=None) -> tuple[float, float]:
    """Mean endpoint error (mm) of the trained network and of the identity on the validation images (never trained
    on) through 8 random maps each (seeds never drawn in training); ``check(batch)`` runs on every batch."""
    x = trainer.net.grid.points().unsqueeze(0)
    network, identity = [], []
    for pair in trainer.val_pairs:
        for seed in range(8):
            batch = changed_batch({k: v.unsqueeze(0) for k, v in pair.items()}, config, trainer.net.grid,
                                  torch.Generator().manual_seed(500 + seed))
            with torch.no_grad():
                terms, _, _ = batch_loss(trainer.net, batch, trainer.objective)
                if check:
                    check(batch)
            network.append(float(terms["endpoint"]))
            identity.append(float((x - batch["target"]).norm(dim=-1).mean()))
    return float(np.mean(network)), float(np.mean(identity))


def test_supervised_training_recovers_a_synthetic_family_better_than_identity(run_2d):
    # Moving = fixed through a random rigid map (10 deg, 5 mm); loss = endpoint error against the known map.
    config = load_config(run_2d / "cfg.yaml", [
        "data.augment={shift_mm: 5.0, rotation_deg: 10}", "loss.similarity=null", "loss.labels=0", "loss.endpoint=1",
        "loss.penalties=[]", "model.size=[16,16]", "model.spacing=[5,5]", "model.encoder=[16,32]",
        "model.decoder=[32,32,16]", "model.kind=displacement", "train.lr=0.003", "train.steps=500",
        "train.batch_size=3", "train.checkpoint_every=500", "train.validate_every=500"])
    trainer = Trainer(config, run_2d / "supervised")
    trainer.fit()
    network, identity = _held_out_endpoint_errors(trainer, config)
    assert network < 0.85 * identity, (network, identity)  # measured 0.55 (500 steps, 14 s)


def test_a_rigid_network_learns_rigid_maps_with_the_transformed_grid_distance(run_2d):
    # model.kind none + model.linear rigid: the affine head alone, its matrix a rotation; loss.endpoint on a
    # rigid family is the transformed-grid distance (TGD) of rigid registration networks.
    config = load_config(run_2d / "cfg.yaml", [
        "data.augment={shift_mm: 5.0, rotation_deg: 10}", "loss.similarity=null", "loss.labels=0", "loss.endpoint=1",
        "loss.penalties=[]", "model.size=[16,16]", "model.spacing=[5,5]", "model.encoder=[16,32,32]",
        "model.kind=none", "model.affine=true", "model.linear=rigid", "train.lr=0.003", "train.steps=300",
        "train.batch_size=3", "train.checkpoint_every=300", "train.validate_every=300"])
    trainer = Trainer(config, run_2d / "rigid")
    trainer.fit()
    def is_rotation(batch):
        matrix, _ = trainer.net.affine_head(torch.cat([batch["fixed"], batch["moving"]], 1))
        torch.testing.assert_close(matrix[0] @ matrix[0].T, torch.eye(2), atol=1e-5, rtol=0)

    network, identity = _held_out_endpoint_errors(trainer, config, is_rotation)
    assert network < 0.7 * identity, (network, identity)  # measured 0.35
    pair = make_phantom_pair(dim=2, size=30, spacing=1.5, seed=0)
    assert type(trainer.net.eval().predict(pair.fixed, pair.moving)).__name__ == "AffineTransform"


def test_keypoint_heads_fit_the_map_between_their_keypoints(monkeypatch):
    from morphreg.learn.networks import KeypointHead

    grid = Grid((16, 16), (-15.0, -15.0), (2.0, 2.0))
    p = torch.tensor([[[-5.0, 3.0], [4.0, 6.0], [0.0, -7.0], [8.0, 1.0]]])
    a, t = torch.tensor([[1.1, 0.2], [-0.1, 0.9]]), torch.tensor([2.0, -3.0])
    q = p @ a.T + t
    for fit, matrix, shift in (("affine", a, t), ("translation", torch.eye(2), (q - p).mean(1)[0])):
        head = KeypointHead(2, grid.points(), 4, (8, 8), (8, 8), fit=fit)
        monkeypatch.setattr(head, "keypoints", lambda image, side: (p if side == 0 else q, None))
        got_a, got_t = head(torch.zeros(1, 2, 16, 16))
        torch.testing.assert_close(got_a[0], matrix, atol=2e-3, rtol=0)
        torch.testing.assert_close(got_t[0], shift, atol=2e-2, rtol=0)
    # A real head: keypoints are soft-argmax positions inside the (half-resolution) grid.
    for maps in ("softmax", "segmentation"):
        head = KeypointHead(2, grid.points(), 3, (8, 8), (8, 8), maps=maps)
        with torch.no_grad():
            k, logits = head.keypoints(torch.rand(2, 1, 16, 16), 0)
        assert k.shape == (2, 3, 2) and float(k.abs().max()) <= 15.0 and logits.shape == (2, 3, 8, 8)
    # A segmentation map's keypoint is its probability-weighted centroid.
    head = KeypointHead(2, grid.points(), 1, (8, 8), (8, 8), maps="segmentation")
    inside = (head.points[:, 0] > 4) & (head.points[:, 1] < -2)  # a block of the half-resolution grid
    logits = torch.where(inside, 30.0, -30.0).view(1, 1, 8, 8)
    monkeypatch.setattr(head.nets[0], "forward", lambda x: logits)
    k, _ = head.keypoints(torch.zeros(1, 1, 16, 16), 0)
    torch.testing.assert_close(k[0, 0], head.points[inside].mean(0), atol=1e-4, rtol=0)


def test_a_keypoint_network_learns_translations(run_2d):
    # model.keypoints with model.linear translation, supervised on random shifts (8 mm): better than identity.
    config = load_config(run_2d / "cfg.yaml", [
        "data.augment={shift_mm: 8.0}", "loss.similarity=null", "loss.labels=0", "loss.endpoint=1",
        "loss.penalties=[]", "model.size=[16,16]", "model.spacing=[5,5]", "model.encoder=[16,32,32]",
        "model.kind=none", "model.affine=true", "model.keypoints=4", "model.linear=translation", "train.lr=0.003",
        "train.steps=300", "train.batch_size=3", "train.checkpoint_every=300", "train.validate_every=300"])
    trainer = Trainer(config, run_2d / "keypoints")
    trainer.fit()
    network, identity = _held_out_endpoint_errors(trainer, config)
    assert network < 0.7 * identity, (network, identity)
    payload = torch.load(run_2d / "keypoints" / "model.pt", weights_only=True)
    assert payload["version"] == 2 and "keypoint_maps" not in payload["config"]  # readable by older morphreg
    with pytest.raises(Exception, match="keypoints"):
        load_config(run_2d / "cfg.yaml", ["model.affine=true", "model.keypoints=2", "model.linear=affine"])


def test_random_maps_invert_exactly_for_rigid_and_closely_for_deformations():
    grid = Grid((24, 20), (-23.0, -19.0), (2.0, 2.0))
    x = grid.points().unsqueeze(0)
    rigid = random_map(grid, 3, torch.Generator().manual_seed(0), rotation_deg=15, scale=0.1, shift_mm=4)
    assert float((rigid.inverse(rigid.forward(x)) - x).norm(dim=-1).max()) < 1e-4
    smooth = random_map(grid, 3, torch.Generator().manual_seed(0), deformation_mm=3, control_mm=15)
    moved = (smooth.forward(x) - x).norm(dim=-1)
    assert float(moved.max()) > 0.5 and float((smooth.inverse(smooth.forward(x)) - x).norm(dim=-1).max()) < 0.5
    # The velocity is integrated on a grid of about control_mm / 4 per axis (here 5 x 5 x 1 times coarser): the
    # same map as integrated on the fine grid, and on this anisotropic grid it still varies along z.
    from morphreg.transforms.dense import sample_field, scaling_and_squaring

    fine = Grid((40, 36, 8), (-19.5, -17.5, -17.5), (1.0, 1.0, 5.0))
    coarse = random_map(fine, 1, torch.Generator().manual_seed(1), deformation_mm=3, control_mm=20)
    assert tuple(coarse.velocity.shape[2:]) == (8, 7, 8)  # torch order z, y, x
    x = fine.points().unsqueeze(0)
    u = coarse.displacement(x)
    velocity = torch.movedim(sample_field(coarse.velocity, coarse.grid, x, fill_value=None), -1, 1)
    reference = torch.movedim(scaling_and_squaring(velocity, fine), 1, -1)
    assert float((u - reference).norm(dim=-1).max()) < 0.1 * float(reference.norm(dim=-1).max())
    assert float((u[0, 1:] - u[0, :-1]).abs().max()) > 0.05  # differs between z slices


def test_two_gloo_processes_train_like_one_process_with_the_global_batch(run_2d):
    # torchrun, 2 CPU processes x batch 1 (DDP averages the gradients) == 1 process x batch 2.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "morphreg", "train", str(run_2d / "cfg.yaml"), "-o", str(run_2d / "ddp"),
                          "--set", "train.batch_size=1", "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("6 steps") == 1  # process 0 reports
    single = Trainer(load_config(run_2d / "cfg.yaml", ["train.batch_size=2"]), run_2d / "single")
    single.fit()
    weights = torch.load(run_2d / "ddp" / "model.pt", weights_only=True)["state_dict"]
    for name, value in single.net.state_dict().items():
        torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=1e-5)


@pytest.mark.realdata
def test_prostate_config_trains_and_predict_runs_end_to_end_on_a_real_pair(shared_data, tmp_path, capfd, one_thread):
    # The shipped example config, pointed at two real pairs for 2 steps: the whole path, not a result.
    root = shared_data / "prostate_mr_trus"
    table = tmp_path / "pairs.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fixed", "moving", "fixed_labels", "moving_labels"])
        for case in ("obs000", "obs002"):
            writer.writerow([root / d / f"{case}.nii.gz" for d in ("fixed_images", "moving_images", "fixed_labels",
                                                                   "moving_labels")])
    config = Path(__file__).resolve().parents[1] / "configs" / "prostate_mr_trus.yaml"
    code, text, _ = cli(capfd, "train", config, "-o", tmp_path / "run", "--set", f"data.pairs={table}",
                        "--set", f"data.val_pairs={table}", "--set", "data.workers=0", "--set", "train.steps=2", "-q")
    assert code == 0, text
    out = tmp_path / "pred"
    code, text, _ = cli(capfd, "predict", tmp_path / "run" / "model.pt", root / "fixed_images" / "obs004.nii.gz",
                        root / "moving_images" / "obs004.nii.gz", "-o", out)
    assert code == 0, text
    warped = read_image(out / "warped.nii.gz")
    assert warped.grid.same_as(read_image(root / "fixed_images" / "obs004.nii.gz").grid)  # on the TRUS grid


def test_centroid_distance_is_the_shift_of_a_blob():
    grid = Grid((20, 16), (0.0, 0.0), (1.5, 1.5))
    points = grid.points().unsqueeze(0)
    x, y = points[..., 0], points[..., 1]
    blob = lambda cx, cy: ((x - cx) ** 2 + (y - cy) ** 2 < 9).float()  # noqa: E731
    fixed = torch.stack([blob(10, 10), blob(20, 8)], 1)  # (1, 2, H, W): two landmarks
    moved = torch.stack([blob(13, 10), blob(20, 12.5)], 1)  # moved by 2 and 3 voxels: 3 and 4.5 mm
    assert float(centroid_distance(fixed, moved, points)) == pytest.approx(3.75, abs=1e-4)
    assert float(centroid_distance(fixed, torch.zeros_like(moved), points)) == 0.0  # empty channels left out


def test_box_distance_measures_shifts_and_growth_of_a_label_box():
    from morphreg.metrics.points import box_distance

    grid = Grid((60, 50), (0.0, 0.0), (0.5, 0.5))
    points = grid.points().unsqueeze(0)
    x, y = points[..., 0], points[..., 1]
    box = lambda x0, x1, y0, y1: ((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).float()[:, None]  # noqa: E731
    fixed = box(5, 15, 5, 12)
    assert float(box_distance(fixed, box(9, 19, 5, 12), points)) == pytest.approx(2.0, abs=0.05)  # 4 mm in x: (4+4)/2/2 axes
    assert float(box_distance(fixed, box(5, 25, 5, 12), points)) == pytest.approx(2.5, abs=0.05)  # x grows by 10 mm
    assert float(box_distance(fixed, fixed, points)) == pytest.approx(0.0, abs=1e-4)
    assert float(box_distance(fixed, torch.zeros_like(fixed), points)) == 0.0


def test_one_random_label_pair_per_step_when_pairs_have_different_channel_counts(tmp_path, capfd, one_thread):
    # Landmark stacks differ in length from pair to pair (as in the prostate data).
    rows = []
    for i, k in enumerate((2, 3, 2)):
        p = make_phantom_pair(dim=2, size=32, spacing=2.0, seed=i)
        write_image(p.fixed, tmp_path / f"f{i}.nii.gz")
        write_image(p.moving, tmp_path / f"m{i}.nii.gz")
        for side, labels in (("fl", p.fixed_labels), ("ml", p.moving_labels)):
            stack = torch.stack([(labels.data[0] == v + 1).to(torch.uint8) for v in range(k)])
            write_image(Image(stack, labels.grid), tmp_path / f"{side}{i}.nii.gz", as_4d=False)
        rows.append(f"f{i}.nii.gz,m{i}.nii.gz,fl{i}.nii.gz,ml{i}.nii.gz")
    (tmp_path / "pairs.csv").write_text("fixed,moving,fixed_labels,moving_labels\n" + "\n".join(rows) + "\n")
    (tmp_path / "cfg.yaml").write_text(CONFIG_2D.replace("{pairs: train.csv, val_pairs: val.csv}",
                                                         "{pairs: pairs.csv, val_pairs: pairs.csv}"))
    sets = ["loss.similarity=null", "loss.centroids=1.0", "train.steps=4", "train.validate_every=4"]
    code, _, err = cli(capfd, "train", tmp_path / "cfg.yaml", "-o", tmp_path / "all", *[a for s in sets for a in ("--set", s)])
    assert code == 2 and "label_sampling: one" in one_line_error(err, "pairs.csv")
    code, text, _ = cli(capfd, "train", tmp_path / "cfg.yaml", "-o", tmp_path / "one", "-q",
                        *[a for s in sets + ["data.label_sampling=one"] for a in ("--set", s)])
    assert code == 0, text
    with open(tmp_path / "one" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["centroids"] and float(rows[-1]["val_centroid_mm"]) >= 0


def test_the_gradient_network_never_folds_its_grid_lines_back():
    # The lung-MRI network (dilated encoder, SE, 2*sigmoid grid steps, cumulative sums): whatever the
    # weights, each mapped coordinate increases along its own axis. (det J > 0 is not implied: the
    # cross terms are free; the docstring says so.)
    torch.manual_seed(0)
    net = RegistrationNet(ModelSpace((11, 13, 9), (1.5, 2.0, 2.5)), "gradients", (8,), (8,), network="dilated")
    for p in net.parameters():
        torch.nn.init.normal_(p, std=1.0)  # far from the identity it starts at
    with torch.no_grad():
        field, _, _ = net(torch.rand(2, 1, 9, 13, 11), torch.rand(2, 1, 9, 13, 11))
        mapped = net.mapped(field, None, None)  # (N, z, y, x, 3)
    assert float((mapped - net.grid.points()).abs().max()) > 1.0  # a real deformation
    for d, axis in ((0, 3), (1, 2), (2, 1)):  # coordinate x along tensor axis 3, y along 2, z along 1
        assert bool((torch.diff(mapped[..., d], dim=axis) > 0).all())
    torch.testing.assert_close(grid_gradients(integrate_gradients(torch.full((1, 3, 9, 13, 11), 0.7), net.space.spacing),
                                              net.space.spacing), torch.full((1, 3, 9, 13, 11), 0.7))


def test_the_lung_mri_configuration_trains(run_2d):
    config = load_config(run_2d / "cfg.yaml", ["model.network=dilated", "model.kind=gradients", "model.affine=true",
                                               "model.size=[30,30]", "model.encoder=[8]", "model.decoder=[8]",
                                               "loss.affine=0.1", "loss.gradients=0.1", "train.steps=3"])
    trainer = Trainer(config, run_2d / "lung")
    trainer.fit()
    with open(run_2d / "lung" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"affine", "gradients"} <= set(rows[0]) and float(rows[-1]["val_folding_percent"]) >= 0


@pytest.mark.parametrize("mode", ["unpaired", "atlas"])
def test_unpaired_and_atlas_modes_draw_pairs_from_a_list_of_images(run_2d, mode):
    (run_2d / "images.csv").write_text("image,labels\n" + "".join(f"fixed{i}.nii.gz,fixed_labels{i}.nii.gz\n"
                                                                   for i in range(3)))
    sets = [f"data.mode={mode}", f"data.images={run_2d / 'images.csv'}", "train.steps=3"]
    if mode == "atlas":
        sets += [f"data.atlas={run_2d / 'moving3.nii.gz'}", f"data.atlas_labels={run_2d / 'moving_labels3.nii.gz'}"]
    trainer = Trainer(load_config(run_2d / "cfg.yaml", sets), run_2d / mode)
    assert len(trainer.pairs) == (6 if mode == "unpaired" else 3)
    first = trainer.pairs.rows[0]
    if mode == "atlas":  # atlas to subject: the atlas is the moving image
        assert first["moving"].endswith("moving3.nii.gz") and first["fixed"].endswith("fixed0.nii.gz")
    else:
        assert first["fixed"].endswith("fixed0.nii.gz") and first["moving"].endswith("fixed1.nii.gz")
    assert trainer.fit().steps == 3


def test_synthesised_images_come_from_the_labels_alone(run_2d):
    # SynthMorph: each step's images are made from the label maps with random contrasts, so two steps
    # show the same anatomy with different intensities; training runs on them.
    trainer = Trainer(load_config(run_2d / "cfg.yaml", ["data.synthesise=true", "loss.similarity=null", "train.steps=3"]),
                      run_2d / "synth")
    pair = trainer.pairs[0]
    a = synthesised_pair(pair, trainer.net.grid, torch.Generator().manual_seed(1))
    b = synthesised_pair(pair, trainer.net.grid, torch.Generator().manual_seed(2))
    assert a["fixed"].shape == pair["fixed"].shape and not torch.allclose(a["fixed"], b["fixed"], atol=1e-2)
    inside = pair["fixed_labels"].sum(0, keepdim=True) > 0.99
    assert not torch.allclose(a["fixed"], pair["fixed"], atol=0.05)  # not the real image
    assert float(a["fixed"][inside].std()) > 0  # labels show through
    assert trainer.fit().steps == 3


def test_a_rigidity_penalty_acts_inside_each_pairs_mask(run_2d, capfd):
    pair = make_phantom_pair(dim=2, size=40, spacing=2.0, seed=0)
    mask = torch.zeros_like(pair.fixed_labels.data, dtype=torch.uint8)
    mask[:, 12:24, 14:26] = 1  # a "bone" on the fixed grid
    write_image(Image(mask, pair.fixed.grid), run_2d / "bone.nii.gz")
    for name in ("train.csv", "val.csv"):
        lines = (run_2d / name).read_text().splitlines()
        (run_2d / name).write_text("\n".join([lines[0] + ",rigidity_mask"] + [ln + ",bone.nii.gz" for ln in lines[1:]]) + "\n")
    rigid = ["loss.penalties=[{name: diffusion, weight: 0.1}, {name: rigidity, weight: 1.0, mask: rigidity}]"]
    trainer = Trainer(load_config(run_2d / "cfg.yaml", rigid), run_2d / "rigid")
    torch.nn.init.normal_(trainer.net.head.conv.weight, std=0.2)  # a deformation to penalise
    batch = collate(trainer.pairs[:2])
    with torch.no_grad():
        inside, _, _ = batch_loss(trainer.net, batch, trainer.objective)
        nowhere, _, _ = batch_loss(trainer.net, {**batch, "rigidity_mask": torch.zeros_like(batch["rigidity_mask"])},
                                   trainer.objective)
    assert float(inside["rigidity"]) > 0 and float(nowhere["rigidity"]) == 0.0
    assert trainer.fit().steps == 6
    # Pairs without the mask column: one line before any work.
    code, _, err = cli(capfd, "train", run_2d / "cfg.yaml", "-o", run_2d / "r2", "--set", rigid[0], "--set",
                       f"data.pairs={run_2d / 'val.csv'}", "--set", "data.val_pairs=null", "--set", "train.batch_size=1")
    assert code == 0  # val.csv has the column: fine
    (run_2d / "plain.csv").write_text("fixed,moving\nfixed0.nii.gz,moving0.nii.gz\n")
    code, _, err = cli(capfd, "train", run_2d / "cfg.yaml", "-o", run_2d / "r3", "--set", rigid[0], "--set",
                       f"data.pairs={run_2d / 'plain.csv'}", "--set", "loss.labels=0")
    assert code == 2 and "rigidity_mask column" in one_line_error(err)


def test_the_spine_rigidity_configs_keep_the_vertebrae_rigid_while_the_tissue_deforms(tmp_path, one_thread):
    # The shipped WS and WS-RP settings on the synthetic spine (rigid vertebrae in deforming tissue): with the
    # rigidity penalty det J stays within 1 +- 0.02 inside the (eroded) vertebrae; without it it does not, and
    # the soft tissue deforms in both.
    import torch.nn.functional as F

    from morphreg.data.phantom import write_spine_dataset

    paths = write_spine_dataset(tmp_path / "spine", pairs=7, val=1)
    root = Path(__file__).resolve().parents[1] / "configs" / "spine_ct_mr"
    val = next(csv.DictReader(open(paths["val"])))
    fixed, moving = (read_image(tmp_path / "spine" / val[k]) for k in ("fixed", "moving"))
    labels = read_image(tmp_path / "spine" / val["fixed_labels"]).data[0]
    inner = -F.max_pool2d(-(labels >= 2).float()[None, None], 3, 1, 1)[0, 0] > 0
    results = {}
    for setting in ("ws", "ws_rp"):
        config = load_config(root / f"{setting}.yaml", [f"data.pairs={paths['train']}", f"data.val_pairs={paths['val']}",
                                                        "train.steps=150", "train.checkpoint_every=150"])
        trainer = Trainer(config, tmp_path / setting)
        trainer.fit()
        det = trainer.net.eval().predict(fixed, moving).jacobian_determinant(fixed.grid)[0]
        results[setting] = (float((det[inner] - 1).abs().max()), float((det[labels == 1] - 1).abs().mean()))
    assert results["ws_rp"][0] <= 0.02 < results["ws"][0], results
    assert min(results["ws"][1], results["ws_rp"][1]) > 0.02, results  # the tissue deforms


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_shipped_config_is_valid(path):
    load_config(path)  # validated: a wrong key, type or value raises


def test_network_work_flushes_denormals_and_restores_the_mode(monkeypatch):
    # Products of a saturated sigmoid's tiny values are denormals (1e-30 x 1e-10 in float32), the slow path of
    # x86 cores: inside flushed_denormals they are 0, and the mode before is back afterwards, also around predict.
    from morphreg.core.numerics import denormals_flushed, flushed_denormals
    from morphreg.learn import predict as predict_module

    assert not denormals_flushed() and float(torch.tensor(1e-30) * 1e-10) > 0
    with flushed_denormals():
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU cannot flush denormals")
        assert denormals_flushed() and float(torch.tensor(1e-30) * 1e-10) == 0
    assert not denormals_flushed()
    seen = []

    def record(model):
        seen.append(denormals_flushed())
        raise MorphregError("stop here")

    monkeypatch.setattr(predict_module, "resolve_model", record)
    with pytest.raises(MorphregError, match="stop here"):
        predict_module.predict("any", None, None)
    assert seen == [True] and not denormals_flushed()


def test_segmentation_cross_entropy_revives_a_dead_map():
    # A map whose logits fell far below zero (the prostate MR network of a CV fold: -1080..-18) gets no gradient
    # from the Dice term, and the cross-entropy part's gradient on each missed target voxel is p - 1 ~ -1.
    from morphreg.learn.train import segmentation_loss

    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    batch = {"fixed_segmentation": target, "moving_segmentation": target}
    healthy = torch.where(average_pool(target, 2) > 0.5, 20.0, -20.0)
    dead = torch.full((1, 1, 8, 8), -40.0, requires_grad=True)
    inside = average_pool(target, 2)[0, 0] > 0.5
    for weight, revived in ((0.0, False), (1.0, True)):
        dead.grad = None
        segmentation_loss((healthy, dead), batch, cross_entropy=weight).backward()
        push = -float(dead.grad[0, 0][inside].mean())  # how hard the gland voxels' logits are pushed up
        assert (push > 1e-3) == revived, (weight, push)  # 0 (1e-18) without, 0.008 = 1 / 2 / 64 with
    # Both parts vanish for a perfect map; without the weight the loss is the Dice part alone.
    assert float(segmentation_loss((healthy, healthy), batch, cross_entropy=1.0)) < 1e-6
    assert abs(float(segmentation_loss((healthy, dead.detach()), batch)) - 0.5) < 1e-6


def test_segmentation_centroid_term_is_the_keypoint_error_in_mm():
    # loss.segmentation_centroid: the distance of each map's centroid (by the keypoint head's own centroids) from
    # its target's, / 10 mm, averaged over both images. A map shifted by one coarse voxel (2 mm) on one side: 0.1.
    from morphreg.learn.networks import KeypointHead
    from morphreg.learn.train import segmentation_loss

    points = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="xy"), -1)  # (16, 16, 2) mm
    head = KeypointHead(2, points, keypoints=1, encoder=(4,), decoder=(4,), maps="segmentation")
    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    batch = {"fixed_segmentation": target, "moving_segmentation": target}
    healthy = torch.where(average_pool(target, 2) > 0.5, 30.0, -30.0)
    shifted = torch.roll(healthy, 1, dims=-1).requires_grad_(True)  # +1 coarse voxel = +2 mm along x
    plain = float(segmentation_loss((healthy, shifted), batch))
    with_centroid = segmentation_loss((healthy, shifted), batch, centroid=1.0, centroids=head.centroids)
    assert abs(float(with_centroid) - plain - 0.1) < 1e-4, (float(with_centroid), plain)
    soft = (shifted.detach() / 10).requires_grad_(True)  # unsaturated, so the term has a gradient
    (segmentation_loss((healthy, soft), batch, centroid=1.0, centroids=head.centroids)
     - segmentation_loss((healthy, soft), batch)).backward()  # the centroid part alone pulls the map back:
    assert float(soft.grad[0, 0, 3, 2]) < 0 < float(soft.grad[0, 0, 3, 6])  # logits left of it up, right of it down
    assert float(segmentation_loss((healthy, healthy), batch, centroid=1.0, centroids=head.centroids)) < 1e-6


def test_segmentation_keypoint_maps_learn_each_images_label_and_align_their_centroids(run_2d, monkeypatch):
    # model.keypoint_maps segmentation + loss.segmentation: the two-step design (segment each image, align the
    # segmentations) in one network. Label 1 of each image is the target; random shifts of each side (6 mm).
    from morphreg.learn.train import segmentation_loss, with_segmentation_targets

    config = load_config(run_2d / "cfg.yaml", [
        "data.augment={shift_mm: 6.0}", "loss.similarity=null", "loss.labels=0", "loss.centroids=1",
        "loss.segmentation=1", "loss.penalties=[]", "model.kind=none", "model.affine=true", "model.keypoints=1",
        "model.keypoint_maps=segmentation", "model.linear=translation", "model.encoder=[8,16,16]", "train.lr=0.003",
        "train.steps=150", "train.batch_size=3", "train.checkpoint_every=150", "train.validate_every=150"])
    trainer = Trainer(config, run_2d / "segment")
    pair = with_segmentation_targets(trainer.val_pairs[0], 0)
    points = trainer.net.grid.points().view(1, -1, 2)
    centre = lambda mask: (mask.flatten(1).T * points[0]).sum(0) / mask.sum()  # noqa: E731

    def held_out() -> tuple[float, float]:
        """Mean over 4 unseen random shifts of the held-out pair: segmentation loss, |shift - label centroids' shift| mm."""
        losses, errors = [], []
        for seed in range(4):
            batch = changed_batch({k: v.unsqueeze(0) for k, v in pair.items()}, config, trainer.net.grid,
                                  torch.Generator().manual_seed(500 + seed))
            with torch.no_grad():
                _, shift = trainer.net.affine_head(torch.cat([batch["fixed"], batch["moving"]], 1))
                losses.append(float(segmentation_loss(trainer.net.affine_head.last_logits, batch)))
            truth = centre(batch["moving_segmentation"][0]) - centre(batch["fixed_segmentation"][0])
            errors.append(float((shift[0] - truth).norm()))
        return float(np.mean(losses)), float(np.mean(errors))

    before = held_out()
    trainer.fit()
    after = held_out()
    assert after[0] < 0.5 * before[0], (before, after)  # the held-out image's label is found (0.62 -> 0.23)
    assert after[1] < 0.4 * before[1], (before, after)  # and the shift follows the label centroids' (5.9 -> 1.2 mm)
    with open(run_2d / "segment" / "metrics.csv") as f:
        assert "segmentation" in next(csv.DictReader(f))
    with pytest.raises(MorphregError, match="loss.segmentation"):
        load_config(run_2d / "cfg.yaml", ["loss.segmentation=1"])
    # The segmentations in world mm: the held-out fixed image's map overlaps its label 1 on the model grid.
    from morphreg.image.sampling import sample_onto
    from morphreg.learn.predict import predict
    from morphreg.transforms import TranslationTransform, warp

    net, _ = load_model(run_2d / "segment" / "model.pt")
    assert torch.load(run_2d / "segment" / "model.pt", weights_only=True)["version"] == 3  # keypoint_maps is new
    fixed, moving = read_image(run_2d / "fixed3.nii.gz"), read_image(run_2d / "moving3.nii.gz")
    network_transform, (fixed_seg, moving_seg) = net.predict_with_segmentations(fixed, moving)
    assert torch.allclose(network_transform.offset(), net.predict(fixed, moving).offset())  # the same pass
    label = sample_onto(read_image(run_2d / "fixed_labels3.nii.gz"), fixed_seg.grid, interpolation="nearest")
    seg_dice = float(soft_dice((fixed_seg.data[None] > 0.5).float(), (label.data[None] == 1).float()))
    assert seg_dice > 0.6, seg_dice  # 0.81

    # Instance optimisation of such a model is the label-driven affine on its two segmentations: from a start
    # 11 mm off, it brings their overlap back.
    def overlap(result) -> float:
        warped = warp(moving_seg, result.transform, fixed_seg.grid)
        return float(soft_dice((fixed_seg.data[None] > 0.5).float(), (warped.data[None] > 0.5).float()))

    segmentations = RegistrationNet.predict_with_segmentations
    far_off = lambda self, f, m: (TranslationTransform(2, translation=[9.0, -6.0]), segmentations(self, f, m)[1])  # noqa: E731
    monkeypatch.setattr(RegistrationNet, "predict_with_segmentations", far_off)
    start, refined = (predict(run_2d / "segment" / "model.pt", fixed, moving, instance_steps=n) for n in (0, 30))
    assert overlap(refined) > overlap(start) + 0.08, (overlap(start), overlap(refined))  # 0.82 -> 0.93
    assert not start.warnings and not refined.warnings
    # A network that finds nothing in one image (a dead map) says so, and its refinement is skipped.
    empty_moving = lambda self, f, m: (lambda t, s: (t, (s[0], s[1].with_data(s[1].data * 0))))(*segmentations(self, f, m))  # noqa: E731
    monkeypatch.setattr(RegistrationNet, "predict_with_segmentations", empty_moving)
    for steps in (0, 30):
        result = predict(run_2d / "segment" / "model.pt", fixed, moving, instance_steps=steps)
        assert [w["kind"] for w in result.warnings] == ["segmentation"] and "moving image" in result.warnings[0]["text"]
        assert not result.stages and any("instance optimisation skipped" in n for n in result.notes) == bool(steps)


def test_mirror_augmentation_reflects_the_chosen_axes_about_the_grid_centre_half_the_time():
    from morphreg.learn.augment import random_map

    grid = Grid([12, 10], spacing=[2.0, 1.5], origin=[-11.0, -6.75])  # centred on 0
    x = grid.points().unsqueeze(0)
    s = random_map(grid, 64, torch.Generator().manual_seed(0), mirror=[0])
    y = s.forward(x)
    flipped = torch.isclose(y[..., 0], -x[..., 0]).flatten(1).all(1)
    kept = torch.isclose(y[..., 0], x[..., 0]).flatten(1).all(1)
    assert bool((flipped ^ kept).all()) and 20 < int(flipped.sum()) < 44  # each sample one or the other, ~half
    assert torch.allclose(y[..., 1], x[..., 1].expand_as(y[..., 1]))  # the other axis untouched
    assert torch.allclose(s.inverse(y), x.expand_as(y), atol=1e-5)


def _random_net(seed: int, **config) -> RegistrationNet:
    torch.manual_seed(seed)
    net = RegistrationNet(ModelSpace((16, 16), (2.0, 2.0)), encoder=(8, 8, 8), decoder=(8, 8, 8), **config)
    for p in net.parameters():  # random enough to give different, non-trivial maps
        torch.nn.init.normal_(p, std=0.3)
    return net.eval()


def test_an_ensemble_averages_its_members_translations_fields_and_segmentations(tmp_path, capfd):
    from morphreg.learn.model import RegistrationEnsemble, ensemble
    from morphreg.learn.predict import predict

    pair = make_phantom_pair(dim=2, size=30, spacing=1.5, seed=0)
    p = pair.fixed.grid.points().reshape(-1, 2)
    keypoint = dict(kind="none", affine=True, keypoints=1, keypoint_maps="segmentation", linear="translation")
    for config in (keypoint, dict(kind="displacement")):
        members = [_random_net(seed, **config) for seed in (1, 2, 3)]
        joined = ensemble(members)
        mean = torch.stack([m.predict(pair.fixed, pair.moving).points(p) for m in members]).mean(0)
        assert (mean - members[0].predict(pair.fixed, pair.moving).points(p)).norm(dim=-1).max() > 0.1  # they differ
        torch.testing.assert_close(joined.predict(pair.fixed, pair.moving).points(p), mean, atol=1e-4, rtol=0)
    members = [_random_net(seed, **keypoint) for seed in (1, 2)]
    maps = [m.predict_with_segmentations(pair.fixed, pair.moving)[1] for m in members]
    joined = ensemble(members)
    _, joined_maps = joined.predict_with_segmentations(pair.fixed, pair.moving)
    for side in (0, 1):
        torch.testing.assert_close(joined_maps[side].data, (maps[0][side].data + maps[1][side].data) / 2)
    # The CLI writes one model file (version 4, refused by older readers with a one-line error) that predict uses.
    for seed in (1, 2):
        save_model(_random_net(seed, **keypoint), tmp_path / f"m{seed}.pt", card={"config": {"loss": {"segmentation": 1}}})
    code, _, err = cli(capfd, "ensemble", tmp_path / "m1.pt", tmp_path / "m2.pt", "-o", tmp_path / "e.pt")
    assert code == 0, err
    assert torch.load(tmp_path / "e.pt", weights_only=True)["version"] == 4
    loaded, card = load_model(tmp_path / "e.pt")
    assert isinstance(loaded, RegistrationEnsemble) and len(card["ensemble_of"]) == 2
    offset = predict(tmp_path / "e.pt", pair.fixed, pair.moving).transform.points(p)
    torch.testing.assert_close(offset, joined.predict(pair.fixed, pair.moving).points(p), atol=1e-4, rtol=0)
    before = (tmp_path / "m1.pt").read_bytes()
    code, _, err = cli(capfd, "ensemble", tmp_path / "m1.pt", tmp_path / "m2.pt", "-o", tmp_path / "m1.pt")
    assert code == 2 and "input" in one_line_error(err, "m1.pt") and (tmp_path / "m1.pt").read_bytes() == before
    save_model(_random_net(1, kind="displacement"), tmp_path / "d.pt")
    code, _, err = cli(capfd, "ensemble", tmp_path / "m1.pt", tmp_path / "d.pt", "-o", tmp_path / "x.pt")
    assert code == 2 and "share one config" in one_line_error(err) and not (tmp_path / "x.pt").exists()
    with pytest.raises(MorphregError, match="2 or more single networks"):
        ensemble([joined, _random_net(1, **keypoint)])
