"""Whether two images show the same contrast (``mono``) or not (``multi``), and whether they show the
same anatomy (their outlines overlay): what the default preset is chosen from."""
from __future__ import annotations

import numpy as np
import torch

from morphreg.image.image import Image
from morphreg.transforms.warp import warp


def detect_modality(fixed: Image, moving: Image) -> str:
    """"mono" when the two images look like the same kind of image, else "multi"
    (:func:`modality_evidence` says why)."""
    return modality_evidence(fixed, moving)["modality"]


# Thresholds of modality_evidence, measured (RESULTS.md, session 5). Foreground NCC after the coarse MI
# rigid alignment: same contrast 0.29..1.0 (brain T1 pair 0.84 both ways, phantoms 0.90..0.97, each head
# slice against itself moved 10 mm: 1.0, 15 mm + 15 deg: 0.43..0.45, 25 mm + 20 deg: 0.29..0.41, where
# the coarse alignment stops short); different contrast -0.30..0.07 (the T1 / T2 head pair of
# ct_head_2d both ways and moved as above). Contrast-inverted copies fail test 1 or 2 already; all 78
# prostate TRUS / MR pairs fail test 2.
QUANTILE_GAP_MAX = 0.1
OVERLAY_NCC_MIN = 0.5
ALIGNED_FOREGROUND_NCC_MIN = 0.2
DETECTION_VOXELS = 100_000


def modality_evidence(fixed: Image, moving: Image) -> dict:
    """Whether two images show the same contrast, from three tests that must all pass for "mono":

    1. the quantile functions of both images, each scaled to its 1st..99th percentile range, differ
       by less than 0.1 on average (intensity histograms alone cannot tell smoothed ultrasound from
       MR: prostate TRUS vs MR pairs differ by only 0.015..0.2 here);
    2. the images, smoothed (sigma = 2 coarsest voxels) and overlaid as they are, correlate: NCC >=
       0.5 (prostate pairs |NCC| <= 0.40 over 78 pairs; brain T1 pair 0.99, the head pair 0.90: the
       head outline dominates);
    3. after a coarse rigid alignment by mutual information, the
       images correlate inside both foregrounds (Otsu): NCC >= 0.2. Tissue contrast decides here,
       not the outline: a T1 / T2 pair fails (CSF dark in one, bright in the other).

    Tests 2 and 3 run on copies of at most ~1e5 voxels (about 1 s for the brain T1 pair in all).
    Returns the measured values, ``"modality"`` and ``"same_outline"`` (|NCC of test 2| >= 0.5: the
    same anatomy fills both images, e.g. two MR contrasts or an inverted contrast, as opposed to
    ultrasound vs MR).
    """
    q = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)

    def curve(img: Image) -> torch.Tensor:
        v = img.data[0].detach().reshape(-1).double()
        if v.numel() > 200_000:  # a random subset (randint: a permutation of 7e6 voxels took 0.25 s)
            v = v[torch.randint(v.numel(), (200_000,), generator=torch.Generator().manual_seed(0), device="cpu").to(v.device)]
        lo, hi = torch.quantile(v, 0.01), torch.quantile(v, 0.99)
        return (torch.quantile(v, q) - lo) / (hi - lo).clamp_min(1e-12)

    fixed, moving = fixed.with_data(fixed.data.detach().float()), moving.with_data(moving.data.detach().float())
    small_f, small_m = small_copy(fixed), small_copy(moving)  # brain T1: test 2 in 0.2 s instead of 1.7 s
    out: dict = {"quantile_gap": float((curve(fixed) - curve(moving)).abs().mean()),
                 "overlay_ncc": overlay_ncc(small_f, small_m)}
    out["same_outline"] = _outlines_overlay(out["overlay_ncc"])
    if out["quantile_gap"] >= QUANTILE_GAP_MAX or out["overlay_ncc"] < OVERLAY_NCC_MIN:
        out["modality"] = "multi"
        return out
    out["aligned_foreground_ncc"] = _aligned_foreground_ncc(small_f, small_m)
    out["modality"] = "mono" if out["aligned_foreground_ncc"] >= ALIGNED_FOREGROUND_NCC_MIN else "multi"
    return out


def small_copy(image: Image) -> Image:
    from morphreg.image.resample import resample_to_spacing

    factor = max(1.0, (image.data[0].numel() / DETECTION_VOXELS) ** (1.0 / image.dim))
    return image if factor <= 1.0 else resample_to_spacing(image, image.grid.spacing * factor)


def _foreground(image: Image) -> torch.Tensor:
    """Otsu foreground (1, *shape) of a small image."""
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(image.data[0].float().cpu().numpy())
    return torch.as_tensor(sitk.GetArrayFromImage(sitk.OtsuThreshold(itk, 0, 1)).astype(np.float32))[None]


def _coarse_rigid_mi(fixed: Image, moving: Image):
    """A rigid fixed -> moving transform by mutual information, 30 + 20 Adam steps at 1/2 and full
    resolution of the (small) images, from the image centres."""
    from morphreg.optim.models import LinearModel
    from morphreg.optim.multires import Level, StageInputs, run_stage
    from morphreg.optim.optimizers import OptimizerConfig
    from morphreg.optim.terms import StageLoss
    from morphreg.register.initialize import initialize

    start = initialize(fixed, moving, "geometry")
    model = LinearModel("rigid", fixed.grid, start)
    levels = [Level(2.0, float(fixed.grid.spacing.min()), 30), Level(1.0, 0.0, 20)]
    outcome = run_stage(model, StageInputs(fixed, moving), levels, StageLoss("mi"),
                        OptimizerConfig(name="adam", lr=0.5, tolerance=1e-5, patience=10), seed=0)
    return start if outcome.diverged else model.stage_transform()


def _aligned_foreground_ncc(small_f: Image, small_m: Image) -> float:
    """NCC inside both Otsu foregrounds after a coarse MI rigid alignment (of small copies)."""
    from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox
    from morphreg.metrics import ncc

    aligned = _coarse_rigid_mi(small_f, small_m)
    sigma = float(small_f.grid.spacing.max())
    with torch.no_grad():
        fs = gaussian_filter(small_f.batch().float(), sigma_mm_to_vox(sigma, small_f.grid))
        ms = small_m.with_data(gaussian_filter(small_m.batch().float(), sigma_mm_to_vox(sigma, small_m.grid))[0])
        warped = warp(ms, aligned, small_f.grid, "linear").batch()
        inside = _foreground(small_f) * warp(small_m.with_data(_foreground(small_m)), aligned, small_f.grid, "nearest").data
        if float(inside.sum()) < 10:
            return 0.0
        return float(ncc(fs[:, :1], warped[:, :1], inside[None]))


def _outlines_overlay(ncc: float) -> bool:
    return abs(ncc) >= OVERLAY_NCC_MIN  # a contrast inversion overlays too


def same_outline(fixed: Image, moving: Image) -> bool:
    """Test 2 of :func:`modality_evidence` in either sign: the same anatomy fills both images."""
    fixed, moving = fixed.with_data(fixed.data.detach().float()), moving.with_data(moving.data.detach().float())
    return _outlines_overlay(overlay_ncc(small_copy(fixed), small_copy(moving)))


def overlay_ncc(fixed: Image, moving: Image) -> float:
    """NCC of the smoothed images overlaid in world space (moving resampled on the fixed grid)."""
    from morphreg.image.filters import gaussian_filter, sigma_mm_to_vox
    from morphreg.metrics import ncc

    sigma = 2.0 * float(max(fixed.grid.spacing.max(), moving.grid.spacing.max()))
    with torch.no_grad():
        fs = gaussian_filter(fixed.batch().float(), sigma_mm_to_vox(sigma, fixed.grid))
        ms = moving.with_data(gaussian_filter(moving.batch().float(), sigma_mm_to_vox(sigma, moving.grid))[0])
        warped = warp(ms, None, fixed.grid, "linear").batch()
        inside = warp(moving.with_data(torch.ones_like(moving.data[:1])), None, fixed.grid, "linear").batch() > 0.5
        if float(inside.sum()) < 10:
            return 0.0
        return float(ncc(fs[:, :1], warped[:, :1], inside.float()))
