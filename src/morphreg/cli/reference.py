"""The reference pages of the documentation, generated from the code so they cannot go stale:
``docs/cli.md`` from the commands' own help, ``docs/config.md`` from the training config's fields.

``python -m morphreg.cli.reference docs`` rewrites both; ``tests/test_docs.py`` checks that the
committed pages equal what this prints.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path

import typer

PAGES = {"cli.md": "cli_reference", "config.md": "config_reference"}


def cli_reference() -> str:
    """Every command and sub-command of ``morphreg`` with its usage line and options, as Markdown."""
    from morphreg.cli.main import app

    root = typer.main.get_command(app)
    lines = ["# Command reference", "", "Generated from the commands' own `--help` by `python -m morphreg.cli.reference "
             "docs` (a test keeps it current). Exit codes, for every command: 0 done, 2 a problem with an input or the "
             "command line (one line naming it), 1 an internal error, 3 some rows / atlases of `batch` / `segment` "
             "failed, 130 / 143 interrupted.", ""]
    lines += _command_section(root, root.context_class(root, info_name="morphreg"), "morphreg", top=True)
    return "\n".join(lines).rstrip() + "\n"


def _command_section(command, ctx, path: str, top: bool = False) -> list[str]:
    # typer ships its own click (typer._click): commands and contexts are duck-typed here.
    lines: list[str] = []
    if not top:
        lines += [f"## `{path}`", "", _plain(command.help or ""), "",
                  f"```text\n{path} {' '.join(command.collect_usage_pieces(ctx))}\n```", ""]
        rows = [r for r in (p.get_help_record(ctx) for p in command.params) if r]
        if rows:
            lines += ["| argument / option | meaning |", "|---|---|"]
            lines += [f"| `{names}` | {_cell(text)} |" for names, text in rows]
            lines.append("")
    for name, sub in getattr(command, "commands", {}).items():
        lines += _command_section(sub, sub.context_class(sub, info_name=name, parent=ctx), f"{path} {name}")
    return lines


def _plain(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())


def _cell(text: str) -> str:
    return _plain(text).replace("|", "\\|")


def config_reference() -> str:
    """Every key of the training config (section, key, type, default, meaning), as Markdown."""
    from morphreg.learn import config

    lines = ["# Training config keys", "", "Generated from `morphreg/learn/config.py` by `python -m morphreg.cli.reference "
             "docs` (a test keeps it current). A config is YAML with these sections; a wrong key or type is a one-line "
             "error; `--set section.key=VALUE` changes one key.", ""]
    for section, cls in _config_sections(config):
        lines += [f"## `{section}`", "", _plain(inspect.getdoc(cls) or "") if cls.__doc__ and not
                  cls.__doc__.startswith(cls.__name__ + "(") else "", "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        comments = _field_comments(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None):
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                continue
            lines.append(f"| `{f.name}` | `{_cell(str(f.type))}` | `{default!r}` | {_cell(comments.get(f.name, ''))} |")
        lines.append("")
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1])).rstrip() + "\n"


def _config_sections(config) -> list[tuple[str, type]]:
    top = config.RunConfig
    sections = []
    for f in dataclasses.fields(top):
        cls = type(f.default_factory()) if f.default_factory is not dataclasses.MISSING else None
        if cls is None or not dataclasses.is_dataclass(cls):
            continue
        sections.append((f.name, cls))
        for sub in dataclasses.fields(cls):
            value = sub.default_factory() if sub.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(value):
                sections.append((f"{f.name}.{sub.name}", type(value)))
    return sections


def _field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field of a dataclass' source (and the ``#`` lines continuing it)."""
    comments: dict[str, str] = {}
    last = None
    for line in inspect.getsource(cls).splitlines()[1:]:
        field = re.match(r"\s+(\w+): [^#]*?(?:#\s?(.*))?$", line)
        more = re.match(r"\s+#\s*(.*)$", line)
        if more and last:
            comments[last] += " " + more.group(1).strip()
        elif field:
            last = field.group(1)
            comments[last] = (field.group(2) or "").strip()
    return comments


def write_pages(folder: str | Path) -> list[Path]:
    """Write every generated page into ``folder`` (the docs folder); returns their paths."""
    out = []
    for name, function in PAGES.items():
        path = Path(folder) / name
        path.write_text(globals()[function](), encoding="utf-8")
        out.append(path)
    return out


if __name__ == "__main__":
    for written in write_pages(sys.argv[1] if len(sys.argv) > 1 else "docs"):
        print(f"wrote {written}")
