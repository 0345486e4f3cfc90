"""When a registration result deserves a red warning: one rule for the console and the report.

Each warning is ``{"kind": ..., "text": ...}``; the kind lets a caller merge warnings found from
different sources without repeating one. Thresholds, set from results a user should trust and
results that are wrong (measurements: benchmarks/RESULTS.md, session 21):

- folding: any voxel with det J <= 0 (the map is not invertible there);
- extreme local volume change: more than 0.1 % of the voxels with det J < 0.1 or > 10 (a good
  inter-subject brain SyN has a few such voxels, 0.01 %; a warning for those would be noise);
- overall volume change: the median det J outside 2/3..3/2 (the same organ imaged twice keeps its
  volume; an affine MR-TRUS result that halved it, median 0.55, had Dice 0.08);
- inverse consistency: |S(T(x)) - x| at 5 voxels or more from the grid border, p99 above 1 voxel or
  mean above 0.5 voxel (the claimed inverse is not one). Nearer the border T(x) leaves the stored
  field, so the error there says nothing about the inverse (results written before the interior
  figures existed: max above 2 voxels or mean above 0.5 voxel);
- identity: the transform moves no point by 1e-3 mm or more (nothing was registered; the warning
  names what to try next);
- discarded stages: a stage whose result was thrown away (its objective got worse, or an
  independent check rejected it).
"""
from __future__ import annotations

import math

DET_J_LOW, DET_J_HIGH = 0.1, 10.0  # the same bounds as transform_quality.EXTREME_DET_J
EXTREME_SHARE_PERCENT = 0.1
VOLUME_RATIO = 1.5  # median det J outside 1/1.5 .. 1.5
IC_P99_VOXELS, IC_MEAN_VOXELS, IC_MAX_VOXELS = 1.0, 0.5, 2.0  # max: summaries without interior figures
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
    out += _volume_warnings(j)
    ic = quality.get("inverse_consistency")
    if ic and _inverse_unreliable(ic, voxel_mm):
        core = ic.get("interior") or ic
        where = f" at {core['margin_voxels']}+ voxels from the border" if "margin_voxels" in core else ""
        spread = f"p99 {_g(core['p99_mm'])} mm" if "p99_mm" in core else f"max {_g(core.get('max_mm'))} mm"
        out.append({"kind": "inverse", "text": f"large inverse-consistency error{where}: |S(T(x)) - x| mean "
                    f"{_g(core.get('mean_mm'))} mm, {spread} (voxel {voxel_mm:.3g} mm): the inverse is not reliable"})
    moved = quality.get("displacement", {}).get("max_mm")
    if _ok(moved) and moved < IDENTITY_MM:
        out.append({"kind": "identity", "text": "the result is the identity transform: nothing was registered. Next: "
                    "label maps of a structure seen in both images (--fixed-labels, --moving-labels; the 'labels' preset), "
                    "landmarks (--fixed-landmarks, --moving-landmarks), a trained model ('morphreg models', 'morphreg "
                    "predict'), or --initial-transform from a rough manual alignment"})
    return out


def _volume_warnings(j: dict) -> list[dict]:
    out = []
    low, high, share = j.get("min"), j.get("max"), j.get("extreme_percent")
    extreme = share > EXTREME_SHARE_PERCENT if _ok(share) else \
        (_ok(low) and 0 < low < DET_J_LOW) or (_ok(high) and high > DET_J_HIGH)  # summaries without the share
    if extreme:
        amount = f"{share:.3g} % of voxels, " if _ok(share) else ""
        out.append({"kind": "det_j", "text": f"extreme local volume change: {amount}det J from {_g(low)} to {_g(high)} "
                    f"(outside {DET_J_LOW:g}..{DET_J_HIGH:g})"})
    median = j.get("median")
    if _ok(median) and median > 0 and not 1 / VOLUME_RATIO <= median <= VOLUME_RATIO:
        out.append({"kind": "volume", "text": f"the transform changes the volume overall: median det J {median:.3g} "
                    f"(x{median ** (1 / 3):.3g} per axis in 3D); the same anatomy imaged twice keeps its volume, so "
                    "check the result (overlay, labels) before trusting it"})
    return out


def _inverse_unreliable(ic: dict, voxel_mm: float) -> bool:
    core = ic.get("interior")
    if core and _ok(core.get("p99_mm")):
        return core["p99_mm"] > IC_P99_VOXELS * voxel_mm or (_ok(core.get("mean_mm")) and core["mean_mm"] > IC_MEAN_VOXELS * voxel_mm)
    return _ok(ic.get("max_mm")) and (ic["max_mm"] > IC_MAX_VOXELS * voxel_mm or
                                      (_ok(ic.get("mean_mm")) and ic["mean_mm"] > IC_MEAN_VOXELS * voxel_mm))


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
