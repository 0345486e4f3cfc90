"""The HTML report in a real browser (headless Chromium): loads without script errors, every
embedded picture decodes, and a screenshot is produced."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from _evaluate_fixtures import write_result_dir
from morphreg.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars"]

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")]


def _chromium(args: list[str], profile) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=120)


def test_report_loads_in_chromium(tmp_path):
    result = write_result_dir(tmp_path / "res", fold=True)
    page = build_report(result, tmp_path / "report.html")
    n_img = page.read_text(encoding="utf-8").count("<img ")
    url = page.resolve().as_uri()
    dom = _chromium(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", url], tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    check = re.search(r'data-check="([^"]*)"', dom.stdout)
    assert check, "the page's check script did not run"
    assert check.group(1) == f"ok:{n_img}/{n_img}:errors=0", check.group(1)
    console_errors = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and ("Uncaught" in ln or "Error" in ln)]
    assert not console_errors, console_errors
    shot = tmp_path / "report.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1280,2000", url], tmp_path / "p2")
    assert res.returncode == 0 and shot.exists() and shot.stat().st_size > 20_000, res.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG")
