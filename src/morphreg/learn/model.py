"""A registration network and the physical space it works in.

The network never sees an image's voxel grid. :class:`ModelSpace` defines a *model grid*: ``size``
points (ITK order x, y[, z]) at ``spacing`` mm, centred on the fixed image's centre, axes along the
fixed image's direction. Both images are resampled onto it (linear, world coordinates: the moving
image where it lies in the world) and their [low, high] intensity percentiles mapped to [0, 1]. So
any input size, spacing and orientation works, and training and inference prepare images the same
way (the space is stored in the model file).

Training works in the *canonical* model grid (same size and spacing, centred on the origin, identity
direction): the network's field (N, dim, *shape) is in mm along the model axes. At inference the
vectors are turned by the fixed image's direction, and the field becomes an ordinary morphreg
Transform (SVF or displacement) on the fixed image's model grid in world mm, which warps onto the
original fixed grid, saves as ITK files and is evaluated like any classical result.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from morphreg.core.grid import Grid
from morphreg.errors import MorphregError
from morphreg.image.image import Image
from morphreg.core.sampling import batch_affine_points, sample
from morphreg.core.bspline import evaluate_bspline_separable
from morphreg.learn.networks import (AffineHead, average_pool, DilatedEncoder, FieldHead, GradientHead, KeypointHead, UNet,
                                     integrate_gradients)
from morphreg.transforms import Transform
from morphreg.transforms.composite import CompositeTransform
from morphreg.transforms.bspline import BSplineTransform, control_grid_for
from morphreg.transforms.linear import AffineTransform
from morphreg.transforms.dense import DisplacementFieldTransform, StationaryVelocityFieldTransform

MODEL_FORMAT = "morphreg-model"
MODEL_VERSION = 4  # 2: the config keys control_mm, linear, cascade; 3: keypoint_maps; 4: members (an ensemble). Older
#                   files load unchanged; a file is written with the lowest version that holds it, so older morphreg reads it
FIELD_KINDS = ("svf", "displacement", "gradients", "bspline", "none")  # gradients: the lung-MRI network's
#   integrated grid; bspline: control points every control_mm; none: the affine head alone (model.affine)
NETWORKS = ("unet", "dilated")
LINEAR_MAPS = ("affine", "rigid", "translation")  # translation: keypoint heads only


KEYPOINT_MAPS = ("softmax", "segmentation")


def structure_problems(dim: int, kind: str, affine: bool, linear: str, keypoints: int, cascade: int,
                       keypoint_maps: str = "softmax") -> list[str]:
    """What is wrong with a network's structure keys (model.*), one line each ([] if nothing): one rule set
    for the config check and the constructor (which also guards model files)."""
    problems = []
    if (kind == "none" or linear == "rigid" or keypoints) and not affine or linear not in LINEAR_MAPS or \
            (keypoints and (linear == "rigid" or (linear == "affine" and keypoints < dim + 1))) or \
            (linear == "translation" and not keypoints):
        problems.append(f"model.kind none, model.linear rigid and model.keypoints need model.affine: true; model.linear "
                        f"is one of {', '.join(LINEAR_MAPS)} (translation: keypoints only; affine needs >= dim + 1 "
                        f"keypoints), not {linear!r} with {keypoints} keypoints")
    if cascade < 1 or (cascade > 1 and kind not in ("svf", "displacement")):
        problems.append(f"model.cascade {cascade} must be >= 1, and > 1 only with model.kind svf or displacement")
    if keypoint_maps not in KEYPOINT_MAPS or (keypoint_maps != "softmax" and not keypoints):
        problems.append(f"model.keypoint_maps must be one of {', '.join(KEYPOINT_MAPS)}, not {keypoint_maps!r}; "
                        "segmentation maps belong to a keypoint head (model.keypoints > 0)")
    return problems


def size_multiple(network: str, levels: int, cascade: int) -> int:
    """What model.size must divide by: the U-Net's 2 ** levels, times 2 per extra cascade stage."""
    return 2 ** ((levels if network == "unet" else 0) + max(cascade, 1) - 1)


@dataclass
class ModelSpace:
    """Where and how a network sees a pair (see the module docstring)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    percentiles: tuple[float, float] = (1.0, 99.0)

    @property
    def dim(self) -> int:
        return len(self.size)

    def grid_for(self, fixed: Grid) -> Grid:
        """The model grid of a pair: centred on ``fixed``'s centre, along its direction."""
        return fixed.with_size_about_center(self.size, self.spacing)

    def canonical(self) -> Grid:
        """The model grid centred on the origin with identity direction (the training frame)."""
        spacing = np.asarray(self.spacing, np.float64)
        origin = -(np.asarray(self.size) - 1) / 2 * spacing
        return Grid(self.size, origin, spacing)

    def prepare(self, image: Image, grid: Grid, labels: bool = False) -> torch.Tensor:
        """``image`` on ``grid``: (C, *shape) float32; intensities percentile-normalised to [0, 1]
        (first channel), label stacks as float one-hot channels (linear)."""
        from morphreg.image.intensity import rescale_intensity
        from morphreg.image.sampling import sample_onto

        if labels:
            return sample_onto(image.with_data(image.data.float()), grid, interpolation="linear").data.float()
        image = image.with_data(image.data[:1].float())
        low, high = self.percentiles
        return sample_onto(rescale_intensity(image, low, high), grid).data.float()


class RegistrationNet(nn.Module):
    """Backbone + head: (fixed, moving) on the canonical model grid -> a field (N, dim, *shape) mm.

    ``network``: "unet" (voxelmorph-style; sizes divide by 2 ** levels) or "dilated" (the lung-MRI
    network's dilated encoder, full resolution, any size). ``kind``: "svf" (stationary velocity,
    scaling and squaring: diffeomorphic), "displacement", or "gradients" (per-axis grid steps in
    (0, 2) integrated by cumulative sums, returned as the displacement they make: grid lines never
    fold back along their own axis; det J > 0 is *not* guaranteed, the cross terms are free), or
    "bspline" (cubic B-spline coefficients on a control grid every ``control_mm`` mm, DIRNet / DLIR;
    predicts an ITK-style B-spline transform), or "none" (no deformable part: an affine or, with
    ``linear="rigid"``, a rigid network). Constructed from a plain config (:meth:`config`), so a model file holds no code.
    """

    def __init__(self, space: ModelSpace, kind: str = "svf", encoder=(16, 32, 32, 32), decoder=(32, 32, 32, 16),
                 steps: int = 7, scale_mm: float | None = None, affine: bool = False, network: str = "unet",
                 control_mm: float = 10.0, linear: str = "affine", cascade: int = 1, keypoints: int = 0,
                 keypoint_maps: str = "softmax"):
        super().__init__()
        if kind not in FIELD_KINDS or network not in NETWORKS:
            raise MorphregError(f"model.kind must be one of {', '.join(FIELD_KINDS)} and model.network one of "
                                f"{', '.join(NETWORKS)}, not {kind!r} / {network!r}")
        problems = structure_problems(space.dim, kind, affine, linear, keypoints, cascade, keypoint_maps)
        multiple = size_multiple(network, len(encoder), cascade)
        if any(s % multiple for s in space.size):
            problems.append(f"model.size {list(space.size)} must divide by {multiple} "
                            "(2 ** (encoder levels + cascade stages - 1))")
        if problems:
            raise MorphregError(problems[0])
        self.space, self.kind, self.steps, self.network = space, kind, int(steps), network
        self.encoder, self.decoder = tuple(encoder), tuple(decoder)
        # Output unit: a few voxels, so the last layer works in a unit range whatever the spacing.
        self.scale_mm = float(scale_mm if scale_mm is not None else 4 * max(space.spacing))
        self.grid = space.canonical()
        self.control_mm, self.cascade = float(control_mm), int(cascade)
        if kind == "bspline":  # the head's field is read at each control point (DIRNet / DLIR)
            self.control_grid = control_grid_for(self.grid, self.control_mm)
        self.backbone, self.head = self._stage_modules()
        # A coarse-to-fine cascade: stage k of K sees the images averaged over 2 ** (K - 1 - k) voxels and the
        # moving image through the fields of the stages before it; the fields compose.
        self.refiners = nn.ModuleList(nn.ModuleList(self._stage_modules()) for _ in range(self.cascade - 1))
        self.affine, self.linear = bool(affine), linear
        # affine -> deformable in one model: the deformable part sees the moving image after the affine map.
        self.keypoints, self.keypoint_maps = int(keypoints), keypoint_maps
        if affine and keypoints:
            self.affine_head = KeypointHead(space.dim, self.grid.points(), keypoints, self.encoder[:3],
                                            self.decoder, fit=linear, maps=keypoint_maps)
        else:
            self.affine_head = AffineHead(space.dim, 2, self.encoder, 10 * self.scale_mm, rigid=linear == "rigid") \
                if affine else None

    def _stage_modules(self) -> tuple[nn.Module | None, nn.Module | None]:
        """(backbone, head) of one deformable stage."""
        dim = self.space.dim
        if self.kind == "none":
            return None, None
        backbone = UNet(dim, 2, self.encoder, self.decoder) if self.network == "unet" else \
            DilatedEncoder(dim, 2, self.encoder[0])
        if self.kind == "gradients":
            return backbone, GradientHead(dim, backbone.out_channels)
        return backbone, FieldHead(dim, backbone.out_channels, self.scale_mm)

    def config(self) -> dict:
        return {"space": {k: list(v) for k, v in asdict(self.space).items()}, "kind": self.kind,
                "encoder": list(self.encoder), "decoder": list(self.decoder), "steps": self.steps,
                "scale_mm": self.scale_mm, "affine": self.affine, "network": self.network, "control_mm": self.control_mm,
                "linear": self.linear, "cascade": self.cascade, "keypoints": self.keypoints,
                **({"keypoint_maps": self.keypoint_maps} if self.keypoint_maps != "softmax" else {})}

    @classmethod
    def from_config(cls, config: dict) -> RegistrationNet:
        c = dict(config)
        space = c.pop("space")
        return cls(ModelSpace(tuple(space["size"]), tuple(space["spacing"]), tuple(space["percentiles"])), **c)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor):
        """fixed, moving: (N, 1, *shape) on the canonical grid -> (field (N, dim, *shape) mm, matrix
        (N, dim, dim) and shift (N, dim) mm of the affine part, or None, None). The field is a velocity
        (svf) or a displacement (the other kinds) on the model grid; a cascade of K stages gives their K
        fields one after the other, (N, K * dim, *shape) (:meth:`stage_fields` splits them)."""
        out, matrix, shift = self.head_output(fixed, moving)
        return self.dense(out), matrix, shift

    def head_output(self, fixed: torch.Tensor, moving: torch.Tensor):
        """Like :meth:`forward`, with what the head gives before it becomes a dense field: the field, or
        (bspline) coefficients (N, dim, *control shape) mm, or (gradients) grid steps."""
        matrix = shift = None
        original = moving
        if self.affine_head is not None:
            matrix, shift = self.affine_head(torch.cat([fixed, moving], dim=1))
            points = self.grid.points(device=moving.device).unsqueeze(0)
            moving = sample(moving, self.grid, batch_affine_points(points, matrix, shift))
        if self.head is None:  # a linear network: a zero displacement keeps one code path for the losses
            return fixed.new_zeros(fixed.shape[0], self.space.dim, *fixed.shape[2:]), matrix, shift
        outs = []
        for k, (backbone, head) in enumerate([(self.backbone, self.head), *self.refiners]):
            # Later stages: the original moving image through A(T1(...(x))), resampled once.
            current = moving if not outs else sample(original, self.grid, self.mapped(torch.cat(outs, 1), matrix, shift))
            outs.append(self._stage(backbone, head, fixed, current, 2 ** (self.cascade - 1 - k)))
        out = torch.cat(outs, 1)
        if self.kind == "bspline":  # coefficients: the field at the control points (those outside: the border's)
            points = self.control_grid.points(device=out.device, dtype=out.dtype).unsqueeze(0)
            out = sample(out, self.grid, points, fill_value=None)
        return out, matrix, shift

    @staticmethod
    def _stage(backbone, head, fixed: torch.Tensor, moving: torch.Tensor, factor: int) -> torch.Tensor:
        """One stage's head output, computed on the images averaged over ``factor`` voxels per axis."""
        x = torch.cat([fixed, moving], dim=1)
        if factor == 1:
            return head(backbone(x))
        out = head(backbone(average_pool(x, factor)))
        return F.interpolate(out, scale_factor=factor, mode="bilinear" if x.dim() == 4 else "trilinear")

    def stage_fields(self, field: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The fields of the cascade's stages, each (N, dim, *shape) (one for a single network)."""
        return field.split(self.space.dim, dim=1)

    def inverse_mapped(self, field: torch.Tensor) -> torch.Tensor:
        """T^-1(x) on the canonical grid, (N, *shape, dim) mm, of an SVF network without affine head:
        exp(-v), the stages of a cascade inverted in reverse order."""
        if self.kind != "svf" or self.affine:
            raise MorphregError("the inverse map needs model.kind svf without model.affine")
        return self._composed([-f for f in reversed(self.stage_fields(field))])

    def _composed(self, fields) -> torch.Tensor:
        """x -> T_1(T_2(...T_k(x))) on the canonical grid, (N, *shape, dim): the stages' maps composed
        (the first stage's map applied last, as the moving image went through them in that order)."""
        fields = list(fields)
        points = self.transform(fields[-1]).map_grid(self.grid, device=fields[-1].device)
        for f in reversed(fields[:-1]):
            points = self.transform(f).points(points)
        return points

    def dense(self, out: torch.Tensor) -> torch.Tensor:
        """The head's output as a field (N, dim, *shape) on the model grid."""
        if self.kind == "gradients":
            return integrate_gradients(out, self.space.spacing)
        if self.kind == "bspline":  # the model grid's points in control-grid index units, one axis at a time
            offset = self.control_grid.world_to_index_points(self.grid.origin)
            ratio = self.grid.spacing / self.control_grid.spacing
            axes = [offset[k] + torch.arange(self.grid.size[k], dtype=out.dtype, device=out.device) * float(ratio[k])
                    for k in range(self.space.dim)]
            return evaluate_bspline_separable(out, axes, boundary="zero")
        return out

    def mapped(self, field: torch.Tensor, matrix: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
        """T(x) on the canonical grid, (N, *shape, dim) mm: the deformable part, then the affine one."""
        points = self._composed(self.stage_fields(field))
        return points if matrix is None else batch_affine_points(points, matrix, shift)

    def transform(self, field: torch.Tensor, grid: Grid | None = None) -> Transform:
        """The transform of a field on ``grid`` (default the canonical grid); differentiable."""
        grid = grid or self.grid
        if self.kind == "svf":
            return StationaryVelocityFieldTransform(field, grid, self.steps, parameter=False)
        return DisplacementFieldTransform(field, grid, parameter=False)

    def model_inputs(self, fixed: Image, moving: Image) -> tuple[Grid, torch.Tensor, torch.Tensor]:
        """(the pair's model grid in world mm, fixed and moving (1, 1, *shape) on it, normalised, on the
        network's device) of a pair of images on any grids."""
        for image in (fixed, moving):
            if image.dim != self.space.dim:
                raise MorphregError(f"this model registers {self.space.dim}D images, not {image.dim}D", image.name)
        grid = self.space.grid_for(fixed.grid)
        device = next(self.parameters()).device
        f, m = (self.space.prepare(x, grid).unsqueeze(0).to(device) for x in (fixed, moving))
        return grid, f, m

    @torch.no_grad()
    def predict(self, fixed: Image, moving: Image) -> Transform:
        """The fixed -> moving transform of a pair of images (any grids), in world mm."""
        return self._predicted(*self.model_inputs(fixed, moving))

    def _predicted(self, grid: Grid, f: torch.Tensor, m: torch.Tensor) -> Transform:
        """The world-mm transform of the pair prepared on its model grid ``grid`` (:meth:`model_inputs`)."""
        out, matrix, shift = self.head_output(f, m)
        field = out if self.kind == "bspline" else self.dense(out)
        if self.kind == "none":
            return self._world_linear(grid, matrix, shift).freeze()
        # Canonical axes -> world axes: the model grid's direction turns every vector.
        direction = torch.as_tensor(grid.direction, dtype=field.dtype, device=field.device)
        turned = [torch.einsum("ij,nj...->ni...", direction, f).cpu() for f in self.stage_fields(field)]
        if self.kind == "bspline":  # the same control grid about the world model grid
            stages = [BSplineTransform(control_grid_for(grid, self.control_mm), turned[0], domain=grid)]
        else:
            stages = [self.transform(f, grid) for f in turned]
        if matrix is not None:
            stages.insert(0, self._world_linear(grid, matrix, shift))
        return (stages[0] if len(stages) == 1 else CompositeTransform(stages)).freeze()

    @torch.no_grad()
    def predict_with_segmentations(self, fixed: Image, moving: Image) -> tuple[Transform, tuple[Image, Image]]:
        """:meth:`predict`, and the first keypoint map of each image (model.keypoint_maps segmentation, trained by
        loss.segmentation) as a probability Image (1, *shape) on the pair's model grid in world mm (upsampled
        from the maps' half resolution): the network's segmentation of, e.g., the gland in both images. One
        pass of the network gives both."""
        if not self.keypoints or self.keypoint_maps != "segmentation":
            raise MorphregError("this model has no segmentation maps (model.keypoint_maps segmentation)")
        grid, f, m = self.model_inputs(fixed, moving)
        transform = self._predicted(grid, f, m)
        mode = "bilinear" if self.space.dim == 2 else "trilinear"
        maps = tuple(Image(F.interpolate(p, size=tuple(f.shape[2:]), mode=mode)[0].cpu(), grid)
                     for p in self.segmentation_probabilities())
        return transform, maps

    def segmentation_probabilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first segmentation map of the fixed and of the moving image, (N, 1, *shape / 2) probabilities, of the
        forward pass just made."""
        return tuple(torch.sigmoid(z[:, :1]) for z in self.affine_head.last_logits)

    @staticmethod
    def _world_linear(grid: Grid, matrix: torch.Tensor, shift: torch.Tensor) -> AffineTransform:
        """The affine head's map in world mm: about the grid centre c, y = c + D (A D^T (x - c) + t)."""
        d = torch.as_tensor(grid.direction, dtype=matrix.dtype)
        return AffineTransform(grid.dim, (d @ matrix[0].cpu() @ d.T).numpy(), (d @ shift[0].cpu()).numpy(),
                               grid.center())


class RegistrationEnsemble(RegistrationNet):
    """``members`` networks of one config (one recipe trained with different seeds) used as one network: their head
    outputs are averaged (the field or B-spline coefficients, the affine matrix and shift), and so are the
    probabilities of their segmentation maps, so prediction, the segmentations and instance optimisation work as for
    a single network. Averaging is exact for translations and displacements; for an SVF it averages velocities, and
    for rigid heads the mean matrix is close to, not exactly, a rotation. Member 0 is this module itself, the others
    are in ``others``. Built from trained networks by :func:`ensemble`, never trained as one.
    Why: a network's error varies with its seed. On the prostate CV (78 pairs) two seeds of one recipe reach 7.40 and
    7.72 mm (per fold up to 1.06 mm apart) and their ensemble 7.49 mm, mean 8.16 as the better seed's: it takes
    away the seed lottery, not the error the seeds share (RESULTS.md, session 15)."""

    def __init__(self, space: ModelSpace, members: int = 2, **config):
        super().__init__(space, **config)
        if int(members) < 2:
            raise MorphregError(f"an ensemble has at least 2 members, not {members}")
        self.others = nn.ModuleList(RegistrationNet(space, **config) for _ in range(int(members) - 1))

    def config(self) -> dict:
        return {**super().config(), "members": len(self.others) + 1}

    def head_output(self, fixed: torch.Tensor, moving: torch.Tensor):
        outputs = [super().head_output(fixed, moving)] + [m.head_output(fixed, moving) for m in self.others]
        return tuple(None if parts[0] is None else torch.stack(parts).mean(0) for parts in zip(*outputs))

    def segmentation_probabilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        per_member = [super().segmentation_probabilities()] + [m.segmentation_probabilities() for m in self.others]
        return tuple(torch.stack(side).mean(0) for side in zip(*per_member))


def ensemble(nets: list[RegistrationNet]) -> RegistrationEnsemble:
    """One :class:`RegistrationEnsemble` of trained networks that share one config (their weights copied)."""
    if len(nets) < 2 or any(type(n) is not RegistrationNet for n in nets):
        raise MorphregError("an ensemble is made of 2 or more single networks")
    config = nets[0].config()
    if any(n.config() != config for n in nets[1:]):
        raise MorphregError("the networks of an ensemble must share one config (model section and model space)")
    joined = RegistrationEnsemble.from_config({**config, "members": len(nets)})
    state = dict(nets[0].state_dict())
    for k, net in enumerate(nets[1:]):
        state |= {f"others.{k}.{key}": value for key, value in net.state_dict().items()}
    joined.load_state_dict(state)
    return joined.to(next(nets[0].parameters()).device).eval()


def save_ensemble(models: list[str | Path], path: str | Path) -> Path:
    """Join the model files ``models`` (one config) into the ensemble model file ``path``. Its card is the first
    member's (so predict treats it as it would that member, e.g. its instance optimisation), with every member's file
    and card under ``ensemble_of``."""
    loaded = [load_model(m) for m in models]
    card = {**loaded[0][1], "ensemble_of": [{"file": str(m), "card": c} for m, (_, c) in zip(models, loaded)]}
    return save_model(ensemble([net for net, _ in loaded]), path, card=card)


def save_model(net: RegistrationNet, path: str | Path, card: dict | None = None, preprocessing: dict | None = None) -> Path:
    """One file: weights + constructor config + model card, loadable with ``weights_only=True``."""
    from morphreg.core.files import atomic_path

    config = net.config()
    version = MODEL_VERSION if "members" in config else 3 if "keypoint_maps" in config else 2
    payload = {"format": MODEL_FORMAT, "version": version, "config": config,
               "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "card": card or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_model(path: str | Path, device: str = "cpu") -> tuple[RegistrationNet, dict]:
    """(network in eval mode, model card) of a model file; one-line errors for anything else."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MorphregError("no such model file", path) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is not a model
        raise MorphregError(f"not a morphreg model file ({type(exc).__name__})", path) from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise MorphregError("not a morphreg model file", path)
    if payload.get("version", 0) > MODEL_VERSION:
        raise MorphregError(f"model file version {payload['version']} is newer than this morphreg reads", path)
    try:
        kind = RegistrationEnsemble if "members" in payload["config"] else RegistrationNet
        net = kind.from_config(payload["config"])
        net.load_state_dict(payload["state_dict"])
    except MorphregError as exc:  # the constructor's own checks refused the stored config
        raise MorphregError(f"damaged model file ({exc.problem})", path) from None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise MorphregError(f"damaged model file (its config or weights do not fit: {type(exc).__name__})", path) from None
    return net.to(device).eval(), payload.get("card", {})

