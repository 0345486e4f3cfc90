"""Every command the README shows under "Using it" runs as written (on a small synthetic 3D pair).

The set-up commands (install + demo, the test command) are what CI itself runs. Placeholders of the
README are given files: ``F``/``M`` (label maps), ``a/``, ``b/`` (two metrics files to compare).
"""
from __future__ import annotations

import re
import shlex
import shutil
import signal
from pathlib import Path

import pytest

from morphreg.cli.main import main
from morphreg.data.phantom import make_phantom_pair
from morphreg.image.io import write_image

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDERS = {"F": "fixed_labels.nii.gz", "M": "moving_labels.nii.gz"}


def _section_blocks(section: str, language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)


def _commands() -> list[list[str]]:
    lines = [ln.split("  #", 1)[0].strip() for block in _section_blocks("Using it", "bash") for ln in block.splitlines()]
    return [[PLACEHOLDERS.get(a, a) for a in shlex.split(ln)] for ln in lines if ln]


@pytest.fixture()
def readme_files(tmp_path, monkeypatch, one_thread):
    pair = make_phantom_pair(dim=3, size=24, spacing=2.0, seed=0)
    for name, image in [("image", pair.fixed), ("fixed", pair.fixed), ("moving", pair.moving), ("trus", pair.fixed),
                        ("mr", pair.moving), ("gland_us", pair.fixed_labels), ("gland_mr", pair.moving_labels),
                        ("fixed_labels", pair.fixed_labels), ("moving_labels", pair.moving_labels)]:
        write_image(image, tmp_path / f"{name}.nii.gz")
    (tmp_path / "pairs.csv").write_text("fixed,moving,fixed_labels,moving_labels\n"
                                        "fixed.nii.gz,moving.nii.gz,fixed_labels.nii.gz,moving_labels.nii.gz\n")
    (config,) = _section_blocks("Using it", "yaml")
    (tmp_path / "train.yaml").write_text(config)
    (tmp_path / "atlases.csv").write_text("image,labels\nfixed.nii.gz,fixed_labels.nii.gz\n"
                                          "moving.nii.gz,moving_labels.nii.gz\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_commands_run_as_written(readme_files, capsys):
    commands = _commands()
    assert len(commands) >= 13 and all(c[0] == "morphreg" for c in commands)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for command in commands:
            if command[1] == "compare":  # two methods' metrics: the one evaluated above, twice
                for folder in ("a", "b"):
                    (readme_files / folder).mkdir(exist_ok=True)
                    shutil.copy(readme_files / "metrics.json", readme_files / folder / "metrics.json")
            redirect = command[command.index(">") + 1] if ">" in command else None
            args = command[1: command.index(">")] if redirect else command[1:]
            capsys.readouterr()
            with pytest.raises(SystemExit) as done:
                main(args)
            captured = capsys.readouterr()
            assert done.value.code in (0, None), (command, captured.err)
            if redirect:  # "> FILE" as the shell would do it
                (readme_files / redirect).write_text(captured.out, encoding="utf-8")
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    for output in ("out/summary.json", "out/transform.h5", "out2/warped.mha", "warped.nii.gz", "warped_labels.nii.gz",
                   "metrics.json", "report.html", "my.yaml", "batch/0001/summary.json", "batch/metrics.csv",
                   "template.nii.gz", "template_iterations/convergence.csv", "seg.nii.gz", "seg_confidence.nii.gz",
                   "run/model.pt", "run/metrics.csv", "learned/transform.h5", "fused/transform.h5", "joined.pt"):
        assert (readme_files / output).is_file(), output


def test_readme_python_example_runs(readme_files, capsys):
    (block,) = _section_blocks("Using it", "python")
    exec(compile(block, "README.md", "exec"), {})
    assert (readme_files / "transform.h5").is_file() and (readme_files / "out" / "summary.json").is_file()
    assert "svf" in capsys.readouterr().out
