"""Registration does not depend on the intensity units (issue 35): every preset gives the same
transform for an image pair stored as 0..1, 0..0.01, 0..255 or 0..4095 with an offset (a CT in HU),
because the stages see both images in the engine's units (:func:`morphreg.image.intensity.to_unit_range`)."""
from __future__ import annotations

import pytest
import torch

from _presets import preset_case
from morphreg.image.intensity import to_unit_range, unit_range
from morphreg.register import register
from morphreg.register.presets import PRESETS

UNITS = [(0.01, 0.0), (255.0, 0.0), (4095.0, -1024.0)]  # (scale, offset) applied to both images


def _displacement(pair, preset, kw, scale=1.0, offset=0.0):
    fixed = pair.fixed.with_data(pair.fixed.data * scale + offset)
    moving = pair.moving.with_data(pair.moving.data * scale + offset)
    r = register(fixed, moving, preset, seed=7, **kw)
    with torch.no_grad():
        return r.transform.displacement(pair.fixed.grid, dtype=torch.float64), r


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_gives_the_same_transform_in_any_intensity_units(preset, one_thread):
    pair, kw = preset_case(preset)
    reference, _ = _displacement(pair, preset, kw)
    assert float(reference.norm(dim=1).max()) > 0.1 or preset in ("multimodal",), "the case must move something"
    for scale, offset in UNITS:
        u, r = _displacement(pair, preset, kw, scale, offset)
        gap = float((u - reference).norm(dim=1).max())
        # float32 rounding of the rescaled inputs only (<= 1.2e-4 mm); MI's Parzen histograms amplify it
        # most (multicontrast: up to 1.4e-2 mm, 1/85 of a voxel)
        assert gap < 0.02, f"{preset}: x{scale} {offset:+}: the transform moved by {gap:.2e} mm"
        lo, hi = r.intensity_units["fixed"][0]["lo"], r.intensity_units["fixed"][0]["hi"]
        assert hi > lo and abs(lo - offset) < 1e-3 * scale + 1e-9  # the phantom's background is 0


def test_unit_range_is_exact_for_an_affine_remap():
    pair, _ = preset_case("default")
    base = unit_range(pair.fixed)[0]
    scaled = pair.fixed.with_data(pair.fixed.data.double() * 4095 - 1024)
    lo, hi = unit_range(scaled)[0]
    assert lo == pytest.approx(base[0] * 4095 - 1024, abs=1e-9) and hi == pytest.approx(base[1] * 4095 - 1024, rel=1e-12)
    mapped = to_unit_range(scaled).data
    assert torch.allclose(mapped, to_unit_range(pair.fixed.to(dtype=torch.float64)).data, atol=1e-12)
    assert abs(float(torch.quantile(mapped.flatten(), 0.995)) - 1) < 1e-9  # the 99.5th percentile is 1


def test_a_constant_or_sparse_image_gets_a_usable_range():
    pair, _ = preset_case("default")
    flat = pair.fixed.with_data(torch.full_like(pair.fixed.data, 7.0))
    assert unit_range(flat) == [(7.0, 8.0)]
    dot = torch.zeros_like(pair.fixed.data)
    dot[0, 3, 4] = 5.0  # one bright voxel: the percentiles coincide, min..max is used
    assert unit_range(pair.fixed.with_data(dot)) == [(0.0, 5.0)]
