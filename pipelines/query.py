"""`ffe query`: SQL on the catalog, printed for a person or as JSON.

DuckDB hands FLOAT (float32) columns to Python as doubles, so 0.07 arrives as 0.07000000029802322; we
print every float32 as the shortest text that reads back to the same float32 (what DuckDB's own CLI
shows), in tables and in JSON. For a person, wide cells are cut and lists and structs summarised
(`[1434 floats]`, `{52 fields}`); `--json` keeps every value whole.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np

MAX_CELL = 40  # characters of one table cell
SHORT = 40  # a list or struct that prints in this many characters is shown, not summarised


def plain(value: Any, dtype) -> Any:
    """A fetched value as plain Python with float32s rounded to their shortest exact text; `dtype`
    is its DuckDBPyType."""
    if value is None:
        return None
    kind = dtype.id
    if kind == "float":
        return float(str(np.float32(value)))
    if kind in ("list", "array"):
        child = dtype.children[0][1]
        return [plain(v, child) for v in value]
    if kind == "struct":
        types = dict(dtype.children)
        return {k: plain(v, types[k]) for k, v in value.items()}
    if kind == "map":
        key_type, value_type = dtype.children[0][1], dtype.children[1][1]
        return {plain(k, key_type): plain(v, value_type) for k, v in value.items()}
    return value


def _noun(values: list) -> str:
    kinds = {type(v).__name__ for v in values if v is not None}
    names = {"float": "float", "int": "int", "str": "string", "dict": "struct", "list": "list", "bool": "bool"}
    return names.get(next(iter(kinds)), "value") if len(kinds) == 1 else "value"


def cell(value: Any) -> str:
    """One table cell: short, on one line."""
    if value is None:
        return "NULL"
    if isinstance(value, list | tuple):
        text = json.dumps(list(value), default=str)
        if len(text) <= SHORT:
            return text
        noun = _noun(list(value))
        return f"[{len(value)} {noun}{'s' if len(value) != 1 else ''}]"
    if isinstance(value, dict):
        text = json.dumps(value, default=str)
        return text if len(text) <= SHORT else f"{{{len(value)} fields}}"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    text = " ".join(str(value).split()) if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def format_table(columns: list[str], rows: list[tuple]) -> str:
    """Rows (already `plain`) as an aligned text table with a row count."""
    cells = [[cell(c)[:MAX_CELL] for c in columns]] + [[cell(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"({len(rows)} row{'s' if len(rows) != 1 else ''})"])


def run(con, sql: str, as_json: bool) -> str | None:
    """The result of `sql` as text (None: a statement without a result, such as SET)."""
    rel = con.sql(sql)
    if rel is None:
        return None
    columns, types = rel.columns, rel.types
    rows = [tuple(plain(v, t) for v, t in zip(r, types, strict=True)) for r in rel.fetchall()]
    if as_json:
        return json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str, indent=1)
    return format_table(columns, rows)
