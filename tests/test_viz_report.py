"""Pictures (2D and tri-planar 3D, headless) and the self-contained HTML report."""
from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from _evaluate_fixtures import small_case, write_result_dir
from morphreg import viz
from morphreg.errors import MorphregError
from morphreg.image import Grid, Image
from morphreg.report import build_report
from morphreg.transforms import DisplacementFieldTransform, warp
from morphreg.viz.orient import lps_array

PNG = b"\x89PNG\r\n\x1a\n"


def _decode(data: bytes) -> PILImage.Image:
    im = PILImage.open(io.BytesIO(data))
    im.load()
    return im


def test_lps_orientation_undoes_flips_and_permutations():
    grid = Grid((4, 3, 2), direction=[[0, 0, -1], [1, 0, 0], [0, -1, 0]])  # index z -> world -x, ...
    arr = np.arange(24).reshape(grid.shape)
    out, spacing, oblique = lps_array(arr, grid)
    world = grid.index_to_world_points(np.argwhere(np.ones(grid.shape))[:, ::-1])
    # Each output axis must run along +world axis: values ordered as the world coordinates.
    flat_world = world.reshape(*grid.shape, 3)
    lps_world, _, _ = lps_array(np.moveaxis(flat_world, -1, 0), grid)
    assert out.shape == (3, 4, 2) == lps_world.shape[1:]  # (z, y, x) extents: ny, nx, nz
    assert np.all(np.diff(lps_world[0], axis=2) > 0) and np.all(np.diff(lps_world[1], axis=1) > 0)
    assert np.all(np.diff(lps_world[2], axis=0) > 0) and not oblique


@pytest.mark.parametrize("dim", [2, 3])
def test_every_picture_renders(dim):
    if dim == 3:
        fixed, moving, fl, ml, t = small_case(fold=True)
    else:
        grid = Grid((40, 30), spacing=(1.0, 1.5))
        yy, xx = np.meshgrid(np.arange(30), np.arange(40), indexing="ij")
        img = np.exp(-((xx - 20) ** 2 + (yy - 15) ** 2) / 60.0).astype(np.float32)
        fixed = Image(torch.as_tensor(img)[None], grid)
        fl = Image(torch.as_tensor((img > 0.5).astype(np.int16))[None], grid)
        u = torch.zeros(2, *grid.shape)
        u[0] = 2.0
        t = DisplacementFieldTransform(u, grid, parameter=False)
        moving, ml = warp(fixed, t, grid), warp(fl, t, grid)
    g = fixed.grid
    warped, wl = warp(moving, t, g), warp(ml, t, g)
    dj = t.jacobian_determinant(g)[0].detach().numpy()
    u = t.displacement(g)[0].detach()
    c = viz.slice_center(g, fl)
    figs = [viz.checkerboard(fixed, warped, moving, center=c), viz.difference(fixed, warped, moving, center=c),
            viz.overlay(fixed, warped, moving, center=c), viz.contours(fixed, fl, wl, ml, center=c),
            viz.deformed_grid(u, g, fixed, center=c), viz.quiver(u, g, fixed, center=c),
            viz.jacobian_map(dj, g, center=c), viz.jacobian_histogram(dj)]
    for fig in figs:
        png = viz.to_png(fig)
        assert png.startswith(PNG)
        im = _decode(png)
        assert im.size[0] > 200 and im.size[1] > 150
        assert np.asarray(im.convert("L")).std() > 5  # not blank
    panels = len(figs[0].axes)
    assert panels == (2 if dim == 2 else 6)  # before/after x (2D view | three planes)
    gif = _decode(viz.flicker_gif(fixed, warped, center=c))
    assert gif.format == "GIF" and gif.n_frames == 2


def test_jacobian_histogram_bin_width():
    vals = np.array([-0.034, 0.5, 0.999, 1.0, 1.2345])
    edges = viz.histogram_edges(vals)
    np.testing.assert_allclose(np.diff(edges), 0.01)
    assert edges[0] <= vals.min() and edges[-1] > vals.max()
    counts, _ = np.histogram(vals, edges)
    assert counts.sum() == vals.size


def test_pictures_refuse_mixed_grids():
    fixed, moving, *_ = small_case()
    other = Image(torch.zeros(1, 5, 5, 5), Grid((5, 5, 5)))
    with pytest.raises(MorphregError, match="same"):
        viz.checkerboard(fixed, other)


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/(?:png|gif);base64,([^']+)'", html)]


def test_report_with_folding_warns_and_embeds_pictures(tmp_path):
    result = write_result_dir(tmp_path / "res", fold=True)
    out = build_report(result, tmp_path / "report.html")
    html = out.read_text(encoding="utf-8")
    imgs = _images(html)
    assert len(imgs) == 9  # checkerboard, overlay, difference, flicker, contours, grid, quiver, det J, histogram
    for data in imgs:
        _decode(data)
    assert "class='warn'" in html and "folds" in html
    assert "test-preset" in html and "bending x 0.1" in html and "1/2: 40 it" in html and "stage 0: bspline" in html
    assert "Not an independent measure of accuracy" in html
    assert "src='http" not in html and "href='http" not in html  # self-contained


def test_report_without_optional_pieces(tmp_path):
    result = write_result_dir(tmp_path / "res", fold=False, with_optional=False)
    summary = json.loads((result / "summary.json").read_text(encoding="utf-8"))
    del summary["inputs"]["moving_labels"], summary["timings"]
    summary["moving"] = "inputs/does_not_exist.nii.gz"
    (result / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    html = build_report(result, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "cannot be found" in html and "Only one label map" in html and "No timing information" in html
    assert len(_images(html)) == 4  # transform pictures only: grid, quiver, det J, histogram


def test_report_uses_metrics_json_and_cli(tmp_path):
    import typer
    from typer.testing import CliRunner

    from morphreg.cli.evaluate import report_cmd

    result = write_result_dir(tmp_path / "res")
    fake = {"overlap": {"labels": {"1": {"dice": 0.5}}, "mean": {"dice": 0.5}},
            "initial": {"overlap": {"mean": {"dice": 0.9}}},
            "centroid_tre": {"initial": {"mean_mm": 1.0}, "final": {"mean_mm": 2.0}, "points": []},
            "transform": {"jacobian": {"folding_percent": 0.0}}, "notes": ["label 3 is missing from the evaluated map"]}
    (result / "metrics.json").write_text(json.dumps(fake), encoding="utf-8")
    app = typer.Typer()
    app.command("report")(report_cmd)
    app.command("other")(lambda: None)
    r = CliRunner().invoke(app, ["report", str(result), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Centroid TRE got worse" in html and "Mean Dice got worse" in html and "Labels missing" in html
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.html")])
    assert isinstance(r.exception, MorphregError)


def test_equal_measures_are_not_reported_as_worse(tmp_path):
    """An identity result: TRE 9.41 -> 9.41 mm up to float32 rounding, Dice unchanged. Neither is 'worse'
    (nor a red card); a change that shows in the printed digits is."""
    from morphreg.report import build_report

    result = write_result_dir(tmp_path / "res")
    for final_tre, final_dice, worse in ((9.410004, 0.502, False), (9.52, 0.49, True)):
        metrics = {"overlap": {"mean": {"dice": final_dice}}, "initial": {"overlap": {"mean": {"dice": 0.502}}},
                   "centroid_tre": {"initial": {"mean_mm": 9.41}, "final": {"mean_mm": final_tre}, "points": []},
                   "transform": {"jacobian": {"folding_percent": 0.0}}, "notes": []}
        (result / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
        html = build_report(result, tmp_path / f"r{worse}.html").read_text(encoding="utf-8")
        assert ("Centroid TRE got worse" in html) == worse and ("Mean Dice got worse" in html) == worse
        assert ("class='card bad'" in html) == worse
