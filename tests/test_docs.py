"""The documentation is true: the README's tour runs as written on the real data of ../shared/data,
every command of the user guide runs (on a small synthetic 3D pair), and the generated reference
pages (docs/cli.md, docs/config.md) equal what the code generates.

The README's set-up commands (install + demo, the test command) are what CI itself runs. Placeholders
of the guide are given files: ``F``/``M`` (label maps), ``a/``, ``b/`` (two metrics files to compare).
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
from pathlib import Path

import pytest

from morphreg.cli.main import main
from morphreg.data.phantom import make_phantom_pair
from morphreg.image.io import write_image

ROOT = Path(__file__).resolve().parents[1]
README, GUIDE, LEARNED = ROOT / "README.md", ROOT / "docs" / "guide.md", ROOT / "docs" / "learned.md"
PLACEHOLDERS = {"F": "fixed_labels.nii.gz", "M": "moving_labels.nii.gz"}


def _section_blocks(page: Path, section: str, language: str) -> list[str]:
    text = page.read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)


def _commands(page: Path = GUIDE, section: str = "Commands at a glance") -> list[list[str]]:
    lines = [ln.split("  #", 1)[0].strip() for block in _section_blocks(page, section, "bash") for ln in block.splitlines()]
    return [[PLACEHOLDERS.get(a, a) for a in shlex.split(ln)] for ln in lines if ln]


def _run_commands(commands: list[list[str]], folder: Path, capsys) -> dict[str, str]:
    """Run each ``morphreg ...`` line in-process, in order; every one must exit 0. Returns each line's output."""
    outputs = {}
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for command in commands:
            if command[1] == "compare":  # two methods' metrics: the one evaluated above, twice
                for name in ("a", "b"):
                    (folder / name).mkdir(exist_ok=True)
                    shutil.copy(folder / "metrics.json", folder / name / "metrics.json")
            redirect = command[command.index(">") + 1] if ">" in command else None
            args = command[1: command.index(">")] if redirect else command[1:]
            capsys.readouterr()
            with pytest.raises(SystemExit) as done:
                main(args)
            captured = capsys.readouterr()
            assert done.value.code in (0, None), (command, captured.err)
            outputs[" ".join(command)] = captured.out + captured.err
            if redirect:  # "> FILE" as the shell would do it
                (folder / redirect).write_text(captured.out, encoding="utf-8")
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    return outputs


@pytest.fixture()
def readme_files(tmp_path, monkeypatch, one_thread):
    pair = make_phantom_pair(dim=3, size=24, spacing=2.0, seed=0)
    for name, image in [("image", pair.fixed), ("fixed", pair.fixed), ("moving", pair.moving), ("trus", pair.fixed),
                        ("mr", pair.moving), ("gland_us", pair.fixed_labels), ("gland_mr", pair.moving_labels),
                        ("fixed_labels", pair.fixed_labels), ("moving_labels", pair.moving_labels)]:
        write_image(image, tmp_path / f"{name}.nii.gz")
    (tmp_path / "pairs.csv").write_text("fixed,moving,fixed_labels,moving_labels\n"
                                        "fixed.nii.gz,moving.nii.gz,fixed_labels.nii.gz,moving_labels.nii.gz\n")
    (config,) = re.findall(r"```yaml\n(.*?)```", LEARNED.read_text(encoding="utf-8"), flags=re.S)
    (tmp_path / "train.yaml").write_text(config)
    (tmp_path / "atlases.csv").write_text("image,labels\nfixed.nii.gz,fixed_labels.nii.gz\n"
                                          "moving.nii.gz,moving_labels.nii.gz\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_guide_commands_run_as_written(readme_files, capsys):
    commands = _commands()
    assert len(commands) >= 13 and all(c[0] == "morphreg" for c in commands)
    _run_commands(commands, readme_files, capsys)
    for output in ("out/summary.json", "out/transform.h5", "lin/warped.mha", "out2/displacement.nii.gz",
                   "warped.nii.gz", "warped_labels.nii.gz",
                   "metrics.json", "report.html", "my.yaml", "batch/0001/summary.json", "batch/metrics.csv",
                   "template.nii.gz", "template_iterations/convergence.csv", "seg.nii.gz", "seg_confidence.nii.gz",
                   "run/model.pt", "run/metrics.csv", "learned/transform.h5", "fused/transform.h5", "joined.pt"):
        assert (readme_files / output).is_file(), output


def test_guide_python_example_runs(readme_files, capsys):
    (block,) = _section_blocks(GUIDE, "Python", "python")
    exec(compile(block, "README.md", "exec"), {})
    assert (readme_files / "transform.h5").is_file() and (readme_files / "out" / "summary.json").is_file()
    assert "svf" in capsys.readouterr().out


@pytest.mark.realdata
@pytest.mark.slow
def test_readme_tour_runs_on_the_real_data(shared_data, tmp_path, monkeypatch, capsys):
    """Every line of the README's tour, in order, as written, with ../shared/data where the README says it
    is; then the figures its comments promise (brain Dice 0.42 -> 0.64 +- 0.02, a gland-driven prostate result)."""
    commands = [[a.replace("../shared/data", str(shared_data)) for a in c] for c in _commands(README, "A tour on real data")]
    assert len(commands) >= 8 and all(c[0] == "morphreg" for c in commands)
    monkeypatch.chdir(tmp_path)
    _run_commands(commands, tmp_path, capsys)
    brain = json.loads((tmp_path / "brain" / "metrics.json").read_text(encoding="utf-8"))
    assert brain["initial"]["overlap"]["mean"]["dice"] == pytest.approx(0.42, abs=0.01)
    assert brain["overlap"]["mean"]["dice"] == pytest.approx(0.64, abs=0.02)
    prostate = json.loads((tmp_path / "prostate" / "metrics.json").read_text(encoding="utf-8"))
    assert prostate["overlap"]["mean"]["dice"] > prostate["initial"]["overlap"]["mean"]["dice"] + 0.2
    for output in ("brain/report.html", "brain_labels.nii.gz", "head/warped.mha", "head_syn/displacement.mha",
                   "prostate_net/transform.h5", "brain_report.html"):
        assert (tmp_path / output).is_file(), output


@pytest.mark.parametrize("page", ["cli.md", "config.md"])
def test_generated_reference_pages_are_current(page):
    from morphreg.cli import reference

    expected = getattr(reference, reference.PAGES[page])()
    assert (ROOT / "docs" / page).read_text(encoding="utf-8") == expected, \
        f"docs/{page} is stale: run python -m morphreg.cli.reference docs"


def test_readme_links_to_pages_that_exist():
    links = re.findall(r"\]\(([^)#]+\.md)\)", README.read_text(encoding="utf-8"))
    assert {"docs/guide.md", "docs/learned.md", "docs/cli.md", "docs/architecture.md"} <= set(links)
    assert all((ROOT / link).is_file() for link in links)
