"""One self-contained HTML page per registration result (pictures embedded as base64).

A result folder holds ``summary.json`` (inputs, preset, parameters, times, final metric),
``transform.h5`` (fixed -> moving), and optionally ``warped.nii.gz``, ``displacement.nii.gz``,
``inverse_displacement.nii.gz`` and ``metrics.json``. Missing optional pieces are computed from the
transform or left out with a note; nothing but a readable transform is required.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path

import numpy as np
import torch

from morphreg.core.files import atomic_path
from morphreg.errors import MorphregError
from morphreg.evaluate.warnings import merge_warnings, quality_warnings, stage_warnings
from morphreg.image.image import Image
from morphreg.image.io import read_image
from morphreg.transforms.base import Transform
from morphreg.transforms.io import load_transform
from morphreg.transforms.warp import warp

TRANSFORM_NAMES = ("transform.h5", "transform.pt", "transform.tfm", "transform.txt", "displacement.nii.gz")

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;background:#f4f6f8;color:#1d2733}
header{background:#16324f;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px;font-weight:600} header p{margin:4px 0 0;color:#c9d6e3;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:16px 24px 40px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:14px 20px;margin:14px 0}
h2{font-size:17px;margin:2px 0 10px;color:#16324f;border-bottom:1px solid #e3e8ee;padding-bottom:6px}
h3{font-size:14px;margin:12px 0 6px;color:#33475b}
table{border-collapse:collapse;font-size:13px;margin:4px 0 8px}
th,td{border-bottom:1px solid #e3e8ee;padding:4px 10px;text-align:right;vertical-align:top}
th{background:#eef2f6;color:#33475b;font-weight:600} td:first-child,th:first-child{text-align:left}
.kv td{text-align:left} .kv td:first-child{color:#5a6b7c;white-space:nowrap}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{flex:1 1 170px;background:#f7f9fb;border:1px solid #e3e8ee;border-radius:8px;padding:10px 14px}
.card .v{font-size:22px;font-weight:600;color:#16324f} .card .l{font-size:12px;color:#5a6b7c}
.card.bad{border-color:#d93025;background:#fdecea} .card.bad .v{color:#b3261e}
.warn{background:#fdecea;border:1px solid #d93025;color:#b3261e;border-radius:8px;padding:10px 16px;margin:14px 0}
.warn h2{color:#b3261e;border-color:#f4b4ae} .warn li{margin:3px 0}
.ok{background:#e6f4ea;border:1px solid #34a853;color:#1e6b34;border-radius:8px;padding:10px 16px;margin:14px 0}
.note{color:#5a6b7c;font-size:12px;font-style:italic}
.bad{color:#b3261e;font-weight:600} .good{color:#1e6b34}
figure{margin:10px 0 18px} figure img{max-width:100%;border:1px solid #e3e8ee;border-radius:4px}
figcaption{font-size:12px;color:#5a6b7c;margin-top:4px}
.bar{display:inline-block;height:10px;background:#4c72b0;border-radius:2px;vertical-align:middle}
code{font-size:12px;background:#eef2f6;padding:1px 4px;border-radius:3px}
footer{color:#8a99a8;font-size:11px;text-align:center;margin:10px}
"""

# Sets data-check="ok:N" on <html> when every picture decoded and no script error happened
# (read back by the browser test through --dump-dom); it changes nothing visible.
CHECK_JS = """
<script>
(function(){var errors=0;window.addEventListener('error',function(){errors++;});
window.addEventListener('load',function(){var imgs=document.images,ok=0;
for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0)ok++;}
document.documentElement.setAttribute('data-check',(errors===0&&ok===imgs.length?'ok:':'fail:')+ok+'/'+imgs.length+':errors='+errors);});})();
</script>
"""


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return _e(v)


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>" if header else f"<table class='{cls}'>{body}</table>"


class _Raw(str):
    """Pre-escaped HTML cell."""


def _img(data: bytes, mime: str, caption: str, alt: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f"<figure><img alt='{_e(alt)}' src='data:{mime};base64,{b64}'><figcaption>{_e(caption)}</figcaption></figure>"


def _short(path) -> str:
    """A file with its folder ("fixed_images/obs003.nii.gz"): pairs often share file names."""
    p = Path(str(path))
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _resolve(result_dir: Path, p) -> Path | None:
    if not p:
        return None
    p = Path(p)
    for cand in (p, result_dir / p, result_dir / p.name):
        if cand.exists():
            return cand
    return None


class _Result:
    """Everything the report shows, loaded leniently; problems become ``notes``/``warnings``."""

    def __init__(self, result_dir: Path):
        self.dir = result_dir
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.summary = self._json("summary.json") or {}
        self.metrics = self._json("metrics.json", quiet=True)
        self.transform = self._transform()
        self.images = {k: self._image(k) for k in ("fixed", "moving", "fixed_labels", "moving_labels")}

    def _json(self, name: str, quiet: bool = False) -> dict | None:
        path = self.dir / name
        if not path.exists():
            if not quiet:
                self.notes.append(f"{name} not found in the result folder")
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            self.warnings.append(f"{name} is not valid JSON ({exc.msg}); ignored")
            return None

    def _transform(self) -> Transform:
        for name in TRANSFORM_NAMES:
            if (self.dir / name).exists():
                self.transform_file = name
                return load_transform(self.dir / name)
        raise MorphregError(f"no transform found (looked for {', '.join(TRANSFORM_NAMES)})", self.dir)

    def _image(self, key: str) -> Image | None:
        given = self.summary.get(key) or self.summary.get("inputs", {}).get(key)
        if not given:
            return None
        path = _resolve(self.dir, given)
        if path is None:
            self.warnings.append(f"input {key} ({given}) cannot be found: left out of the report")
            return None
        return read_image(path, check_finite=False, labels=key.endswith("labels"))


def _geometry_rows(images: dict[str, Image | None], summary: dict) -> list[list]:
    rows = []
    for key, img in images.items():
        if img is None:
            continue
        g = img.grid
        given = summary.get(key) or summary.get("inputs", {}).get(key, "")
        rows.append([_Raw(f"<b>{_e(key.replace('_', ' '))}</b><br><code>{_e(Path(str(given)).name)}</code>"),
                     " x ".join(map(str, g.size)) + (f" x {img.channels} ch" if img.channels > 1 else ""),
                     ", ".join(f"{s:.3g}" for s in g.spacing), ", ".join(f"{o:.1f}" for o in g.origin),
                     _Raw("<br>".join(" ".join(f"{v:+.2f}" for v in row) for row in g.direction)),
                     str(img.data.dtype).replace("torch.", "")])
    return rows


def _times(summary: dict) -> str:
    """Seconds for reading the inputs, each stage (by name) and the final warp, from summary.json."""
    t = summary.get("timings") or {}
    stages = summary.get("stages", [])
    items: list[tuple[str, float]] = []
    if isinstance(t.get("io_s"), (int, float)):
        items.append(("reading and checking the inputs", float(t["io_s"])))
    for i, v in enumerate(t.get("stages_s") or []):
        st = stages[i] if i < len(stages) else {}
        items.append((f"stage {i}: {st.get('model', '?')}" + (" (discarded)" if st.get("diverged") else ""), float(v)))
    if isinstance(t.get("warp_s"), (int, float)):
        items.append(("final warp and checks", float(t["warp_s"])))
    if not items:
        return "<p class='note'>No timing information in summary.json.</p>"
    top = max(v for _, v in items) or 1.0
    rows = [[name, f"{v:.2f} s", _Raw(f"<span class='bar' style='width:{max(2, int(240 * v / top))}px'></span>")] for name, v in items]
    if isinstance(t.get("total_s"), (int, float)):
        rows.append([_Raw("<b>total registration</b>"), f"{float(t['total_s']):.2f} s", ""])
    return _table(["step", "time", ""], rows)


def _stage_rows(summary: dict) -> list[list]:
    """One row per stage: what it optimised, how, and how it ended."""
    rows = []
    for st in summary.get("stages", []):
        levels = "; ".join(f"1/{lv[0]:g}: {lv[2]} it" for lv in st.get("levels", []) if isinstance(lv, (list, tuple)) and len(lv) >= 3)
        penalties = ", ".join(f"{p.get('name')} x {p.get('weight', 1)}" for p in st.get("penalties") or [] if isinstance(p, dict))
        params = ", ".join(f"{k}={json.dumps(v)}" for k, v in (st.get("model_params") or {}).items())
        opt = st.get("optimizer") or {}
        outcome = ("<span class='bad'>discarded</span>" if st.get("diverged") else "kept")
        rows.append([f"{st.get('index')}: {st.get('model')}", st.get("similarity", "n/a"), levels or "n/a",
                     penalties or "none", params or "none", f"{opt.get('name', 'n/a')} lr {opt.get('lr', 'n/a')}",
                     _Raw(f"{_fmt(st.get('initial_objective'))} &rarr; {_fmt(st.get('final_objective'))}"), _Raw(outcome)])
    return rows


def _label_rows(m: dict) -> list[list]:
    ov, sd = m.get("overlap", {}).get("labels", {}), m.get("surface", {}).get("labels", {})
    ini = m.get("initial", {})
    ov0, sd0 = ini.get("overlap", {}).get("labels", {}), ini.get("surface", {}).get("labels", {})
    rows = []
    for key in ov:
        d0, d1 = ov0.get(key, {}).get("dice"), ov[key].get("dice")
        cls = "bad" if d0 is not None and d1 is not None and d1 < d0 - 1e-9 else ""
        rows.append([key, d0, _Raw(f"<span class='{cls}'>{_fmt(d1)}</span>"), ov[key].get("jaccard"),
                     sd0.get(key, {}).get("hd95_mm"), sd.get(key, {}).get("hd95_mm"), sd.get(key, {}).get("hausdorff_mm"),
                     sd.get(key, {}).get("assd_mm"), ov[key].get("reference_volume_mm3"), ov[key].get("volume_mm3")])
    mo, ms = m.get("overlap", {}).get("mean", {}), m.get("surface", {}).get("mean", {})
    mo0, ms0 = ini.get("overlap", {}).get("mean", {}), ini.get("surface", {}).get("mean", {})
    rows.append([_Raw("<b>mean</b>"), mo0.get("dice"), mo.get("dice"), mo.get("jaccard"), ms0.get("hd95_mm"),
                 ms.get("hd95_mm"), ms.get("hausdorff_mm"), ms.get("assd_mm"), None, None])
    return rows


def _tre_section(name: str, t: dict) -> str:
    i, f = t.get("initial", {}), t.get("final", {})
    worse = _shown_worse(i.get("mean_mm"), f.get("mean_mm"), ".3g")
    rows = [[s, i.get(k), _Raw(f"<span class='{'bad' if worse and k == 'mean_mm' else ''}'>{_fmt(f.get(k))}</span>")]
            for s, k in (("mean (mm)", "mean_mm"), ("std (mm)", "std_mm"), ("median (mm)", "median_mm"),
                  ("max (mm)", "max_mm"), ("points", "n"))]
    pts = t.get("points", [])
    per = _table(["point", "initial (mm)", "final (mm)"], [[p["name"], p.get("initial_mm"), p.get("final_mm")] for p in pts])
    return (f"<h3>{_e(name)}</h3>" + _table(["", "before", "after"], rows)
            + (f"<details><summary>per point ({len(pts)})</summary>{per}</details>" if pts else ""))


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None else math.nan


def _shown_worse(before, after, form: str) -> bool:
    """``after`` is larger than ``before`` (lower is better) by enough to show in the format the page uses:
    an identity result's TRE (9.41 mm -> 9.41 mm, float32 rounding apart) is not worse."""
    b, a = _num(before), _num(after)
    return math.isfinite(b) and math.isfinite(a) and a > b and f"{a:{form}}" != f"{b:{form}}"


def _card(value: str, label: str, bad: bool) -> str:
    return f"<div class='card{' bad' if bad else ''}'><div class='v'>{value}</div><div class='l'>{label}</div></div>"


def _warnings(m: dict, res: _Result) -> list[str]:
    """The registration's own warnings (summary.json), the same checks on the measures made here
    (for results of earlier versions), and what the measures show got worse."""
    s = res.summary
    grid = m.get("reference_grid", {})
    voxel = max(grid.get("spacing") or grid.get("spacing_mm") or [1.0])  # metrics version 2 or 1
    found = [{"kind": f"report:{i}", "text": w} for i, w in enumerate(res.warnings)]
    for key, name in (("tre", "Landmark TRE"), ("centroid_tre", "Centroid TRE")):
        t = m.get(key)
        if t and _shown_worse(t["initial"].get("mean_mm"), t["final"].get("mean_mm"), ".3g"):
            found.append({"kind": key, "text": f"{name} got worse: {t['initial']['mean_mm']:.3g} mm before, "
                                               f"{t['final']['mean_mm']:.3g} mm after registration"})
    d0 = _num(m.get("initial", {}).get("overlap", {}).get("mean", {}).get("dice"))
    d1 = _num(m.get("overlap", {}).get("mean", {}).get("dice"))
    if _shown_worse(-d0, -d1, ".3f"):
        found.append({"kind": "dice", "text": f"Mean Dice got worse: {d0:.3f} before, {d1:.3f} after registration"})
    for i, note in enumerate(m.get("notes", [])):
        if "missing" in note or "empty" in note:
            found.append({"kind": f"labels:{i}", "text": f"Labels missing: {note}"})
    inputs = s.get("inputs", {})
    if (inputs.get("fixed_labels") is None) != (inputs.get("moving_labels") is None):
        found.append({"kind": "one_label_map", "text": "Only one label map is named in summary.json: no overlap measures"})
    merged = merge_warnings(s.get("warnings", []), stage_warnings(s.get("stages", [])),
                            quality_warnings(m.get("transform", {}), float(voxel)), found)
    return [w["text"][:1].upper() + w["text"][1:] for w in merged]


def _cards(m: dict) -> str:
    cards = []

    def card(label, before, after, unit="", lower_better=False, digits=3):
        if not math.isfinite(_num(after)):
            return
        bad = _shown_worse(before, after, f".{digits}g") if lower_better else _shown_worse(-_num(before), -_num(after), f".{digits}g")
        b = f"{_fmt(before, digits)} &rarr; " if math.isfinite(_num(before)) else ""
        cards.append(_card(f"{b}{_fmt(after, digits)}{unit}", _e(label), bad))

    ini = m.get("initial", {})
    card("mean Dice (before → after)", ini.get("overlap", {}).get("mean", {}).get("dice"), m.get("overlap", {}).get("mean", {}).get("dice"))
    card("mean HD95, mm", ini.get("surface", {}).get("mean", {}).get("hd95_mm"),
         m.get("surface", {}).get("mean", {}).get("hd95_mm"), " mm", True)
    for key, label in (("tre", "landmark TRE, mm"), ("centroid_tre", "centroid TRE, mm")):
        if key in m:
            card(label, m[key]["initial"].get("mean_mm"), m[key]["final"].get("mean_mm"), " mm", True)
    fold = m.get("transform", {}).get("jacobian", {}).get("folding_percent")
    if fold is not None:
        cards.append(_card(f"{_fmt(fold)}%", "folding (det J ≤ 0)", fold > 0))
    return f"<div class='cards'>{''.join(cards)}</div>" if cards else ""


def _pictures(res: _Result, grid, warped: Image | None, det_j: np.ndarray, displacement: torch.Tensor) -> list[str]:
    from morphreg import viz

    fx, mv = res.images["fixed"], res.images["moving"]
    fl, ml = res.images["fixed_labels"], res.images["moving_labels"]
    center = viz.slice_center(grid, fl if fl is not None and fl.grid.same_as(grid) else None)
    out = []
    if fx is not None and mv is not None and warped is not None:
        before = warp(mv.float(), None, grid, "linear")
        out.append(_img(viz.to_png(viz.checkerboard(fx, warped, before, center=center)), "image/png",
                        "Checkerboard of fixed and moving image, before and after registration: "
                        "edges should continue across squares.", "checkerboard"))
        out.append(_img(viz.to_png(viz.overlay(fx, warped, before, center=center)), "image/png",
                        "Colour fusion: fixed in magenta, moving in green; well aligned structures appear grey/white.", "overlay"))
        out.append(_img(viz.to_png(viz.difference(fx, warped, before, center=center)), "image/png",
                        "Difference of windowed intensities (fixed - moving); "
                        "meaningful for images of the same modality only.", "difference"))
        out.append(_img(viz.flicker_gif(fx, warped, center=center), "image/gif",
                        "Flicker: fixed and warped moving image alternate; anatomy that jumps is misaligned.", "flicker"))
    if fx is not None and fl is not None and ml is not None and fl.grid.same_as(grid):
        with torch.no_grad():
            wl, bl = warp(ml, res.transform, grid, "nearest"), warp(ml, None, grid, "nearest")
        out.append(_img(viz.to_png(viz.contours(fx, fl, wl, bl, center=center)), "image/png",
                        "Label outlines on the fixed image: fixed (green), "
                        "moving before registration (red), moving after registration (yellow).", "contours"))
    bg = fx if fx is not None and fx.grid.same_as(grid) else None
    out.append(_img(viz.to_png(viz.deformed_grid(displacement, grid, bg, center=center)), "image/png",
                    "Deformed grid: lines of the fixed grid moved by the transform (fixed → moving).", "deformed grid"))
    out.append(_img(viz.to_png(viz.quiver(displacement, grid, bg, center=center)), "image/png",
                    "Displacement arrows in the displayed plane, drawn to scale in mm.", "quiver"))
    out.append(_img(viz.to_png(viz.jacobian_map(det_j, grid, center=center)), "image/png",
                    "Local volume change det J: blue = shrinking, white = unchanged, red = expanding, black = folding.", "det J map"))
    out.append(_img(viz.to_png(viz.jacobian_histogram(det_j)), "image/png",
                    "Distribution of det J over the fixed image domain (bin width 0.01); red bars are folding.", "det J histogram"))
    return out


def build_report(result_dir: str | Path, out_html: str | Path, title: str | None = None,
                 shown_as: str | Path | None = None) -> Path:
    """Write one self-contained HTML report for the registration result in ``result_dir``
    (``shown_as``: the folder name the page gives, when ``result_dir`` is a temporary one that becomes it).

    Metrics come from ``metrics.json`` when present, otherwise they are computed here with
    :func:`morphreg.evaluate.evaluate_registration` (labels named in summary.json are used).
    """
    import matplotlib.pyplot as plt

    from morphreg.evaluate import evaluate_registration, jacobian_determinant

    result_dir = Path(result_dir)
    if not result_dir.is_dir():
        raise MorphregError("result folder not found", result_dir)
    res = _Result(result_dir)
    fx, mv, fl, ml = (res.images[k] for k in ("fixed", "moving", "fixed_labels", "moving_labels"))
    grid = fl.grid if fl is not None else fx.grid if fx is not None else res.transform.domain()
    if grid is None:
        raise MorphregError("cannot tell the fixed grid: summary.json names no fixed image and the transform has no grid", result_dir)
    warped = None
    outputs = {"warped": "warped.nii.gz", "inverse_displacement": "inverse_displacement.nii.gz",
               **(res.summary.get("outputs") or {})}  # the file names the result lists (its image format)
    if (result_dir / outputs["warped"]).exists():
        warped = read_image(result_dir / outputs["warped"], check_finite=False, labels=False)
        if not warped.grid.same_as(grid):
            res.notes.append(f"{outputs['warped']} is not on the fixed grid: the moving image was re-warped for the pictures")
            warped = None
    if warped is None and mv is not None:
        with torch.no_grad():
            warped = warp(mv.float(), res.transform, grid, "linear")
    inverse = None
    if (result_dir / outputs["inverse_displacement"]).exists():
        inverse = load_transform(result_dir / outputs["inverse_displacement"])
    metrics = res.metrics
    if metrics is None:
        metrics = evaluate_registration(res.transform, fl, ml, reference=grid, inverse=inverse, fixed=fx, moving=mv)
        res.notes.append("metrics were computed for this report (no metrics.json in the result folder)")
    with torch.no_grad():
        det_j = jacobian_determinant(res.transform, grid)
        displacement = res.transform.displacement(grid, dtype=torch.float64)[0]
    warnings = _warnings(metrics, res)
    pictures = _pictures(res, grid, warped, det_j, displacement)
    plt.close("all")

    s = res.summary
    name = title or f"Registration report: {_short(s.get('moving', 'moving'))} → {_short(s.get('fixed', 'fixed'))}"
    folder = Path(shown_as or result_dir).resolve()
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(name)}</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<style>{CSS}</style>{CHECK_JS}</head><body>",
             f"<header><h1>{_e(name)}</h1><p>Result folder <code style='background:#24476b;color:#fff'>{_e(folder)}</code>"
             f" &middot; generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by morphreg</p></header><main>"]
    if warnings:
        parts.append("<div class='warn'><h2>Warnings</h2><ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>")
    else:
        parts.append("<div class='ok'><b>No warnings:</b> no folding, no measure got worse, all labels present.</div>")
    parts.append(f"<section><h2>Key figures</h2>{_cards(metrics)}<p class='note'>Transform maps fixed-image points to "
                 "moving-image points (world LPS mm). Labels and landmarks were warped with the saved transform, "
                 "independently of the method's own output.</p></section>")
    parts.append("<section><h2>Inputs and geometry</h2>" +
                 _table(["input", "size (x, y, z)", "spacing (mm)", "origin (mm, LPS)", "direction", "type"],
                 _geometry_rows(res.images, s)) + f"<p class='note'>Transform file: <code>{_e(res.transform_file)}</code> "
                 f"({_e(type(res.transform).__name__)})</p></section>")
    method = [["preset", s.get("preset", "n/a")], ["modality", s.get("modality", "n/a")]]
    for key in ("final_metric", "device", "seed", "morphreg_version"):
        if key in s:
            method.append([key, s[key] if not isinstance(s[key], (dict, list)) else json.dumps(s[key])])
    stages = _table(["stage", "similarity", "levels (shrink: iterations)", "penalties", "model parameters", "optimiser",
                     "objective start → end (lower is better)", "outcome"], _stage_rows(s)) if s.get("stages") else ""
    parts.append("<section><h2>Method and parameters</h2>" + _table([], method, "kv") + stages
                 + "<h3>Time per stage</h3>" + _times(s) + "</section>")
    parts.append("<section><h2>Measures</h2>")
    if "overlap" in metrics:
        parts.append("<h3>Label overlap and surface distance (per structure)</h3>" + _table(
            ["structure", "Dice before", "Dice after", "Jaccard", "HD95 before (mm)", "HD95 after (mm)", "Hausdorff (mm)", "ASSD (mm)",
             "fixed vol. (mm³)", "warped vol. (mm³)"], _label_rows(metrics)))
    for key, label in (("tre", "Landmark target registration error"), ("centroid_tre", "Structure centroid distance (TRE from labels)")):
        if key in metrics:
            parts.append(_tre_section(label, metrics[key]))
    tq = metrics.get("transform", {})
    if tq:
        j, dsp = tq.get("jacobian", {}), tq.get("displacement", {})
        rows = [["folding, % voxels with det J ≤ 0", j.get("folding_percent")], ["SDlogJ (det J > 0)", j.get("sdlogj")],
                ["det J min / median / max", _Raw(" / ".join(_fmt(j.get(k)) for k in ("min", "median", "max")))],
                ["displacement mean / p95 / max (mm)", _Raw(" / ".join(_fmt(dsp.get(k)) for k in ("mean_mm", "p95_mm", "max_mm")))]]
        if "inverse_consistency" in tq:
            ic = tq["inverse_consistency"]
            rows.append(["inverse consistency error mean / max (mm)", _Raw(f"{_fmt(ic.get('mean_mm'))} / {_fmt(ic.get('max_mm'))}")])
        if "rigidity_in_mask" in tq:
            r = tq["rigidity_in_mask"]
            rows.append(["in mask: det J mean ± std", _Raw(f"{_fmt(r.get('det_mean'))} ± {_fmt(r.get('det_std'))}")])
            rows.append(["in mask: orthonormality error ‖JᵀJ − I‖ mean", r.get("orthonormality_error_mean")])
        parts.append("<h3>Transform quality</h3>" + _table([], rows, "kv"))
    if "intensity" in metrics:
        i0, i1 = metrics.get("intensity_initial", {}), metrics["intensity"]
        rows = [[k.upper(), i0.get(k), i1.get(k)] for k in ("mse", "ncc", "nmi", "ssim")]
        parts.append("<h3>Intensity similarity</h3>" + _table(["measure", "before", "after"], rows)
                     + "<p class='note'>Not an independent measure of accuracy: a method that optimises an intensity "
                       "similarity can score well here while misaligning anatomy. Judge by the measures above.</p>")
    parts.append("</section>")
    parts.append("<section><h2>Pictures</h2>" + "".join(pictures) + "</section>")
    notes = res.notes + list(metrics.get("notes", []))
    if notes:
        parts.append("<section><h2>Notes</h2><ul>" + "".join(f"<li class='note'>{_e(n)}</li>" for n in notes) + "</ul></section>")
    parts.append("</main><footer>morphreg registration report &middot; world coordinates LPS, mm</footer></body></html>")
    out_html = Path(out_html)
    with atomic_path(out_html) as tmp:
        tmp.write_text("".join(parts), encoding="utf-8")
    return out_html
