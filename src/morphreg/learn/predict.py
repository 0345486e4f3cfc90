"""Inference: a trained network's transform as an ordinary registration :class:`Result` (the same files,
evaluation and report as classical registration), optionally refined by instance optimisation.

Instance optimisation (as in VoxelMorph++ and ConvexAdam) is the classical loop of the registry,
started from the network's transform: one SVF stage at full resolution on top of it, with the
similarity and penalties of the training loss. It runs like any classical stage, on the images at
their own resolution and intensities (not on the model grid's normalised ones), so its weights are
the classical stage's, not the training loss's scale.

A network that segments both images (model.keypoint_maps segmentation, trained with loss.segmentation)
is refined on its own segmentations instead: the label-driven affine stage of the classical engine
(soft Dice of the smoothed segmentations, images not used), the second step of the two-step design
"segment the gland in both images, then the label-driven affine".
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from morphreg.core.devices import checked_device
from morphreg.core.numerics import flushed_denormals
from morphreg.errors import MorphregError
from morphreg.learn.model import load_model
from morphreg.learn.zoo import resolve_model

INSTANCE_LR = 0.3  # the svf stage's step of the classical presets


def trained_loss(card: dict) -> dict:
    """The loss section a model was trained with, from either shape of model card: a training run's card holds its
    whole config (``config.loss``), a shipped model's card (benchmarks/prostate_model.py) the loss alone."""
    return card.get("config", {}).get("loss") or card.get("loss") or {}


def instance_stage(card: dict, steps: int) -> dict:
    """The SVF stage that refines a network's transform for ``steps`` iterations with its training loss."""
    loss = trained_loss(card)
    return {"model": "svf", "model_params": {"steps": 7},
            "similarity": loss.get("similarity") or {"mono": "lncc", "multi": "mind"},
            "similarity_params": loss.get("similarity_params") or {},
            "penalties": loss.get("penalties") or [{"name": "diffusion", "weight": 0.5}],
            "optimizer": {"name": "adam", "lr": INSTANCE_LR, "tolerance": 1e-5, "patience": 15},
            "levels": [[1, 0.0, int(steps)]]}


def label_instance_stage(steps: int) -> dict:
    """The label-driven affine stage (the "labels" preset's, at half resolution) for ``steps`` iterations,
    started from the network's transform rather than from the labels' centres."""
    from morphreg.register.presets import get_preset

    return {**get_preset("labels")[0], "init": None, "levels": [[2, None, int(steps)]]}


def refines_on_segmentations(net, card: dict) -> bool:
    """Whether instance optimisation is the label-driven affine on the network's own segmentations: a linear
    keypoint network (model.kind none) whose maps were trained as segmentations (loss.segmentation > 0)."""
    trained = (trained_loss(card).get("segmentation") or 0) > 0
    return net.kind == "none" and bool(net.keypoints) and net.keypoint_maps == "segmentation" and trained


@flushed_denormals()
def predict(model: str | Path, fixed, moving, instance_steps: int = 0, device: str = "cpu", seed: int = 0):
    """Register ``moving`` to ``fixed`` (paths or Images) with ``model`` (a file or a shipped model's name); with
    ``instance_steps`` > 0 the network's transform is refined by that many classical iterations."""
    from morphreg.register import register
    from morphreg.register.api import build_result
    from morphreg.image.sampling import sample_onto
    from morphreg.register.inputs import intensity_image, load_image

    t0 = time.perf_counter()
    if instance_steps < 0:
        raise MorphregError(f"--instance-optimization must be >= 0, not {instance_steps}")
    checked_device(device, "--device")
    net, card = load_model(resolve_model(model), device)
    fixed_path = str(fixed) if isinstance(fixed, (str, Path)) else None
    moving_path = str(moving) if isinstance(moving, (str, Path)) else None
    fixed = intensity_image(load_image(fixed, "fixed image", labels=False), "fixed")
    moving = intensity_image(load_image(moving, "moving image", labels=False), "moving")
    t_io = time.perf_counter() - t0
    segmenting = refines_on_segmentations(net, card)
    if segmenting:  # one pass gives the segmentations too: their emptiness is checked, with or without refinement
        transform, segmentations = net.predict_with_segmentations(fixed, moving)
    else:
        transform = net.predict(fixed, moving)
    t_net = time.perf_counter() - t0 - t_io
    stage, labels, notes, empty = None, {}, [], []
    if segmenting:
        # On the images' own grids (nearest neighbour, world mm): they are the network's, not the user's files,
        # so the stage has no "labels on another grid" to say.
        fixed_seg, moving_seg = (sample_onto(s.with_data((s.data > 0.5).to(torch.uint8)), image.grid, interpolation="nearest",
                                             name=f"the network's segmentation of the {side} image")
                                 for s, image, side in zip(segmentations, (fixed, moving), ("fixed", "moving")))
        empty = [side for side, seg in (("fixed", fixed_seg), ("moving", moving_seg)) if not seg.data.any()]
    if segmenting and instance_steps:
        if empty:  # nothing for the label-driven stage to align: keep the network's transform, and say so
            notes.append(f"instance optimisation skipped: the network's segmentation of the {empty[0]} image is empty")
        else:
            stage, labels = label_instance_stage(instance_steps), {"fixed_labels": fixed_seg, "moving_labels": moving_seg}
    elif instance_steps:
        stage = instance_stage(card, instance_steps)
    if stage is not None:
        result = register(fixed, moving, [stage], initial_transform=transform, modality="mono", device=device,
                          seed=seed, **labels)
        result.fixed_path, result.moving_path = fixed_path, moving_path
    else:
        with torch.no_grad():
            result = build_result(transform, None, fixed, moving, [], "learned", "learned", fixed_path=fixed_path,
                                  moving_path=moving_path, t_io=t_io, t_start=t0)
    result.preset = "learned" + (f" + {instance_steps} instance steps" if stage is not None else "")
    result.notes += notes
    result.warnings += [{"kind": "segmentation", "text": f"the network found nothing in the {side} image (its "
                         "segmentation is empty): its transform aligns nothing and is not to be trusted"} for side in empty]
    result.timings = {**result.timings, "network_s": t_net}
    result.notes.append(f"model {model}")
    return result
