"""antspyx's apply_transforms reproduces morphreg's warps from the files morphreg writes."""
from pathlib import Path

import numpy as np
import pytest
import torch

from morphreg import read_image, warp, write_image
from morphreg.transforms import AffineTransform, BSplineTransform, CompositeTransform

ants = pytest.importorskip("ants", reason="antspyx is not installed (pip install -e '.[bench]')")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def mr_image():
    path = DATA / "prostate_mr_trus" / "moving_images" / "obs000.nii.gz"
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    return read_image(path, dtype=torch.float32)


def _ants_vs_ours(image, tmp_path: Path, files: list[str], transform) -> float:
    write_image(image, tmp_path / "image.nii.gz")
    img = ants.image_read(str(tmp_path / "image.nii.gz"))
    theirs = ants.apply_transforms(img, img, [str(tmp_path / f) for f in files], interpolator="linear").numpy()
    with torch.no_grad():
        ours = warp(image, transform, image.grid).data[0].numpy().transpose(2, 1, 0)  # ANTs arrays are x, y, z
    both = (ours != 0) & (theirs != 0)  # the two differ only in how they treat the outermost half voxel
    assert both.mean() > 0.3
    return float(np.abs(theirs - ours)[both].max() / np.abs(ours).max())


def test_ants_reads_affine_mat_and_displacement_fields(mr_image, tmp_path):
    rng = np.random.default_rng(1)
    affine = AffineTransform(3, matrix=np.eye(3) + rng.normal(0, 0.04, (3, 3)), translation=rng.normal(0, 3, 3),
                             center=mr_image.grid.center())
    ffd = BSplineTransform.for_grid(mr_image.grid, 25.0)
    with torch.no_grad():
        ffd.coefficients.normal_(0, 3, generator=torch.Generator().manual_seed(0))
    both = CompositeTransform([affine, ffd])
    affine.save(tmp_path / "affine.mat")
    ffd.save(tmp_path / "ffd.nii.gz", grid=mr_image.grid)
    both.save(tmp_path / "both.nii.gz", grid=mr_image.grid)
    assert _ants_vs_ours(mr_image, tmp_path, ["affine.mat"], affine) < 1e-3
    assert _ants_vs_ours(mr_image, tmp_path, ["ffd.nii.gz"], ffd) < 1e-3
    assert _ants_vs_ours(mr_image, tmp_path, ["both.nii.gz"], both) < 1e-3
    # An ANTs transform list is applied last-first: morphreg's [affine, ffd] is ANTs' [ffd, affine].
    assert _ants_vs_ours(mr_image, tmp_path, ["ffd.nii.gz", "affine.mat"], both) < 1e-3
