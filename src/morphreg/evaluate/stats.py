"""Aggregation over cases and methods: flat per-case tables (CSV/JSON), median +- IQR, mean +- std,
paired Wilcoxon signed-rank tests, markdown tables."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats as sps

from morphreg.core.files import atomic_path
from morphreg.errors import MorphregError

SKIP_KEYS = ("reference_grid", "points", "notes", "note", "morphreg_metrics", "inputs", "cases")


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``{"overlap/labels/ch0/dice": 0.8, ...}``
    (None -> NaN; lists, notes and geometry are left out)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key in SKIP_KEYS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif value is None:
            out[name] = math.nan
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def load_cases(path: str | Path) -> dict[str, dict[str, float]]:
    """Cases of one method: a metrics.json (one case, or ``{"cases": {name: metrics}}``), or a folder
    whose sub-folders each hold a metrics.json (case name = sub-folder)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*/metrics.json")) or sorted(path.glob("metrics.json"))
        if not files:
            raise MorphregError("folder holds no metrics.json (nor */metrics.json)", path)
        return {f.parent.name if f.parent != path else path.name: flatten(_read(f)) for f in files}
    d = _read(path)
    if "cases" in d:
        return {str(k): flatten(v) for k, v in d["cases"].items()}
    return {path.parent.name or path.stem: flatten(d)}


def _read(path: Path) -> dict:
    if not path.exists():
        raise MorphregError("file not found", path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MorphregError(f"not valid JSON ({exc.msg}, line {exc.lineno})", path) from None
    if not isinstance(d, dict):
        raise MorphregError("expected a JSON object of metrics", path)
    return d


def summarize(values) -> dict[str, float]:
    """n, mean, std (ddof 1), median, q1, q3, iqr, min, max of the finite values."""
    v = np.asarray(list(values), np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {k: math.nan for k in ("mean", "std", "median", "q1", "q3", "iqr", "min", "max")} | {"n": 0}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "min": float(v.min()), "max": float(v.max())}


def paired_wilcoxon(a: dict[str, float], b: dict[str, float]) -> dict:
    """Two-sided paired Wilcoxon signed-rank test over the cases both have (finite values).

    Returns n, the median difference b - a, the statistic and p (NaN with a note when fewer than
    two pairs differ)."""
    common = [k for k in a if k in b and np.isfinite(a[k]) and np.isfinite(b[k])]
    diff = np.asarray([b[k] - a[k] for k in common])
    out = {"n": len(common), "median_difference": float(np.median(diff)) if diff.size else math.nan,
           "statistic": math.nan, "p_value": math.nan}
    if np.count_nonzero(diff) < 2:
        out["note"] = "too few paired cases with a difference for a Wilcoxon test"
        return out
    res = sps.wilcoxon(diff)
    out["statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def case_table(cases: dict[str, dict[str, float]], metrics: list[str] | None = None) -> tuple[list[str], list[list]]:
    """Rows ``[case, value...]`` and the header, one column per metric."""
    metrics = metrics or sorted({m for c in cases.values() for m in c})
    rows = [[name, *(c.get(m, math.nan) for m in metrics)] for name, c in cases.items()]
    return ["case", *metrics], rows


def write_csv(header: list[str], rows: list[list], path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows([[("" if isinstance(v, float) and not math.isfinite(v) else v) for v in r] for r in rows])
    return Path(path)


def write_json(obj, path: str | Path) -> Path:
    def clean(o):
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return None if isinstance(o, float) and not math.isfinite(o) else o

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean(obj), indent=2), encoding="utf-8")
    return Path(path)


def fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table; floats shown with 3-4 significant digits."""
    cells = [[fmt(v, 4) if isinstance(v, float) else str(v) for v in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


DEFAULT_METRICS = ("overlap/mean/dice", "surface/mean/hd95_mm", "surface/mean/assd_mm", "centroid_tre/final/mean_mm",
                   "tre/final/mean_mm", "transform/jacobian/folding_percent", "transform/jacobian/sdlogj")


def compare(methods: dict[str, dict[str, dict[str, float]]], metrics: list[str] | None = None) -> dict:
    """Per metric: each method's summary over its cases, and a paired Wilcoxon test of every method
    against the first. ``methods`` = {method: {case: flat metrics}}."""
    present = {m for cases in methods.values() for c in cases.values() for m in c}
    metrics = metrics or [m for m in DEFAULT_METRICS if m in present] or sorted(present)
    names = list(methods)
    out = {}
    for m in metrics:
        per = {name: {case: c.get(m, math.nan) for case, c in methods[name].items()} for name in names}
        out[m] = {"summary": {name: summarize(per[name].values()) for name in names},
                  "wilcoxon": {name: paired_wilcoxon(per[names[0]], per[name]) for name in names[1:]}}
    return out


def comparison_markdown(result: dict) -> str:
    """Markdown: one row per metric, per method 'median [q1, q3]; mean +- std (n)', then p-values."""
    if not result:
        return "(no metrics)"
    first = next(iter(result.values()))
    names = list(first["summary"])
    header = ["metric", *names, *(f"p ({names[0]} vs {n})" for n in names[1:])]
    rows = []
    for m, r in result.items():
        cells = [m]
        for n in names:
            s = r["summary"][n]
            cells.append(f"{fmt(s['median'])} [{fmt(s['q1'])}, {fmt(s['q3'])}]; {fmt(s['mean'])} ± {fmt(s['std'])} (n={s['n']})")
        cells += [fmt(r["wilcoxon"][n]["p_value"]) for n in names[1:]]
        rows.append(cells)
    return markdown_table(header, rows)
