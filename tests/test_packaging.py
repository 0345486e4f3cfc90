"""What the package imports is declared in pyproject.toml (a transitive dependency can disappear:
typer 0.29 no longer installs click, which the CLI once imported), and the CLI's light paths do not
load the engine."""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in project["dependencies"]}


def _imported_top_level() -> set[str]:
    names = set()
    for path in (ROOT / "src" / "morphreg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"morphreg", "__future__"}


def test_every_imported_package_is_declared():
    providers = md.packages_distributions()
    declared = _declared()
    missing = {}
    for module in sorted(_imported_top_level()):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml dependencies: {missing}"


def test_help_and_usage_errors_do_not_load_torch():
    code = ("import sys; from morphreg.cli.main import main\n"
            "try:\n    main(['info'])\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr
