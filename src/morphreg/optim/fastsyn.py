"""Fast symmetric diffeomorphic registration (the SyN class) for same-grid, image-only problems.

The generic driver (:mod:`morphreg.optim.multires`) evaluates every model in world coordinates with
overlap masks, full-resolution checks and a dense field per level; that is general but slow on large
3D volumes. This solver keeps only what a SyN-type registration needs:

* the moving image is resampled once through the prior (linear) transform onto the fixed grid, so
  every level compares two images on one grid (shrunk copies of the fixed grid);
* the stationary velocity v lives on a coarse grid (the fixed grid shrunk by ``field_shrink``, e.g.
  4 mm), is smoothed by a Gaussian (fluid-like) and exponentiated there by scaling and squaring; the
  displacements exp(+-v/2) are upsampled trilinearly to the level grid (exact for grids made by
  ``Grid.downsample`` of one grid: same extent and centre);
* symmetric: the moving image is warped by exp(v/2), the fixed one by exp(-v/2), compared half way
  with the similarity (LNCC by default) plus penalties on v (diffusion);
* Adam with a decaying rate and a relative-change stop per level; the full-resolution level gets no
  iterations by default (as ANTs' default SyN). With ``patches`` it does get them, cheaply: each
  iteration compares the images on a few random cubes of the full-resolution grid inside the fixed
  image's foreground (stochastic gradient, as elastix's random samplers, but cubes so that LNCC keeps
  its windows); the velocity still lives on the coarse grid, only the image detail is new.

The stage transform is exp(v) (fixed -> prior space), its inverse exp(-v), integrated on a grid twice
as fine as v's (``exp_shrink``): linear interpolation of exp(v) from the coarse velocity grid left a
few folded voxels where the map compresses most.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from morphreg.core.sampling import sample
from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox
from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.pyramid import pyramid_level
from morphreg.optim.optimizers import OptimizerConfig, RelativeStop
from morphreg.optim.progress import add_progress
from morphreg.transforms import StationaryVelocityFieldTransform, scaling_and_squaring
from morphreg.transforms.warp import warp

SUPPORTED_PENALTIES = ("diffusion", "bending", "elastic")


def upsample_field(field: torch.Tensor, src: Grid, dst: Grid) -> torch.Tensor:
    """(N, C, *src.shape) -> (N, C, *dst.shape), linear, border values extended.

    Both grids must be ``downsample`` copies of one grid (same extent, centre and direction): then
    index j of ``dst`` lies at (j + 1/2) * n_src / n_dst - 1/2 of ``src``, which is exactly
    ``F.interpolate(..., align_corners=False)`` (much faster than a general resampling).
    """
    if src.same_as(dst):
        return field
    mode = "trilinear" if src.dim == 3 else "bilinear"
    return F.interpolate(field, size=tuple(dst.shape), mode=mode, align_corners=False)


class PatchSampler:
    """Random cubes of a grid whose centres lie in a foreground (stochastic full-resolution levels).

    Args:
        grid: the level's grid; ``foreground``: (1, 1, *grid.shape) bool, where cube centres may lie.
        count: cubes per draw; ``size``: cube edge in voxels (clipped to the grid).
        seed: the draws are reproducible.
    """

    def __init__(self, grid: Grid, foreground: torch.Tensor, count: int, size: int, seed: int = 0):
        self.grid, self.count = grid, int(count)
        shape = torch.tensor(grid.shape)
        self.size = torch.clamp(torch.full_like(shape, int(size)), max=shape)
        self.max_start = shape - self.size
        self.centres = foreground[0, 0].nonzero()
        if len(self.centres) == 0:  # no foreground: anywhere
            self.centres = torch.ones(grid.shape, dtype=torch.bool).nonzero()
        axes = [torch.arange(int(n)) for n in self.size]
        self.offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*size, dim), tensor axis order
        m = torch.as_tensor(grid.index_to_world(), dtype=torch.float32)
        self.matrix, self.origin = m[: grid.dim, : grid.dim], m[: grid.dim, grid.dim]
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """World points of ``count`` cubes, mm, (1, count, *size, dim) (x, y, z last)."""
        pick = torch.randint(len(self.centres), (self.count,), generator=generator or self.generator)
        start = torch.minimum(torch.clamp(self.centres[pick] - self.size // 2, min=0), self.max_start)
        index = (start.view(self.count, *[1] * len(self.size), -1) + self.offsets).flip(-1).float()
        return (index @ self.matrix.T + self.origin).unsqueeze(0)


def foreground(image: torch.Tensor, mask: torch.Tensor | None = None, fraction: float = 0.01) -> torch.Tensor:
    """Where the fixed image is not background: ``mask`` when given, else above min + fraction of its range."""
    if mask is not None:
        return mask > 0
    lo, hi = image.min(), image.max()
    return image > lo + fraction * (hi - lo)


class FastSyN:
    """State and loop of the fast solver; see the module docstring.

    Args:
        domain: the full-resolution fixed grid.
        field_shrink: shrink factor of the velocity grid relative to ``domain`` (its finest size).
        smoothing_mm: Gaussian sigma applied to v in every evaluation (on the velocity grid).
        steps: scaling-and-squaring steps.
        symmetric: meet half way (SyN) or warp the moving image only.
        exact_gradient: back-propagate through scaling and squaring (slower) instead of the
            first-order log-domain gradient.
        threads: intra-op threads of the loop (default: 1 on whole-grid levels, the caller's on
            cube levels; see :meth:`run`).
        patches: (count, size): full-resolution levels compare the images on ``count`` random cubes
            of ``size`` voxels per iteration (new cubes every iteration) instead of the whole grid.
        seed: of the cube draws.
        cube_field_shrink: shrink factor of the velocity grid on cube levels (None = ``field_shrink``).
            Brain T1 b->a (`accurate` schedule): 2 instead of 4 gave Dice 0.651 -> 0.656 for 2.1x the
            level's time (0.658 with 2 mm smoothing, but folded voxels), so the presets leave it at None.
    """

    def __init__(self, domain: Grid, field_shrink: float = 4.0, smoothing_mm: float = 4.0, steps: int = 6,
                 symmetric: bool = True, exact_gradient: bool = False, threads: int | None = None,
                 patches: tuple[int, int] | None = None, seed: int = 0, cube_field_shrink: float | None = None):
        self.domain = domain
        self.patches, self.seed, self.cube_field_shrink = patches, seed, cube_field_shrink
        self.threads = threads
        self.exact_gradient = exact_gradient
        self.field_shrink, self.smoothing_mm, self.steps, self.symmetric = field_shrink, smoothing_mm, steps, symmetric
        self.grid: Grid | None = None
        self.velocity: torch.Tensor | None = None

    # ----- the field -----
    def start_level(self, image_grid: Grid, field_shrink: float | None = None) -> None:
        # Small images keep >= 32 velocity points along their shortest axis (the shrink is meant for volumes).
        shrink = min(field_shrink or self.field_shrink, max(1, min(self.domain.size) // 32))
        finest = self.domain.downsample(shrink) if shrink > 1 else self.domain
        new = image_grid if image_grid.spacing.min() >= finest.spacing.min() * (1 - 1e-6) else finest
        if self.velocity is None:
            data = torch.zeros(1, self.domain.dim, *new.shape)
        elif new.same_as(self.grid):
            data = self.velocity.detach()
        else:
            pts = new.points(dtype=self.velocity.dtype).unsqueeze(0)
            data = sample(self.velocity.detach(), self.grid, pts, "linear", fill_value=None)
        self.grid = new
        self.velocity = data.clone().requires_grad_(True)

    def smoothed(self) -> torch.Tensor:
        v = self.velocity
        if self.smoothing_mm:
            v = gaussian_filter(v, sigma_mm_to_vox(self.smoothing_mm, self.grid))
        return v

    def displacements(self, v: torch.Tensor) -> torch.Tensor:
        """(2, dim, *grid.shape): exp(v/2) - id and exp(-v/2) - id (symmetric), or (1, ...) exp(v) - id."""
        scaled = torch.cat([0.5 * v, -0.5 * v]) if self.symmetric else v
        if self.exact_gradient:
            return scaling_and_squaring(scaled, self.grid, self.steps)  # both halves in one batched pass
        # Log-domain (demons-style) step: the gradient w.r.t. v is taken as the gradient w.r.t. the
        # displacement (d exp(v) / dv = identity to first order), which skips back-propagating
        # through every squaring (most of the cost); the forward map is still the exact exp(v).
        with torch.no_grad():
            u = scaling_and_squaring(scaled.detach(), self.grid, self.steps)
        return u + (scaled - scaled.detach())

    # ----- the loop -----
    def run(self, fixed: Image, moving: Image, levels, similarity, sim_params: dict, penalties: list,
            optimizer: OptimizerConfig, fixed_mask: Image | None = None, progress=None, name: str = "syn"):
        """Optimise level by level; returns (trace per level, seconds per level, initial, final, terms)."""
        threads = torch.get_num_threads()
        try:
            # Per level the tensors are small (<= 1/8 of the volume) and the loop runs thousands of short
            # ops: on a shared machine intra-op threads mostly wait on each other (measured up to 10x
            # slower with 2 threads under load), so the solver runs single-threaded unless told otherwise.
            # Cube levels work on larger batches and do gain (brain, 8 cubes of 32^3: 0.23 -> 0.14 s per
            # iteration with 2 threads); _run switches per level.
            torch.set_num_threads(self.threads or 1)
            return self._run(fixed, moving, levels, similarity, sim_params, penalties, optimizer, fixed_mask, progress, name,
                             threads)
        finally:
            torch.set_num_threads(threads)

    def _run(self, fixed, moving, levels, similarity, sim_params, penalties, optimizer, fixed_mask, progress, name,
             caller_threads: int):
        from morphreg.metrics.losses import similarity_loss
        from morphreg.regularizers import penalty_function

        sim_fn = similarity_loss(similarity)
        pens = [(penalty_function(p["name"]), float(p.get("weight", 1.0)), dict(p.get("params", {}))) for p in penalties]
        traces, seconds = [], []
        initial = final = math.nan
        terms: dict[str, float] = {}
        for k, level in enumerate(levels):
            t0 = time.perf_counter()
            f_k = pyramid_level(fixed, level.shrink, level.sigma_mm)
            m_k = pyramid_level(moving, level.shrink, level.sigma_mm)
            g = f_k.grid
            cubes = bool(self.patches) and g.same_as(self.domain)
            self.start_level(g, self.cube_field_shrink if cubes else None)
            mask = None
            if fixed_mask is not None:
                mask = (warp(fixed_mask, None, g, "linear").batch() > 0.5).float()
            f, m = f_k.batch(), m_k.batch()
            sampler = None
            if cubes:
                sampler = PatchSampler(g, foreground(f, mask), *self.patches, seed=self.seed + k)
            torch.set_num_threads(self.threads or (caller_threads if sampler is not None else 1))

            def compare(v, pts, with_terms: bool = False):
                """Similarity at world points ``pts`` (1, *out, dim) of the level grid + penalties on v."""
                u = self.displacements(v)
                if sampler is None:  # whole grid: upsampling the field is much faster than sampling it
                    moved = pts + torch.movedim(upsample_field(u, self.grid, g), 1, -1)
                else:
                    moved = pts + torch.movedim(sample(u, self.grid, pts, "linear", fill_value=None), 1, -1)
                warped = sample(m, g, moved[:1], "linear", fill_value=None)
                if self.symmetric:
                    ref = sample(f, g, moved[1:], "linear", fill_value=None)
                else:
                    ref = f if sampler is None else sample(f, g, pts, "linear", fill_value=None)
                w = mask
                if sampler is not None:  # (1, C, cubes, *size) -> (cubes, C, *size)
                    warped, ref = (torch.movedim(t, 2, 0).squeeze(1) for t in (warped, ref))
                    if mask is not None:
                        w = torch.movedim(sample(mask, g, pts, "nearest"), 2, 0).squeeze(1)
                d = sim_fn(ref, warped, mask=w, **sim_params)
                total = d
                parts = {"similarity": float(d.detach())} if with_terms else {}
                for (fn, weight, params), spec in zip(pens, penalties):
                    r = weight * fn(v, self.grid, **params)
                    total = total + r
                    if with_terms:
                        parts[spec["name"]] = float(r.detach())
                return total, parts

            if sampler is None:
                x = g.points(dtype=torch.float32).unsqueeze(0)
                objective = lambda with_terms=False: compare(self.smoothed(), x, with_terms)  # noqa: E731
                probe = x
            else:
                # Stochastic level: new cubes each call; the checks below use one fixed set of cubes.
                objective = lambda with_terms=False: compare(self.smoothed(), sampler.draw(), with_terms)  # noqa: E731
                fixed_draws = torch.Generator().manual_seed(self.seed + 1000 + k)
                probe = torch.cat([sampler.draw(fixed_draws) for _ in range(4)], 1)

            callback = add_progress(progress, f"{name} level {k + 1}/{len(levels)}", level.iterations)
            if k == len(levels) - 1:  # the divergence check compares data terms at the last level
                with torch.no_grad():
                    initial = compare(torch.zeros_like(self.velocity), probe, True)[1]["similarity"]
            # Steps in mm shrink with the level's voxels (ANTs' gradient step is in voxels of each level).
            scale = level.shrink / max(levels[0].shrink, 1e-6)
            trace = self._adam(objective, level.iterations, optimizer, callback, scale, stochastic=sampler is not None)
            with torch.no_grad():
                _, terms = compare(self.smoothed(), probe, True)
            final = terms["similarity"]
            traces.append(trace)
            seconds.append(time.perf_counter() - t0)
        return traces, seconds, initial, final, terms

    def _adam(self, objective, iterations: int, config: OptimizerConfig, callback, scale: float = 1.0,
              stochastic: bool = False) -> list[float]:
        """Adam on the velocity; keeps the best iterate, or with ``stochastic`` (values of different
        samples are not comparable) runs every iteration and keeps the last."""
        if iterations <= 0:
            return []
        lr = config.lr * scale
        opt = torch.optim.Adam([self.velocity], lr=lr, betas=config.extra.get("betas", (0.9, 0.999)))
        stop = RelativeStop(config.tolerance, config.patience)
        ratio = float(config.extra.get("final_lr_ratio", 1.0))
        trace: list[float] = []
        best, best_v = math.inf, self.velocity.detach().clone()
        for i in range(iterations):
            opt.zero_grad(set_to_none=True)
            loss, _ = objective()
            loss.backward()
            value = float(loss.detach())
            trace.append(value)
            callback(i + 1, value)
            if not stochastic:
                if value < best:
                    best, best_v = value, self.velocity.detach().clone()
                if stop(value):
                    break
            for group in opt.param_groups:
                group["lr"] = lr * ratio ** (i / max(1, iterations - 1))
            opt.step()
        if not stochastic:
            with torch.no_grad():
                self.velocity.copy_(best_v)
        return trace


def fast_svf_model(prior, domain: Grid, params: dict):
    """The ``svf`` stage model with ``{"solver": "fast"}``: a :class:`DenseModel` (so every generic
    use keeps working) that runs :class:`FastSyN` when the stage is image-only."""
    from morphreg.optim.models import DenseModel

    class FastSVFModel(DenseModel):
        def __init__(self):
            super().__init__(prior, domain, "svf", bool(params.get("symmetric", True)),
                             float(params.get("smoothing_mm", 2.0)), float(params.get("field_shrink", 4.0)),
                             int(params.get("steps", 7)))
            self.exact_gradient = bool(params.get("exact_gradient", False))
            self.threads = params.get("threads")
            patches = params.get("patches")
            self.patches = None if not patches else (int(patches[0]), int(patches[1]))
            shrink = params.get("exp_shrink")
            self.exp_shrink = None if shrink is None else float(shrink)

        def _velocity(self, sign: float = 1.0):
            """The smoothed velocity for the stage transform, upsampled (linear) to the finer grid
            ``exp_shrink`` when given. Integrating exp(v) on a 2 mm instead of the 4 mm velocity grid
            removed the few folded voxels that linear interpolation of the coarse exp(v) left (brain
            T1 b->a: min det J -0.13 -> 0.065) and moved the map by <= 4.7 mm where it compresses
            most (Dice 0.623 -> 0.627); optimising with the finer exponential cost 1.8x the time for
            no gain (0.626), so only the result uses it."""
            v, grid = sign * self.field().detach(), self.grid
            if self.exp_shrink is not None:
                fine = domain.downsample(self.exp_shrink) if self.exp_shrink > 1 else domain
                if fine.spacing.min() < grid.spacing.min() * (1 - 1e-6):
                    v, grid = upsample_field(v, grid, fine), fine
            return v, grid

        def stage_transform(self, detach: bool = True):
            if not detach:
                return super().stage_transform(detach)
            return StationaryVelocityFieldTransform(*self._velocity(), self.steps)

        def inverse_transform(self):
            return StationaryVelocityFieldTransform(*self._velocity(-1.0), self.steps)

        def run_fast(self, inputs, levels, similarity, sim_params, penalties, optimizer, label_weight=0.0,
                     landmark_weight=0.0, similarity_weight=1.0, progress=None, name="syn", seed=0):
            """Run the fast solver (``seed``: its random cube draws); None when the stage needs the generic driver (labels, landmarks,
            moving mask, masked or unsupported penalties, weighted similarity)."""
            from morphreg.optim.multires import StageOutcome

            generic = ((inputs.fixed_labels is not None and label_weight) or (inputs.landmarks is not None and landmark_weight)
                       or inputs.moving_mask is not None or similarity_weight != 1.0
                       or any(p.get("mask") is not None or p["name"] not in SUPPORTED_PENALTIES for p in penalties))
            if generic:
                return None
            fixed = inputs.fixed
            with torch.no_grad():  # the moving image on the fixed grid through the prior, once
                moving = warp(inputs.moving.float(), self.prior, fixed.grid, "linear")
            solver = FastSyN(domain, self.grid_shrink, self.smoothing_mm, self.steps, self.symmetric, self.exact_gradient,
                             self.threads, self.patches, int(seed) % (2**31), params.get("cube_field_shrink"))
            traces, seconds, initial, final, terms = solver.run(fixed, moving, levels, similarity, sim_params, penalties,
                                                                optimizer, inputs.fixed_mask, progress, name)
            self.grid, self.param = solver.grid, solver.velocity.detach().clone().requires_grad_(True)
            return StageOutcome(traces, seconds, initial, final, not (final <= initial + 1e-6 * abs(initial)), terms)

    return FastSVFModel()
