"""The GPU path (issue 11, item 7): every preset, the CLI and evaluation with ``device="cuda"``.

Skipped without a CUDA device; ``bash benchmarks/gpu_check.sh`` runs these and the brain benchmark
on CUDA wherever one is available. Tolerances: GPU kernels sum in another order than the CPU ones
(atomics in grid_sample's backward), so runs agree to within noise, not bitwise.
"""
from __future__ import annotations

import json

import pytest
import torch

from _cli import cli
from _presets import preset_case
from morphreg.evaluate import evaluate_registration
from morphreg.image.io import write_image
from morphreg.register import register
from morphreg.register.presets import PRESETS

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]


def _mean_displacement(result, grid) -> float:
    with torch.no_grad():
        return float(result.transform.displacement(grid, dtype=torch.float64, device="cpu")[0].norm(dim=0).mean())


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_runs_on_cuda_like_on_the_cpu(preset):
    pair, kw = preset_case(preset)
    cpu = register(pair.fixed, pair.moving, preset, seed=7, **kw)
    gpu = register(pair.fixed, pair.moving, preset, seed=7, device="cuda", **kw)
    assert [s["model"] for s in gpu.stages if not s["diverged"]] == [s["model"] for s in cpu.stages if not s["diverged"]]
    assert abs(_mean_displacement(gpu, pair.fixed.grid) - _mean_displacement(cpu, pair.fixed.grid)) < 0.1
    assert gpu.folding_percent == pytest.approx(cpu.folding_percent, abs=0.5)
    e = evaluate_registration(gpu.transform, pair.fixed_labels, pair.moving_labels)  # a CUDA transform, CPU labels
    assert e["overlap"]["mean"]["dice"] > 0


def test_register_and_evaluate_cli_on_cuda(tmp_path, capfd):
    pair, _ = preset_case("default")
    paths = {}
    for name, image in [("fixed", pair.fixed), ("moving", pair.moving), ("fl", pair.fixed_labels), ("ml", pair.moving_labels)]:
        paths[name] = tmp_path / f"{name}.nii.gz"
        write_image(image, paths[name])
    out = tmp_path / "out"
    assert cli(capfd, "register", paths["fixed"], paths["moving"], "-o", out, "--device", "cuda", "--quiet")[0] == 0
    for name in ("warped.nii.gz", "transform.h5", "displacement.nii.gz", "summary.json"):
        assert (out / name).is_file()
    assert cli(capfd, "evaluate", "-t", out / "transform.h5", "-o", tmp_path / "m.json", "--fixed-labels", paths["fl"],
               "--moving-labels", paths["ml"])[0] == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["overlap"]["mean"]["dice"] > metrics["initial"]["overlap"]["mean"]["dice"] - 0.05


def test_fast_syn_cubes_and_asgd_draw_on_the_cpu_generator_under_cuda():
    """CPU generators (reproducible draws) under a CUDA default device: the cube sampler and asgd."""
    pair, kw = preset_case("accurate")
    r = register(pair.fixed, pair.moving, "accurate", seed=3, device="cuda", **kw)
    assert not r.stages[-1]["diverged"] or r.stages[-1]["trace"]
    r = register(pair.fixed, pair.moving, [{"model": "affine", "optimizer": {"name": "asgd", "lr": 0.5},
                                            "levels": [[2, None, 10]]}], device="cuda")
    assert r.transform is not None
