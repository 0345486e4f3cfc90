"""When a registration result deserves a red warning: one rule for the console and the report.

Each warning is ``{"kind": ..., "text": ...}``; the kind lets a caller merge warnings found from
different sources without repeating one. Thresholds:

- folding: any voxel with det J <= 0 (the map is not invertible there);
- extreme volume change: det J < 0.1 or > 10 somewhere (tissue squeezed or blown up tenfold);
- inverse consistency: |S(T(x)) - x| above 2 voxels at most or 0.5 voxel on average (the
  claimed inverse is not one, so the inverse outputs are not to be trusted);
- identity: the transform moves no point by 1e-3 mm or more (nothing was registered);
- discarded stages: a stage whose result was thrown away (its objective got worse, or an
  independent check rejected it).
"""
from __future__ import annotations

import math

DET_J_LOW, DET_J_HIGH = 0.1, 10.0
IC_MAX_VOXELS, IC_MEAN_VOXELS = 2.0, 0.5
IDENTITY_MM = 1e-3


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _g(x) -> str:
    """A number for a message; summary.json stores NaN/inf as null."""
    return f"{x:.5g}" if isinstance(x, (int, float)) else "n/a"


def quality_warnings(quality: dict, voxel_mm: float) -> list[dict]:
    """Warnings from a :func:`morphreg.evaluate.transform_quality` result (``jacobian``,
    ``displacement``, optional ``inverse_consistency``); ``voxel_mm``: the fixed grid's largest spacing."""
    out = []
    j = quality.get("jacobian", {})
    if _ok(j.get("folding_percent")) and j["folding_percent"] > 0:
        out.append({"kind": "folding", "text": f"the transform folds: {j['folding_percent']:.3g} % of voxels "
                    f"({j.get('folded_voxels', '?')}) have det J <= 0 (tissue would overlap itself)"})
    low, high = j.get("min"), j.get("max")
    if (_ok(low) and 0 < low < DET_J_LOW) or (_ok(high) and high > DET_J_HIGH):
        out.append({"kind": "det_j", "text": f"extreme local volume change: det J from {_g(low)} to {_g(high)} "
                    f"(outside {DET_J_LOW:g}..{DET_J_HIGH:g})"})
    ic = quality.get("inverse_consistency")
    if ic and _ok(ic.get("max_mm")) and (ic["max_mm"] > IC_MAX_VOXELS * voxel_mm or
                                         (_ok(ic.get("mean_mm")) and ic["mean_mm"] > IC_MEAN_VOXELS * voxel_mm)):
        out.append({"kind": "inverse", "text": f"large inverse-consistency error: |S(T(x)) - x| mean {_g(ic.get('mean_mm'))} mm, "
                    f"max {ic['max_mm']:.3g} mm (voxel {voxel_mm:.3g} mm): the inverse is not reliable"})
    moved = quality.get("displacement", {}).get("max_mm")
    if _ok(moved) and moved < IDENTITY_MM:
        out.append({"kind": "identity", "text": "the result is the identity transform: nothing was registered"})
    return out


def stage_warnings(stages: list[dict]) -> list[dict]:
    """One warning per discarded stage of a registration summary."""
    out = []
    for s in stages:
        if not s.get("diverged"):
            continue
        guard = s.get("guard") or {}
        if guard and not guard.get("accepted", True):
            why = "an independent check rejected it"
            if guard.get("similarity"):
                why += f" ({guard['similarity']} {_g(guard.get('before'))} -> {_g(guard.get('after'))})"
            if guard.get("move_mm") is not None:
                why += f", it moved the region by {_g(guard['move_mm'])} mm"
            if guard.get("det_j_range") is not None:
                why += f", det J {_g(guard['det_j_range'][0])}..{_g(guard['det_j_range'][1])}"
        else:
            why = f"its objective got worse ({_g(s.get('initial_objective'))} -> {_g(s.get('final_objective'))})"
        out.append({"kind": f"discarded:{s.get('index')}",
                    "text": f"stage {s.get('index')} ({s.get('model')}) was discarded: {why}; the previous transform was kept"})
    return out


def merge_warnings(*groups: list[dict]) -> list[dict]:
    """All warnings, the first of each kind kept."""
    seen, out = set(), []
    for group in groups:
        for w in group:
            if w["kind"] not in seen:
                seen.add(w["kind"])
                out.append(w)
    return out
