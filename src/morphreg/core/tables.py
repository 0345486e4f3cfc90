"""The CSV tables of the population commands: one row per task, paths relative to the table."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from morphreg.errors import MorphregError

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def read_table(csv_path: str | Path, what: str, required: tuple[str, ...], optional: tuple[str, ...],
               default_id: str = "{:04d}") -> list[tuple[str, dict[str, str]]]:
    """``(id, {column: absolute path})`` per row of a table with the ``required`` and ``optional`` path
    columns and an optional ``id`` column (default ``default_id.format(row number)``; ids are plain
    folder names, each used once). Every problem is a one-line error naming the table and the row."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MorphregError(f"cannot read the {what} table ({exc})", csv_path) from None
    columns = set(required) | set(optional) | {"id"}
    unknown = [h for h in header if h not in columns]
    if any(c not in header for c in required) or unknown:
        raise MorphregError(f"a {what} table needs the columns {', '.join(required)} (optional: "
                            f"{', '.join(optional + ('id',))})"
                            + (f"; unknown column(s) {', '.join(unknown)}" if unknown else ""), csv_path)
    rows, seen = [], set()
    for i, rec in enumerate(records, start=1):
        rec = {(k or "").strip(): (v or "").strip() for k, v in rec.items()}
        row_id = rec.get("id") or default_id.format(i)
        if not SAFE_ID.match(row_id) or row_id in seen:
            raise MorphregError(f"row {i}: id {row_id!r} is {'used twice' if row_id in seen else 'not a plain folder name'}",
                                csv_path)
        if not all(rec.get(c) for c in required):
            raise MorphregError(f"row {i}: {' and '.join(required)} are required", csv_path)
        seen.add(row_id)
        rows.append((row_id, {k: str((csv_path.parent / v).resolve()) for k, v in rec.items() if k != "id" and v}))
    if not rows:
        raise MorphregError(f"the {what} table has no rows", csv_path)
    return rows
