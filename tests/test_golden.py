"""Golden results of every preset on a synthetic pair, recorded before the engine redesign (issue 11):
a refactoring must reproduce them within noise. Same seed and one thread give bitwise-equal runs
(test_faults.py), so the tolerances here only absorb floating-point order changes of a rewrite, not
randomness: 0.02 mm on the mean displacement, 0.1 mm on its maximum, 1 % on the final objective.

Re-record (only on purpose, saying why in the commit): ``python tests/test_golden.py --write``.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from _presets import preset_case
from morphreg.register import register
from morphreg.register.presets import PRESETS

GOLDEN = Path(__file__).with_name("golden_presets.json")


def _run(preset: str) -> dict:
    pair, kw = preset_case(preset)
    r = register(pair.fixed, pair.moving, preset, seed=7, **kw)
    with torch.no_grad():
        u = r.transform.displacement(pair.fixed.grid, dtype=torch.float64)[0].norm(dim=0)
    return {"mean_displacement_mm": float(u.mean()), "max_displacement_mm": float(u.max()),
            "final_objective": r.final_metric, "kept_stages": [s["model"] for s in r.stages if not s.get("diverged")]}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_reproduces_its_golden_result(preset, one_thread):
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert preset in golden, f"no golden result for {preset!r}: record it (see the module docstring)"
    want, got = golden[preset], _run(preset)
    assert got["kept_stages"] == want["kept_stages"]
    assert abs(got["mean_displacement_mm"] - want["mean_displacement_mm"]) < 0.02
    assert abs(got["max_displacement_mm"] - want["max_displacement_mm"]) < 0.1
    if want["final_objective"] is not None:
        assert math.isclose(got["final_objective"], want["final_objective"], rel_tol=0.01, abs_tol=1e-4)


if __name__ == "__main__" and "--write" in sys.argv:
    torch.set_num_threads(1)
    GOLDEN.write_text(json.dumps({p: _run(p) for p in PRESETS}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")
