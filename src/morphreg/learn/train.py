"""``morphreg train CONFIG.yaml -o RUN``: one trainer for unsupervised and weakly supervised training.

The loss is the engine's (:func:`morphreg.optim.terms.loss_terms`): the same similarities, soft Dice
and penalties as classical registration, evaluated through the same sampler, logged term by term.

Run folder: ``config.yaml`` (the validated config), ``metrics.csv`` (per step the loss and its terms,
the learning rate and time; per validation the validation loss, Dice and folding), ``checkpoint.pt``
(every ``train.checkpoint_every`` steps), ``model.pt`` (the model file, rewritten at each
checkpoint and at the end), ``loss_curve.png``, and ``tensorboard/`` when the tensorboard package is
installed (not a dependency).

Exact resume: the batch of step s is drawn from a permutation seeded by (seed, epoch of s), nothing
else is random, and the checkpoint holds the weights, Adam's moments and the scheduler; so
``--resume`` continues with the same next batch and the same losses as an uninterrupted run (a test
checks the weights bitwise). Rows of metrics.csv written after the last checkpoint are dropped.

The run folder is a run folder of :func:`morphreg.core.files.run_folder`: new or empty for a new run,
a train run for ``--resume``, never a folder holding the config or the images, held by one run at a
time (taken when :meth:`Trainer.fit` starts). ``--resume`` without ``checkpoint.pt`` starts again
from step 0 only when the run never reached a checkpoint (no ``model.pt``); else it is refused.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import time
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from morphreg.core.differences import mapping_jacobian_determinant
from morphreg.core.devices import checked_device
from morphreg.core.files import atomic_path, check_run_folder, normal_permissions, record_in_manifest, run_folder
from morphreg.core.numerics import flushed_denormals
from morphreg.core.sampling import sample
from morphreg.errors import MorphregError
from morphreg.metrics.overlap import soft_dice
from morphreg.metrics.points import centroid_distance
from morphreg.learn.augment import change_intensity, random_map, synthesised_pair, warp_batch
from morphreg.learn.config import RunConfig, load_config
from morphreg.learn.data import PairFiles, collate, load_pairs, pair_rows
from morphreg.learn.model import ModelSpace, RegistrationNet, save_model
from morphreg.learn.networks import average_pool, grid_gradients
from morphreg.optim.terms import PenaltyTerm, StageLoss, loss_terms, total

STATE_FILE = "checkpoint.pt"
RUN_FILES = ("config.yaml", "metrics.csv", STATE_FILE, "model.pt", "loss_curve.png", "tensorboard")


def training_inputs(config: RunConfig, config_file: str | Path | None = None) -> list[str]:
    """Every file a run reads: the config file, the data tables and the images they name."""
    d = config.data
    tables = [t for t in (d.pairs, d.val_pairs, d.images) if t]
    rows = [row for t in tables for row in pair_rows("pairs" if t != d.images else "unpaired", t)] if tables else []
    files = {*(str(v) for v in (config_file, *tables, d.atlas, d.atlas_labels) if v),
             *(p for row in rows for p in row.values())}
    return sorted(files)


def earlier_run_folder(folder: Path) -> set[str] | None:
    """The files of a run folder written before run folders had a manifest (only the run's own files, and
    its config.yaml as morphreg writes it), or None."""
    import yaml

    names = {p.name for p in folder.iterdir()}
    if "config.yaml" not in names or not names <= set(RUN_FILES):
        return None
    try:
        text = (folder / "config.yaml").read_text(encoding="utf-8")
        if text != yaml.safe_dump(load_config(folder / "config.yaml", base=Path("/")).to_dict(), sort_keys=False):
            return None  # a config a person wrote (comments, other order): not a run's own copy
    except (MorphregError, OSError):
        return None
    return names


def _tensorboard(folder: Path):
    """A TensorBoard writer into ``folder`` when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


def _start_distributed(device: str) -> tuple[int, int]:
    """(rank, world size): joins torchrun's process group when WORLD_SIZE > 1, else (0, 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if str(device).startswith("cuda"):  # one GPU per process, chosen before NCCL starts
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def network_of(config: RunConfig) -> RegistrationNet:
    m = config.model
    space = ModelSpace(tuple(m.size), tuple(float(s) for s in m.spacing), tuple(m.percentiles))
    return RegistrationNet(space, m.kind, m.encoder, m.decoder, m.steps, affine=m.affine, network=m.network,
                           control_mm=m.control_mm, linear=m.linear, cascade=m.cascade,
                           keypoints=m.keypoints, keypoint_maps=m.keypoint_maps)


@dataclass(frozen=True)
class TrainingLoss:
    """What :func:`batch_loss` computes: the engine's stage loss and penalties (``stage``, ``penalties``) plus the
    terms only training has: ``affine`` (weight of mean |A - I| of an affine part), ``gradients`` (of mean
    |g - 1| of the grid steps: the lung-MRI network's alpha and beta), ``symmetric`` (average the data terms with
    the reverse direction), ``segmentation`` (weight of :func:`segmentation_loss` of the keypoint maps) and
    ``segmentation_cross_entropy`` / ``segmentation_centroid`` (the weights of its cross-entropy and centroid parts,
    relative to the Dice part)."""

    stage: StageLoss
    penalties: list[PenaltyTerm]
    _: KW_ONLY  # the training-only terms by name: they grow with the recipes
    affine: float = 0.0
    gradients: float = 0.0
    symmetric: bool = False
    segmentation: float = 0.0
    segmentation_cross_entropy: float = 0.0
    segmentation_centroid: float = 0.0


def training_loss(config: RunConfig) -> TrainingLoss:
    """The :class:`TrainingLoss` of ``config.loss``."""
    loss = config.loss
    stage = StageLoss(loss.similarity, dict(loss.similarity_params), loss.similarity_weight,
                      penalties=list(loss.penalties), label_weight=loss.labels, endpoint_weight=loss.endpoint,
                      centroid_weight=loss.centroids, box_weight=loss.boxes, label_scales_mm=tuple(loss.label_scales_mm))
    penalties = [PenaltyTerm(p["name"], float(p.get("weight", 1.0)), dict(p.get("params") or {}), mask_name=p.get("mask"))
                 for p in loss.penalties]
    return TrainingLoss(stage, penalties, affine=loss.affine, gradients=loss.gradients, symmetric=loss.symmetric,
                        segmentation=loss.segmentation, segmentation_cross_entropy=loss.segmentation_cross_entropy,
                        segmentation_centroid=loss.segmentation_centroid)


def with_segmentation_targets(pair: dict, channel: int) -> dict:
    """``pair`` with ``fixed_segmentation`` / ``moving_segmentation`` (1, *shape): its label channel
    ``channel`` of each image, the targets of loss.segmentation (taken before one channel is sampled).
    ``channel`` counts the channels as the pairs hold them: after data.label_channels, and for integer label
    maps one channel per label value present in both images (so give one-hot stacks, or select the label)."""
    if pair["fixed_labels"].shape[0] <= channel:
        raise MorphregError(f"loss.segmentation_channel {channel}: a pair has only {pair['fixed_labels'].shape[0]} "
                            "label channels")
    return {**pair, "fixed_segmentation": pair["fixed_labels"][channel:channel + 1],
            "moving_segmentation": pair["moving_labels"][channel:channel + 1]}


def segmentation_loss(logits: tuple[torch.Tensor, torch.Tensor], batch: dict, cross_entropy: float = 0.0,
                      centroid: float = 0.0, centroids=None) -> torch.Tensor:
    """Mean over both images of 1 - soft Dice between the first keypoint map (sigmoid of its ``logits``
    (N, 1, *shape / 2)) of each image and its segmentation target (N, 1, *shape), averaged over 2 voxels per
    axis as the maps are; plus ``cross_entropy`` x the mean binary cross-entropy of the map against the target;
    plus ``centroid`` x the mean distance / 10 mm between the map's centroid and the target's, both by
    ``centroids`` ((N, 1, *shape / 2) weights -> (N, 1, dim) mm: the keypoint head's own, so the term measures
    the keypoint the registration uses). Why the centroid part: a translation between two such keypoints is
    the registration, and Dice + cross-entropy weigh every wrong voxel alike, wherever it shifts the centroid.
    Why the cross-entropy (Dice + CE, as nnU-Net): the Dice term alone drives the logits to hundreds, and a map
    that falls below zero everywhere is dead (its sigmoid's gradient vanishes). It happened to the MR network in
    1 of 3 prostate CV folds (logits -1080..-18 after 1000 steps); the cross-entropy's gradient on a missed gland
    voxel stays p - 1 ~ -1 however negative its logit."""
    total = 0.0
    for z, side in zip(logits, ("fixed", "moving")):
        target = average_pool(batch[f"{side}_segmentation"], 2).to(z.dtype)
        total = total + 1 - soft_dice(torch.sigmoid(z[:, :1]), target).mean()
        if cross_entropy:
            total = total + cross_entropy * F.binary_cross_entropy_with_logits(z[:, :1], target)
        if centroid:
            error = centroids(torch.sigmoid(z[:, :1])) - centroids(target)
            total = total + centroid * error.norm(dim=-1).mean() / 10.0
    return total / 2


def one_label_pair(pair: dict, gen: torch.Generator) -> dict:
    """``pair`` with one random channel of its (corresponding) fixed and moving labels, (1, *shape) each."""
    if "fixed_labels" not in pair:
        return pair
    k = int(torch.randint(pair["fixed_labels"].shape[0], (1,), generator=gen))
    return {**pair, "fixed_labels": pair["fixed_labels"][k:k + 1], "moving_labels": pair["moving_labels"][k:k + 1]}


def changed_batch(batch: dict, config: RunConfig, grid, gen: torch.Generator) -> dict:
    """A batch after ``data.augment`` (see morphreg.learn.augment). Supervised (loss.endpoint > 0): the
    moving image (and labels) become the fixed ones through the inverse of a random map S, and
    ``batch["target"]`` = S(x) on the grid. Otherwise each side gets its own random map (image, labels
    and mask alike). Then the intensities of each image change independently."""
    a = config.data.augment
    spatial = {k: getattr(a, k) for k in ("rotation_deg", "scale", "shift_mm", "deformation_mm", "control_mm", "mirror")}
    n = batch["fixed"].shape[0]
    x = grid.points().unsqueeze(0)
    if config.loss.endpoint:
        s = random_map(grid, n, gen, **spatial)
        inverse = s.inverse(x)
        batch = {**batch, "moving": sample(batch["fixed"], grid, inverse), "target": s.forward(x)}
        for kind in ("labels", "segmentation"):
            if f"fixed_{kind}" in batch:
                batch[f"moving_{kind}"] = sample(batch[f"fixed_{kind}"], grid, inverse)
    elif a.rotation_deg or a.scale or a.shift_mm or a.deformation_mm or a.mirror:
        for side in ("fixed", "moving"):
            points = random_map(grid, n, gen, **spatial).forward(x)
            keys = (side, f"{side}_labels", f"{side}_segmentation", f"{side}_mask") + \
                (("rigidity_mask",) if side == "fixed" else ())
            batch = warp_batch(batch, keys, grid, points)
    if a.noise or a.bias or a.gamma or a.contrast:
        for side in ("fixed", "moving"):
            batch[side] = change_intensity(batch[side], grid, gen, a.noise, a.bias, a.gamma, a.contrast)
    return batch


def batch_loss(net: RegistrationNet, batch: dict, objective: TrainingLoss, forward=None):
    """(named weighted terms, mapped points (N, *shape, dim), warped labels) of one batch on the canonical
    grid; ``forward``: what runs the network (its DistributedDataParallel wrapper), default ``net``."""
    grid = net.grid
    # A penalty with "mask: rigidity" acts inside each pair's rigidity mask (fixed grid).
    penalties = [dataclasses.replace(p, mask=batch[f"{p.mask_name}_mask"]) if p.mask_name else p
                 for p in objective.penalties]
    field, matrix, shift = (forward or net)(batch["fixed"], batch["moving"])
    mapped = net.mapped(field, matrix, shift)
    warped = sample(batch["moving"], grid, mapped)
    warped_labels = sample(batch["moving_labels"], grid, mapped) if "moving_labels" in batch else None
    stages = net.stage_fields(field)
    terms = loss_terms(objective.stage, fixed=batch["fixed"], warped=warped, mask=batch.get("fixed_mask"), grid=grid,
                       fixed_labels=batch.get("fixed_labels"), warped_labels=warped_labels, field=stages[0],
                       field_grid=grid, penalties=penalties, mapped_grid=mapped, target_grid=batch.get("target"))
    for later in stages[1:]:  # a cascade: each stage's field is penalised
        for name, value in loss_terms(objective.stage, field=later, field_grid=grid, penalties=penalties).items():
            terms[name] = terms[name] + value
    if objective.symmetric:  # the fixed image (and labels) through T^-1 onto the moving ones: data terms averaged
        inverse = net.inverse_mapped(field)
        back = loss_terms(objective.stage, fixed=batch["moving"], warped=sample(batch["fixed"], grid, inverse),
                          mask=batch.get("moving_mask"), grid=grid, fixed_labels=batch.get("moving_labels"),
                          warped_labels=sample(batch["fixed_labels"], grid, inverse) if "fixed_labels" in batch else None)
        for name, value in back.items():
            terms[name] = (terms[name] + value) / 2
    if objective.affine and matrix is not None:
        terms["affine"] = objective.affine * (matrix - torch.eye(grid.dim, device=matrix.device)).abs().mean()
    if objective.segmentation:
        head = net.affine_head
        terms["segmentation"] = objective.segmentation * segmentation_loss(
            head.last_logits, batch, objective.segmentation_cross_entropy, objective.segmentation_centroid, head.centroids)
    if objective.gradients:
        terms["gradients"] = objective.gradients * (grid_gradients(field, grid.spacing) - 1).abs().mean()
    return terms, mapped, warped_labels


@dataclass
class TrainReport:
    run: Path
    steps: int
    seconds: float
    last: dict
    stopped_early: bool = False


class Trainer:
    """Train ``config`` into the folder ``run`` (see the module docstring).

    Under ``torchrun`` (WORLD_SIZE > 1) the processes train one model with torch's
    DistributedDataParallel (gloo on CPUs, nccl on GPUs, one GPU per process): every process draws
    the same global batch of ``batch_size x processes`` pairs (and its random changes) and trains on
    its own slice, DDP averages the gradients, so 2 processes x batch 1 follow 1 process x batch 2.
    Only process 0 writes the run folder."""

    def __init__(self, config: RunConfig, run: str | Path, resume: bool = False, config_file: str | Path | None = None):
        self.config, self.run, self.resume = config, Path(run), resume
        t = config.train
        device = checked_device(t.device, "train.device")
        if t.threads:
            torch.set_num_threads(t.threads)
        self.rank, self.world = _start_distributed(t.device)
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.device = device
        torch.manual_seed(t.seed)
        self.net = network_of(config).to(self.device)
        self.forward = self.net
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(self.net, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=t.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.objective = training_loss(config)
        self.term_names = [n for n, w in (("similarity", config.loss.similarity and config.loss.similarity_weight),
                                          ("labels", config.loss.labels), ("centroids", config.loss.centroids),
                                          ("boxes", config.loss.boxes), ("segmentation", config.loss.segmentation),
                                          ("endpoint", config.loss.endpoint),
                                          ("affine", config.model.affine and config.loss.affine),
                                          ("gradients", config.loss.gradients)) if w]
        self.term_names += list(dict.fromkeys(p.name for p in self.objective.penalties))
        self.step, self.best, self.bad_validations = 0, math.inf, 0
        space, data = self.net.space, config.data
        # The data first: a bad pairs table or image fails before the run folder exists.
        if data.mode == "pairs":
            self.pairs = load_pairs(data.pairs, space, data.label_channels, data.workers)
        else:  # prepared when a step draws them
            self.pairs = PairFiles(pair_rows(data.mode, data.images, data.atlas, data.atlas_labels, data.atlas_side),
                                   space, data.label_channels)
        self.val_pairs = load_pairs(data.val_pairs, space, data.label_channels, data.workers) if data.val_pairs else []
        self._check_pairs()
        self.inputs = training_inputs(config, config_file)
        self._check_folder()  # before fit() holds the folder, so that the step of a resumed run is known
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()  # every process has checked the folder before process 0 writes into it
        self.board = None

    def _check_pairs(self) -> None:
        """What the loss and the batches need of the pairs, said in one line before any work."""
        config, data = self.config, self.config.data
        rows = self.pairs.rows if isinstance(self.pairs, PairFiles) else self.pairs
        for name in {p.mask_name for p in self.objective.penalties if p.mask_name}:
            if not all(f"{name}_mask" in p for p in list(rows) + list(self.val_pairs)):
                raise MorphregError(f"a penalty acts inside the {name} mask: every pair needs a {name}_mask column",
                                    data.pairs or data.images)
        if config.loss.symmetric and any("fixed_mask" in p for p in list(rows) + list(self.val_pairs)):
            raise MorphregError("loss.symmetric with a fixed_mask column: the reverse direction has no mask on the "
                                "moving side; drop one of them", data.pairs or data.images)
        if data.synthesise and not all("fixed_labels" in p for p in rows):
            raise MorphregError("data.synthesise makes images from the label maps: every pair needs fixed_labels and "
                                "moving_labels", data.pairs or data.images)
        if (config.loss.labels or config.loss.centroids or config.loss.boxes or config.loss.segmentation) and \
                not all("fixed_labels" in p for p in rows):
            raise MorphregError("loss.labels / centroids / boxes / segmentation > 0 but some training pairs have no "
                                "fixed_labels / moving_labels", data.pairs or data.images)
        if config.loss.segmentation:
            held = list(rows) + list(self.val_pairs)
            if not all("fixed_labels" in p for p in held):
                raise MorphregError("loss.segmentation > 0: every pair, the validation pairs too, needs fixed_labels / "
                                    "moving_labels", data.pairs or data.images)
            channel = config.loss.segmentation_channel
            if any(not isinstance(p["fixed_labels"], str) and p["fixed_labels"].shape[0] <= channel for p in held):
                raise MorphregError(f"loss.segmentation_channel {channel}: some pairs have no such label channel",
                                    data.pairs or data.images)
        counts = {p["fixed_labels"].shape[0] for p in rows if "fixed_labels" in p and not isinstance(p["fixed_labels"], str)}
        if len(counts) > 1 and data.label_sampling == "all" and config.train.batch_size * self.world > 1:
            raise MorphregError(f"the pairs have {sorted(counts)} label channels: batches need one count (set "
                                "data.label_sampling: one, or data.label_channels)", data.pairs)

    # ----- schedule and data order ----------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        if self.config.train.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, self.config.train.steps) / self.config.train.steps))
        return 1.0

    def batch_indices(self, step: int) -> list[int]:
        """The pairs of step ``step`` (all processes'): epochs of a seeded permutation (the same on a
        resumed run)."""
        n, size = len(self.pairs), self.config.train.batch_size * self.world
        per_epoch = max(1, n // size)
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.train.seed * 100003 + epoch))
        return [int(order[(k * size + j) % n]) for j in range(size)]

    # ----- folder, checkpoints ------------------------------------------------------------------------------
    def _check_folder(self) -> None:
        """What the folder must be for this run (see the module doc); a resumed run's checkpoint is loaded."""
        state = check_run_folder(self.run, "train", self.inputs, RUN_FILES, earlier_run_folder)
        saved = self.run / "config.yaml"
        if not self.resume:
            if state != "new":
                raise MorphregError("the run folder is not empty: use --resume to continue it, or another folder", self.run)
            return
        if state == "new" or not saved.is_file():
            raise MorphregError("nothing to resume: no config.yaml in the run folder", self.run)
        before = load_config(saved, base=Path("/")).to_dict()
        now = self.config.to_dict()
        if self.config.train.lr_schedule == "constant":  # a constant rate allows a longer run
            before["train"]["steps"] = now["train"]["steps"]
        if before != now:
            key = next((f"{s}.{k}" for s in now for k in now[s] if now[s][k] != before.get(s, {}).get(k)), "a key")
            raise MorphregError(f"--resume with another config ({key} differs from the run's config.yaml; "
                                "train.steps may change only with lr_schedule constant)", self.run)
        if (self.run / STATE_FILE).is_file():
            self._load_checkpoint()
        elif (self.run / "model.pt").is_file():  # it reached a checkpoint: from step 0 would replace its work
            raise MorphregError("cannot resume: checkpoint.pt is missing but the run has reached a checkpoint (model.pt is "
                                "here); put checkpoint.pt back, or train into another folder", self.run)
        else:  # stopped before its first checkpoint: from step 0, the same run
            self.step, self.best, self.bad_validations = 0, math.inf, 0

    def _start_run(self, folder) -> None:
        """Under the held folder: checked again (another run may have written it meanwhile), the metrics after
        the checkpoint dropped, the config saved."""
        import yaml

        if self.rank == 0:
            self._check_folder()
            self._truncate_metrics()
            with atomic_path(self.run / "config.yaml") as tmp:
                tmp.write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False), encoding="utf-8")
            self.board = _tensorboard(self.run / "tensorboard")
            if self.board is not None:
                folder.record("tensorboard")
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()  # process 0 holds and has prepared the folder before any process trains

    def _held_folder(self):
        """The run folder held by process 0 for the whole training (see :func:`run_folder`)."""
        if self.rank:
            return contextlib.nullcontext(None)
        return run_folder(self.run, "train", self.inputs, RUN_FILES, earlier_run_folder)

    def _load_checkpoint(self) -> None:
        try:
            state = torch.load(self.run / STATE_FILE, map_location=self.device, weights_only=True)
            self.net.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign checkpoint
            raise MorphregError(f"cannot resume from checkpoint.pt ({type(exc).__name__})", self.run) from None
        self.step, self.best, self.bad_validations = int(state["step"]), float(state["best"]), int(state["bad"])

    def _checkpoint(self) -> None:
        if self.rank:
            return
        state = {"step": self.step, "best": self.best, "bad": self.bad_validations, "model": self.net.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        with atomic_path(self.run / STATE_FILE) as tmp:
            torch.save(state, tmp)
        save_model(self.net, self.run / "model.pt", card=self.card())

    def card(self) -> dict:
        return {"config": self.config.to_dict(), "steps": self.step, "best_val_loss": self.best if math.isfinite(self.best) else None}

    @property
    def columns(self) -> list[str]:
        return ["step", "loss", *self.term_names, "lr", "seconds", "val_loss", "val_dice", "val_folding_percent",
                "val_centroid_mm", "val_endpoint_mm"]

    def _truncate_metrics(self) -> None:
        """Drop the rows written after the checkpoint (atomically: a reader never sees half a file)."""
        path = self.run / "metrics.csv"
        if not path.is_file():
            return
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def _write_rows(self, rows: list[dict]) -> None:
        if self.rank:
            return
        path = self.run / "metrics.csv"
        new = not path.is_file()
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)
        if new:
            normal_permissions(path)
            record_in_manifest(path)

    # ----- the loop ---------------------------------------------------------------------------------------
    @flushed_denormals()  # a trained map's saturated sigmoid makes denormals: 4x slower steps on CPU without
    def fit(self, on_step=None) -> TrainReport:
        """Train until ``train.steps`` (or early stopping); ``on_step(step, row)`` after every step. The run
        folder is held meanwhile (a second run into it is refused)."""
        with self._held_folder() as folder:
            self._start_run(folder)
            return self._train(on_step)

    def _train(self, on_step) -> TrainReport:
        t = self.config.train
        t0 = time.perf_counter()
        rows: list[dict] = []
        last: dict = {}
        stopped = False
        self.net.train()
        while self.step < t.steps and not stopped:
            gen = torch.Generator().manual_seed(t.seed * 1_000_003 + self.step)  # this step's random changes
            pairs = [self.pairs[i] for i in self.batch_indices(self.step)]
            if self.config.data.synthesise:
                pairs = [synthesised_pair(p, self.net.grid, gen) for p in pairs]
            if self.config.loss.segmentation:
                pairs = [with_segmentation_targets(p, self.config.loss.segmentation_channel) for p in pairs]
            if self.config.data.label_sampling == "one":
                pairs = [one_label_pair(p, gen) for p in pairs]
            batch = changed_batch(collate(pairs), self.config, self.net.grid, gen)
            mine = slice(self.rank * t.batch_size, (self.rank + 1) * t.batch_size)
            batch = {k: v[mine].to(self.device) for k, v in batch.items()}
            terms, _, _ = batch_loss(self.net, batch, self.objective, self.forward)
            loss = total(terms)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            logged = self._mean_over_processes({"loss": loss, **terms})
            row = {"step": self.step + 1, **logged, "lr": self.optimizer.param_groups[0]["lr"],
                   "seconds": time.perf_counter() - t0}
            self.scheduler.step()
            self.step += 1
            if self.val_pairs and (self.step % t.validate_every == 0 or self.step == t.steps):
                row.update(self.validate())
                stopped = self._early_stop(row["val_loss"])
            rows.append(row)
            last = row
            if self.board is not None:
                for key, value in row.items():
                    if key != "step" and isinstance(value, float) and math.isfinite(value):
                        self.board.add_scalar(key, value, self.step)
            if on_step is not None:
                on_step(self.step, row)
            if self.step % t.checkpoint_every == 0 or self.step == t.steps or stopped:
                self._write_rows(rows)
                rows = []
                self._checkpoint()
        self._write_rows(rows)
        self._checkpoint()
        self.loss_curve()
        if self.board is not None:
            self.board.close()
        return TrainReport(self.run, self.step, time.perf_counter() - t0, last, stopped)

    def _mean_over_processes(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        stacked = torch.stack([v.detach().float() for v in values.values()])
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(stacked)
            stacked /= self.world
        return dict(zip(values, stacked.tolist()))

    def _early_stop(self, val_loss: float) -> bool:
        if val_loss < self.best:
            self.best, self.bad_validations = val_loss, 0
            return False
        self.bad_validations += 1
        return self.config.train.patience is not None and self.bad_validations >= self.config.train.patience

    @torch.no_grad()
    def validate(self) -> dict:
        """Mean validation loss, Dice of the warped labels (channels > 0.5), distance of their centroids (mm:
        the TRE of landmark blobs), % of folded points and, for supervised training, the endpoint error
        on synthetic pairs (the same maps at every validation)."""
        self.net.eval()
        losses, dices, folds, endpoints, centroids = [], [], [], [], []
        for i, pair in enumerate(self.val_pairs):
            if self.config.loss.segmentation:
                pair = with_segmentation_targets(pair, self.config.loss.segmentation_channel)
            batch = {k: v.unsqueeze(0) for k, v in pair.items()}
            if self.config.loss.endpoint:
                batch = changed_batch(batch, self.config, self.net.grid, torch.Generator().manual_seed(10_000_019 + i))
            batch = {k: v.to(self.device) for k, v in batch.items()}
            terms, mapped, warped_labels = batch_loss(self.net, batch, self.objective)
            losses.append(float(total(terms)))
            if warped_labels is not None:
                points = self.net.grid.points(device=self.device).unsqueeze(0)
                centroids.append(float(centroid_distance(batch["fixed_labels"], warped_labels, points)))
                dices.append(float(soft_dice((batch["fixed_labels"] > 0.5).float(), (warped_labels > 0.5).float())))
            det = mapping_jacobian_determinant(torch.movedim(mapped.double(), -1, 1), self.net.grid)
            folds.append(100.0 * float((det <= 0).double().mean()))
            if "target" in batch:
                endpoints.append(float((mapped - batch["target"]).norm(dim=-1).mean()))
        self.net.train()
        mean = lambda v: sum(v) / len(v) if v else math.nan  # noqa: E731
        return {"val_loss": mean(losses), "val_dice": mean(dices), "val_folding_percent": mean(folds),
                "val_centroid_mm": mean(centroids), "val_endpoint_mm": mean(endpoints)}

    def loss_curve(self) -> Path | None:
        """RUN/loss_curve.png: training loss per step and the validation loss."""
        if self.rank:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = self.run / "metrics.csv"
        if not path.is_file():
            return None
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], lw=0.8, label="training loss")
        val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss")]
        if val:
            ax.plot(*zip(*val), "o-", label="validation loss")
        ax.set_xlabel("step")
        ax.legend()
        fig.tight_layout()
        with atomic_path(self.run / "loss_curve.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        return self.run / "loss_curve.png"
