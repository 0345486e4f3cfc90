"""Optimisers over transform parameters, in scaled coordinates, with a relative-change stop.

Every optimiser here works on one flat vector z of *scaled* parameters: p = z * scale, where the
scale of a parameter is the size of a change that moves image points by about 1 mm (1 for
translations and displacements in mm, 1 / radius for angles and matrix entries). Step sizes are
therefore given in mm for every transform model, and L-BFGS sees a well-conditioned problem.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from morphreg.errors import MorphregError

OPTIMIZERS = ("adam", "gd", "lbfgs", "asgd")


@dataclass
class OptimizerConfig:
    """What to run at one level.

    Attributes:
        name: "adam" | "gd" (gradient descent with backtracking line search) | "lbfgs" (strong Wolfe) |
            "asgd" (stochastic gradient on random voxel samples with a decaying gain).
        lr: step size in mm (first step for gd/asgd, Adam's learning rate, L-BFGS's initial step).
        tolerance: stop when the best objective improved by less than this share of |J| over
            the last ``patience`` iterations.
        patience: iterations in the relative-change window.
        sample_fraction: share of voxels each asgd evaluation uses.
    """

    name: str = "adam"
    lr: float = 1.0
    tolerance: float = 1e-5
    patience: int = 20
    sample_fraction: float = 0.1
    history: int = 10  # L-BFGS memory
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise MorphregError(f"unknown optimiser {self.name!r} (choose from {', '.join(OPTIMIZERS)})")


class _Scaled:
    """Flat scaled view z of a list of parameter tensors: p_i = z_i * s_i."""

    def __init__(self, params: Sequence[torch.Tensor], scales: Sequence[float | torch.Tensor]):
        self.params = list(params)
        self.scales = [torch.as_tensor(s, dtype=p.dtype, device=p.device).expand_as(p) for p, s in zip(self.params, scales)]
        self.z = torch.cat([(p.detach() / s).reshape(-1) for p, s in zip(self.params, self.scales)]).clone().requires_grad_(True)

    def push(self, z: torch.Tensor | None = None) -> None:
        """Write z into the parameters."""
        z = self.z if z is None else z
        offset = 0
        with torch.no_grad():
            for p, s in zip(self.params, self.scales):
                n = p.numel()
                p.copy_(z[offset:offset + n].reshape(p.shape) * s)
                offset += n

    def evaluate(self, fn: Callable[[], torch.Tensor], z: torch.Tensor | None = None, grad: bool = True) -> torch.Tensor:
        """J at z (default: self.z); with ``grad`` also sets self.z.grad = dJ/dz."""
        self.push(z)
        for p in self.params:
            p.grad = None
        if not grad:
            with torch.no_grad():
                return fn().detach()
        loss = fn()
        loss.backward()
        gz = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad * s).reshape(-1) for p, s in zip(self.params, self.scales)])
        self.z.grad = gz.detach()
        return loss.detach()


class RelativeStop:
    """Stop when the best value did not improve by ``tolerance * |best|`` in ``patience`` calls."""

    def __init__(self, tolerance: float, patience: int):
        self.tolerance, self.patience = tolerance, max(1, patience)
        self.best = math.inf
        self.since = 0

    def __call__(self, value: float) -> bool:
        if not math.isfinite(value):
            return True
        if value < self.best - self.tolerance * max(abs(self.best) if math.isfinite(self.best) else abs(value), 1e-12):
            self.best = value
            self.since = 0
        else:
            self.since += 1
        return self.since >= self.patience


def minimize(
    fn: Callable[..., torch.Tensor],
    params: Sequence[torch.Tensor],
    scales: Sequence[float | torch.Tensor],
    iterations: int,
    config: OptimizerConfig,
    callback: Callable[[int, float], None] | None = None,
    generator: torch.Generator | None = None,
    stochastic: bool = False,
) -> list[float]:
    """Minimise ``fn()`` over ``params`` in place; returns the objective trace (one value per iteration).

    ``fn`` is called without arguments, except for "asgd", which calls ``fn(sample_fraction=..., generator=...)``
    so the objective can draw a random voxel subset. The parameters end at the best value seen
    (for the deterministic optimisers) or the last iterate (asgd, and any optimiser told
    ``stochastic``: ``fn`` draws new samples each call, so its values are not comparable; then every
    iteration runs, without the relative-change stop).
    """
    if iterations <= 0 or not params:
        return []
    view = _Scaled(params, scales)
    if stochastic and config.name not in ("adam", "asgd"):
        raise MorphregError(f"the {config.name} optimiser needs comparable values: use adam or asgd on stochastic levels")
    if config.name == "adam":
        return _adam(view, fn, iterations, config, callback, stochastic)
    runner = {"gd": _gradient_descent, "lbfgs": _lbfgs, "asgd": _asgd}[config.name]
    return runner(view, fn, iterations, config, callback, generator)


def _report(trace: list[float], value: float, callback) -> None:
    trace.append(value)
    if callback is not None:
        callback(len(trace), value)


def _keep_best(view: _Scaled, best_z: torch.Tensor) -> None:
    with torch.no_grad():
        view.z.copy_(best_z)
    view.push()


class _AdamStep:
    """torch's Adam update in its functional form (``torch.optim.adam.adam``, the same arithmetic as
    ``torch.optim.Adam.step``): the Optimizer class imports torch._dynamo on first use, 1.4 s of every
    command-line call."""

    def __init__(self, param: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
        self.steps = torch.tensor(0.0, device="cpu")  # as torch.optim.Adam: no device sync per step

    def step(self) -> None:
        from torch.optim.adam import adam

        with torch.no_grad():
            adam([self.param], [self.param.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.steps], foreach=False,
                 amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr, weight_decay=0.0, eps=self.eps,
                 maximize=False)


def _adam(view, fn, iterations, config, callback, stochastic: bool = False) -> list[float]:
    opt = _AdamStep(view.z, config.lr, tuple(config.extra.get("betas", (0.9, 0.999))))
    stop = RelativeStop(config.tolerance, config.patience)
    trace: list[float] = []
    best, best_z = math.inf, view.z.detach().clone()
    # The rate decays geometrically to final_lr_ratio * lr over the budget: big moves first, precision last.
    ratio = float(config.extra.get("final_lr_ratio", 1.0))
    for i in range(iterations):
        value = float(view.evaluate(fn))
        _report(trace, value, callback)
        if not stochastic:
            if value < best:
                best, best_z = value, view.z.detach().clone()
            if stop(value):
                break
        opt.lr = config.lr * ratio ** (i / max(1, iterations - 1))
        opt.step()
    if stochastic:
        view.push()  # the last iterate
    else:
        _keep_best(view, best_z)
    return trace


def _gradient_descent(view, fn, iterations, config, callback, generator) -> list[float]:
    """Steepest descent with Armijo backtracking; the accepted step grows by 1.5 for the next iteration."""
    stop = RelativeStop(config.tolerance, config.patience)
    trace: list[float] = []
    step = config.lr
    value = float(view.evaluate(fn))
    for _ in range(iterations):
        _report(trace, value, callback)
        if stop(value):
            break
        g = view.z.grad.clone()
        gmax = float(g.abs().max())
        if gmax == 0 or not math.isfinite(gmax):
            break
        direction = -g / gmax  # a unit step moves the fastest parameter by 1 (mm)
        slope = float((g * direction).sum())
        z0 = view.z.detach().clone()
        accepted = False
        for _ in range(12):
            trial = z0 + step * direction
            new = float(view.evaluate(fn, trial, grad=False))
            if math.isfinite(new) and new <= value + 1e-4 * step * slope:
                accepted = True
                break
            step *= 0.5
        if not accepted:
            _keep_best(view, z0)
            break
        with torch.no_grad():
            view.z.copy_(trial)
        value = float(view.evaluate(fn))
        step *= 1.5
    return trace


def _lbfgs(view, fn, iterations, config, callback, generator) -> list[float]:
    opt = torch.optim.LBFGS([view.z], lr=config.lr, max_iter=1, history_size=config.history,
                            line_search_fn="strong_wolfe", tolerance_change=0.0, tolerance_grad=0.0)
    stop = RelativeStop(config.tolerance, max(1, config.patience // 4))
    trace: list[float] = []
    best, best_z = math.inf, view.z.detach().clone()

    def closure():
        return view.evaluate(fn)

    for _ in range(iterations):
        value = float(opt.step(closure))
        _report(trace, value, callback)
        if value < best:
            best, best_z = value, view.z.detach().clone()
        if stop(value):
            break
    _keep_best(view, best_z)
    return trace


def _asgd(view, fn, iterations, config, callback, generator) -> list[float]:
    """Robbins-Monro steps gamma_k = a / (A + k + 1)^0.602 on random-sample gradients (elastix-style decay).

    a is set from the first gradient so that the first step moves the fastest parameter by ``lr`` mm.
    """
    big_a = config.extra.get("A", max(1.0, 0.1 * iterations))
    alpha = config.extra.get("alpha", 0.602)
    trace: list[float] = []
    stop = RelativeStop(config.tolerance, config.patience)
    a = None
    for k in range(iterations):
        view.push()
        value = float(view.evaluate(lambda: fn(sample_fraction=config.sample_fraction, generator=generator)))
        _report(trace, value, callback)
        g = view.z.grad
        if a is None:
            gmax = float(g.abs().max())
            if gmax == 0 or not math.isfinite(gmax):
                break
            a = config.lr * (big_a + 1) ** alpha / gmax
        with torch.no_grad():
            view.z -= a / (big_a + k + 1) ** alpha * g
        if stop(value):
            break
    view.push()
    return trace
