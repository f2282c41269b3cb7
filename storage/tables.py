"""Parquet tables: one file per (table, partition), validated against `schemas`, written atomically."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_open
from storage.layout import Layout
from storage.schemas import schema_of


def to_table(table: str, rows: Iterable[Mapping[str, Any]] | pa.Table) -> pa.Table:
    """Rows as an Arrow table of `table`'s schema; a missing column or a wrong type raises here,
    before anything is written."""
    schema = schema_of(table)
    if isinstance(rows, pa.Table):
        data = rows.select(schema.names).cast(schema)
    else:
        data = pa.Table.from_pylist(list(rows), schema=schema)
    for f in schema:
        if not f.nullable and data.column(f.name).null_count:
            raise ValueError(f"{table}.{f.name} must not be null ({data.column(f.name).null_count} rows are)")
    return data


def write_partition(
    layout: Layout, table: str, partition: str, rows: Iterable[Mapping[str, Any]] | pa.Table
) -> pa.Table:
    data = to_table(table, rows)
    with atomic_open(layout.table_file(table, partition)) as f:
        pq.write_table(data, f, compression="zstd")
    return data


def failures_partition(stage: str, partition: str) -> str:
    """The `failures` table holds every stage's rejects: one file per stage and partition."""
    return f"{stage}__{partition}"


def has_partition(layout: Layout, table: str, partition: str) -> bool:
    return layout.table_file(table, partition).is_file()


def parquet_problem(path) -> str | None:
    """Why a Parquet file cannot be used ("missing", "unreadable": its footer does not read), or
    None. A footer read, not the data: cheap enough for every file of a work folder."""
    from pathlib import Path

    if not Path(path).is_file():
        return "missing"
    try:
        pq.read_metadata(path)
    except Exception:  # pyarrow raises ArrowInvalid, OSError ... for a cut or foreign file
        return "unreadable"
    return None


def partitions(layout: Layout, table: str) -> list[str]:
    folder = layout.table_dir(table)
    return sorted(p.stem for p in folder.glob("*.parquet")) if folder.is_dir() else []


def read_partition(layout: Layout, table: str, partition: str) -> pa.Table:
    return pq.read_table(layout.table_file(table, partition), schema=schema_of(table))


def read_table(layout: Layout, table: str, columns: list[str] | None = None, exclude: Iterable[str] = ()) -> pa.Table:
    """All partitions of `table` (optionally without some), as one Arrow table; empty if none."""
    schema = schema_of(table)
    skip = set(exclude)
    parts = [
        pq.read_table(layout.table_file(table, p), columns=columns, schema=schema)
        for p in partitions(layout, table)
        if p not in skip
    ]
    if not parts:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    return pa.concat_tables(parts)
