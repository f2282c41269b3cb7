"""The DuckDB catalog: one view per table over its Parquet partitions.

Views hold absolute paths and are recreated on every open, so the catalog always reflects the
files on disk (a moved work folder included) and never stores data of its own. Outside tools can
open `catalog.duckdb` directly.
"""

from __future__ import annotations

import duckdb

from storage.layout import Layout
from storage.schemas import TABLES, schema_of

# Tables whose rows carry a key that two partitions written in parallel may both claim (two ingest
# batches racing on the same content): the view keeps the earliest row per key.
UNIQUE_KEYS = {"images": ("image_id", "ingested_at, batch")}


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _empty_select(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """A typed, zero-row SELECT for a table that has no partition yet."""
    rel = con.from_arrow(schema_of(table).empty_table())
    cols = ", ".join(f'CAST(NULL AS {dtype}) AS "{name}"' for name, dtype in zip(rel.columns, rel.types, strict=False))
    return f"SELECT {cols} WHERE false"


def view_sql(con: duckdb.DuckDBPyConnection, layout: Layout, table: str) -> str:
    folder = layout.table_dir(table)
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return _empty_select(con, table)
    glob = _sql_str(str(folder / "*.parquet"))
    select = f"SELECT * EXCLUDE (filename) FROM read_parquet({glob}, union_by_name=true, filename=true)"
    if table in UNIQUE_KEYS:
        key, order = UNIQUE_KEYS[table]
        select += f" QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {order}) = 1"
    return select


def refresh_views(con: duckdb.DuckDBPyConnection, layout: Layout) -> None:
    for table in TABLES:
        con.execute(f'CREATE OR REPLACE VIEW "{table}" AS {view_sql(con, layout, table)}')


def connect(layout: Layout, *, persist: bool = True) -> duckdb.DuckDBPyConnection:
    """A connection with every table as a view. Writes the views into `catalog.duckdb` when
    `persist`; if another process holds that file's lock, falls back to an in-memory catalog."""
    con = None
    if persist:
        layout.root.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(layout.catalog))
        except duckdb.IOException:
            con = None  # locked by another process: the views below are all we need
    if con is None:
        con = duckdb.connect(":memory:")
    refresh_views(con, layout)
    return con


def table_counts(layout: Layout) -> dict[str, int]:
    with connect(layout, persist=False) as con:
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}
