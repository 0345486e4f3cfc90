"""The layers point downward: no import cycle between subpackages, no private name imported from
another module (read from the source: module-level and function-level imports alike)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "morphreg"


def _imports() -> list[tuple[str, str, list[str]]]:
    """(importing module, imported module, names) for every ``morphreg`` import in the package."""
    out = []
    for path in PACKAGE.rglob("*.py"):
        module = "morphreg." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("morphreg"):
                out.append((module, node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                out += [(module, a.name, []) for a in node.names if a.name.startswith("morphreg")]
    return out


def _subpackage(module: str) -> str | None:
    """"image" for morphreg.image and morphreg.image.io; None for the shared roots (morphreg, morphreg.errors)."""
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir() else None


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if not state.get(nxt):
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if not state.get(start):
            found = visit(start, [])
            if found:
                return found
    return None


def test_no_import_cycle_between_subpackages():
    edges: dict[str, set[str]] = {}
    for src, dst, names in _imports():
        targets = [_subpackage(dst)] if dst != "morphreg" else [_subpackage(f"morphreg.{n}") for n in names]
        for a, b in ((_subpackage(src), t) for t in targets):
            if a and b and a != b:
                edges.setdefault(a, set()).add(b)
    assert _cycle(edges) is None, f"subpackage import cycle: {' -> '.join(_cycle(edges))}"
    assert "image" not in edges.get("core", set()) and "transforms" not in edges.get("image", set())


def test_no_private_name_imported_from_another_module():
    private = [(src, dst, n) for src, dst, names in _imports() for n in names
               if n.startswith("_") and not n.startswith("__") and dst != src]
    assert not private, private


def test_evaluation_is_independent_of_the_engine():
    engine = ("metrics", "regularizers", "optim", "register")
    wrong = [(src, dst) for src, dst, _ in _imports()
             if _subpackage(src) in ("evaluate", "viz", "report") and _subpackage(dst) in engine]
    assert not wrong, wrong


def _module_edges() -> dict[str, set[str]]:
    """File-level import graph (a package's ``__init__`` counts as the package module)."""
    modules = {"morphreg." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).replace(".__init__", "")
               for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for src, dst, names in _imports():
        src = src.replace(".__init__", "")
        for target in [dst] + [f"{dst}.{n}" for n in names]:
            if target in modules and target != src:
                edges.setdefault(src, set()).add(target)
    return edges


# The one allowed file-level cycle: the Transform base class builds its subclasses (compose ->
# CompositeTransform, inverse -> the dense fixed-point inverse, save/load/to_sitk -> io/itk, which know
# every subclass). Everything else imports downward.
TRANSFORM_BASE_CYCLE = "morphreg.transforms"


def test_no_file_level_import_cycle_outside_the_transform_base():
    edges = _module_edges()
    pruned = {a: {b for b in bs if not (a.startswith(TRANSFORM_BASE_CYCLE) and b.startswith(TRANSFORM_BASE_CYCLE))}
              for a, bs in edges.items()}
    assert _cycle(pruned) is None, f"file import cycle: {' -> '.join(_cycle(pruned))}"
