"""Models shipped inside the package (``morphreg/models/<name>.pt``), found by name: ``morphreg
models`` lists them with their model cards; ``predict`` / ``register --preset learned --model`` take a
name or a file."""
from __future__ import annotations

from pathlib import Path

from morphreg.errors import MorphregError

SHIPPED = Path(__file__).resolve().parents[1] / "models"


def shipped_models() -> dict[str, Path]:
    """Name -> file of every model in the package (the file name without .pt)."""
    return {p.name[:-3]: p for p in sorted(SHIPPED.glob("*.pt"))} if SHIPPED.is_dir() else {}


def resolve_model(model: str | Path) -> Path:
    """A model file: ``model`` itself when it is a file, else the shipped model of that name."""
    path = Path(model)
    if path.is_file():
        return path
    shipped = shipped_models()
    if str(model) in shipped:
        return shipped[str(model)]
    names = ", ".join(shipped) or "none yet"
    raise MorphregError(f"no such model file, and no shipped model of that name (shipped: {names})", model)
