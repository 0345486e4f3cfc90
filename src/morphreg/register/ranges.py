"""The range of every numeric stage setting, checked before any work starts (one line, exit 2).

A setting is found by its key wherever it sits in a stage (``model_params``, ``optimizer`` and its
``extra``, ``similarity_params``, penalties, ``guard``, the stage's own weights); ``levels`` entries
are checked as ``[shrink >= 1, sigma >= 0 mm or '<k>vox' or null, iterations >= 1]``. A numeric key
that is not in the table must still be a finite number; booleans and strings are left to the
method's own checks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from morphreg.errors import MorphregError


@dataclass(frozen=True)
class Range:
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # True: the value must be > low (else >= low)
    integer: bool = False

    def admits(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high and (not self.integer or float(value).is_integer())

    def text(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low = "" if self.low == -math.inf else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high == math.inf else f"<= {self.high:g}"
        return f"{kind} {' and '.join(p for p in (low, high) if p)}".strip()


POSITIVE, NON_NEGATIVE = Range(0.0, low_open=True), Range(0.0)
COUNT, STEPS = Range(1, integer=True), Range(0, integer=True)
SHRINK = Range(1.0)
SHARE = Range(0.0, 1.0, low_open=True)
RANGES: dict[str, Range] = {
    # weights and sizes in mm / voxels
    "weight": NON_NEGATIVE, "label_weight": NON_NEGATIVE, "landmark_weight": NON_NEGATIVE,
    "similarity_weight": NON_NEGATIVE, "label_sigma_mm": NON_NEGATIVE, "smoothing_mm": NON_NEGATIVE,
    "smoothing": NON_NEGATIVE, "control_spacing_mm": POSITIVE, "search_radius_mm": POSITIVE, "sigma_mm": NON_NEGATIVE,
    "max_move_mm": NON_NEGATIVE, "fluid_sigma_vox": NON_NEGATIVE, "diffusion_sigma_vox": NON_NEGATIVE,
    "coupling_sigma_vox": NON_NEGATIVE, "max_step_vox": POSITIVE, "aggregate_vox": NON_NEGATIVE,
    "couplings": NON_NEGATIVE, "temperature": POSITIVE, "min_gain": Range(),
    # grids: shrink factors of the fixed grid
    "field_shrink": SHRINK, "exp_shrink": SHRINK, "cube_field_shrink": SHRINK, "grid_shrink": SHRINK,
    # counts
    "steps": STEPS, "search_steps": COUNT, "window": COUNT, "radius": COUNT, "dilation": COUNT, "threads": COUNT,
    "patience": COUNT, "history": COUNT, "bins": Range(2, integer=True), "iterations": COUNT,
    # optimiser
    "lr": POSITIVE, "tolerance": NON_NEGATIVE, "sample_fraction": SHARE, "final_lr_ratio": SHARE,
}


def check_stage_numbers(stage: dict, where: str) -> None:
    """Every numeric setting of ``stage`` inside its range (``where``: how the error names the stage,
    e.g. 'stage 2 (svf)'); raises one MorphregError naming the first that is not."""
    for path, value in _numbers({k: v for k, v in stage.items() if k != "levels"}, ()):
        rule = RANGES.get(next(p for p in reversed(path) if isinstance(p, str)))  # a list item: its list's key
        if not math.isfinite(value) or (rule is not None and not rule.admits(value)):
            wanted = rule.text() if rule is not None else "a finite number"
            raise MorphregError(f"{where}: {_name(path)} = {value!r} is out of range (it must be {wanted})")
    for i, level in enumerate(stage.get("levels") or []):
        _check_level(level, f"{where}: levels[{i}]")


def _check_level(level, where: str) -> None:
    entry = [level.get("shrink"), level.get("sigma_mm"), level.get("iterations", 50)] if isinstance(level, dict) \
        else list(level) if isinstance(level, (list, tuple)) else None
    if entry is None or not 1 <= len(entry) <= 3:
        raise MorphregError(f"{where} = {level!r}: a level is [shrink, sigma, iterations]")
    shrink, sigma, iterations = (entry + [None, 50])[:3]
    if not _is_number(shrink) or not SHRINK.admits(shrink):
        raise MorphregError(f"{where}: shrink = {shrink!r} must be a number >= 1")
    if sigma is not None and not (isinstance(sigma, str) and sigma.endswith("vox")):
        if not _is_number(sigma) or not math.isfinite(sigma) or sigma < 0:
            raise MorphregError(f"{where}: sigma = {sigma!r} must be mm >= 0, '<k>vox' or null")
    if isinstance(sigma, str):
        try:
            ok = float(sigma[:-3]) >= 0
        except ValueError:
            ok = False
        if not ok:
            raise MorphregError(f"{where}: sigma = {sigma!r} must be mm >= 0, '<k>vox' (k >= 0) or null")
    if not _is_number(iterations) or not COUNT.admits(iterations):
        raise MorphregError(f"{where}: iterations = {iterations!r} must be an integer >= 1")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value, path: tuple):
    if _is_number(value):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, path + (str(k),))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _numbers(v, path + (i,))


def _name(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))
