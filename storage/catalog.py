"""The DuckDB catalog: one view per table over its Parquet partitions.

Views hold absolute paths and are recreated on every open, so the catalog always reflects the
files on disk (a moved work folder included) and never stores data of its own. Outside tools can
open `catalog.duckdb` directly.
"""

from __future__ import annotations

import os
import sys

import duckdb

from storage.layout import Layout
from storage.reported import REPORTED, SOURCE
from storage.schemas import BENCH_METRICS, RELEASE_FACES, SHARD_INDEX, TABLES, schema_of
from storage.tables import parquet_problem

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
    # Partitions written before a column was added lack it: the view has it, null there.
    typed = con.from_arrow(schema_of(table).empty_table())
    try:
        present = set(con.sql(f"SELECT * FROM ({select}) LIMIT 0").columns)
    except duckdb.Error:
        # A file Parquet cannot read (cut, overwritten): the view holds the readable ones and
        # `ffe status` / `ffe check` name the rest (`ffe build` rebuilds them).
        files = [f for f in sorted(folder.glob("*.parquet")) if parquet_problem(f) is None]
        if not files:
            return _empty_select(con, table)
        listed = "[" + ", ".join(_sql_str(str(f)) for f in files) + "]"
        select = f"SELECT * EXCLUDE (filename) FROM read_parquet({listed}, union_by_name=true, filename=true)"
        present = set(con.sql(f"SELECT * FROM ({select}) LIMIT 0").columns)
    if missing := [(n, t) for n, t in zip(typed.columns, typed.types, strict=True) if n not in present]:
        nulls = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in missing)
        select = f"SELECT *, {nulls} FROM ({select})"
    if table in UNIQUE_KEYS:
        key, order = UNIQUE_KEYS[table]
        select += f" QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {order}) = 1"
    return select


_MANIFEST_COLUMNS = (
    "{version: 'VARCHAR', planned_at: 'TIMESTAMPTZ', built_at: 'TIMESTAMPTZ', complete: 'BOOLEAN', counts: 'JSON'}"
)
_COUNTS = (
    "CAST(counts->>'faces' AS INTEGER) AS faces, CAST(counts->>'identities' AS INTEGER) AS identities, "
    + ", ".join(f"CAST(counts->'splits'->'{s}'->>'faces' AS INTEGER) AS {s}_faces" for s in ("train", "val", "bench"))
    + ", CAST(counts->'triplets'->>'train' AS INTEGER) AS train_triplets"
)


def _release_view_sql(con: duckdb.DuckDBPyConnection, layout: Layout, view: str) -> str:
    """Views over every release: `releases` (one row per built release, from manifest.json),
    `release_faces` (splits.parquet of each, with its version) and `release_shards`
    (shards/index.parquet of each)."""
    root = layout.releases
    if view == "releases":
        if not any(root.glob("*/manifest.json")):
            return "SELECT NULL::VARCHAR AS version WHERE false"
        glob = _sql_str(str(root / "*" / "manifest.json"))
        return (f"SELECT version, planned_at, built_at, complete, {_COUNTS} "
                f"FROM read_json({glob}, columns={_MANIFEST_COLUMNS}) ORDER BY planned_at")  # fmt: skip
    relative, schema = {"release_faces": ("splits.parquet", RELEASE_FACES),
                        "release_shards": ("shards/index.parquet", SHARD_INDEX)}[view]  # fmt: skip
    if not any(root.glob(f"*/{relative}")):
        return f"SELECT NULL::VARCHAR AS version, * FROM ({_empty_release(con, schema)})"
    pattern = _sql_str(f"([^/]+)/{relative.replace('.', '[.]')}$")

    def select(files: str) -> str:
        return (f"SELECT regexp_extract(filename, {pattern}, 1) AS version, * EXCLUDE (filename) "
                f"FROM read_parquet({files}, filename=true, union_by_name=true)")  # fmt: skip

    sql = select(_sql_str(str(root / "*" / relative)))
    try:
        con.sql(f"SELECT * FROM ({sql}) LIMIT 0")
    except duckdb.Error:  # a damaged release file: the readable ones (`ffe check` names the rest)
        files = [f for f in sorted(root.glob(f"*/{relative}")) if parquet_problem(f) is None]
        sql = select("[" + ", ".join(_sql_str(str(f)) for f in files) + "]") if files else (
            f"SELECT NULL::VARCHAR AS version, * FROM ({_empty_release(con, schema)})")
    return sql


def _empty_release(con: duckdb.DuckDBPyConnection, schema) -> str:
    empty = con.from_arrow(schema.empty_table())
    cols = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in zip(empty.columns, empty.types, strict=True))
    return f"SELECT {cols} WHERE false"


RELEASE_VIEWS = ("releases", "release_faces", "release_shards")


def _sql_value(v) -> str:
    return "NULL" if v is None else repr(float(v))


def leaderboard_sql() -> str:
    """Finished bench runs (failed ones never rank) beside the paper's reported rows."""
    metrics = list(BENCH_METRICS.values())
    shared = ", ".join(f"{m}::DOUBLE AS {m}" for m in metrics)
    measured = (f"SELECT kind, model, release, run_id, judge, tasks, edits, {shared}, ci95, config_hash, "
                "git_commit, \"at\", notes FROM bench_runs WHERE status = 'ok'")  # fmt: skip
    values = ", ".join(
        "(" + ", ".join([_sql_str(r["model"]), *(_sql_value(r.get(m)) for m in metrics)]) + ")" for r in REPORTED
    )
    reported = (f"SELECT 'reported' AS kind, model, NULL::VARCHAR AS release, NULL::VARCHAR AS run_id, "
                f"{_sql_str(SOURCE)} AS judge, NULL::INTEGER AS tasks, NULL::INTEGER AS edits, {shared}, "
                "NULL::VARCHAR AS ci95, "
                "NULL::VARCHAR AS config_hash, NULL::VARCHAR AS git_commit, NULL::TIMESTAMPTZ AS \"at\", "
                "NULL::VARCHAR AS notes "
                f"FROM (VALUES {values}) AS t(model, {', '.join(metrics)})")  # fmt: skip
    return f"{measured} UNION ALL {reported}"


def refresh_views(con: duckdb.DuckDBPyConnection, layout: Layout) -> None:
    for table in TABLES:
        con.execute(f'CREATE OR REPLACE VIEW "{table}" AS {view_sql(con, layout, table)}')
    for view in RELEASE_VIEWS:
        con.execute(f'CREATE OR REPLACE VIEW "{view}" AS {_release_view_sql(con, layout, view)}')
    con.execute(f"CREATE OR REPLACE VIEW leaderboard AS {leaderboard_sql()}")


def connect(layout: Layout, *, persist: bool = True) -> duckdb.DuckDBPyConnection:
    """A connection with every table as a view. Writes the views into `catalog.duckdb` when
    `persist`; if another process holds that file's lock, or it cannot be written (a read-only
    folder or mount), falls back to an in-memory catalog. A
    catalog DuckDB cannot open (cut, overwritten) is moved aside to `catalog.duckdb.damaged` and
    made again: it holds only views, so nothing is lost."""
    con = None
    if persist:
        layout.root.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(layout.catalog))
            refresh_views(con, layout)
            return con
        except duckdb.Error as err:
            if con is not None:
                con.close()
            # Locked by another process, or a file that reads but cannot be written (a read-only
            # mount): the in-memory views below are all this command needs. Only a file that does
            # not even open read-only is damaged.
            readable = not layout.catalog.exists() or _opens_read_only(layout)  # none yet: a read-only folder
            con = None if "lock" in str(err).lower() or readable else _remade(layout, err)
    if con is None:
        con = duckdb.connect(":memory:")
    refresh_views(con, layout)
    return con


def damaged(layout: Layout) -> str | None:
    """A line naming `catalog.duckdb` when it exists and does not open (outside tools then fail;
    `ffe build` makes it again), else None."""
    if not layout.catalog.exists() or _opens_read_only(layout):
        return None
    return f"{layout.relative(layout.catalog)} unreadable (the views outside tools read; `ffe build` makes it again)"


def _opens_read_only(layout: Layout) -> bool:
    try:
        duckdb.connect(str(layout.catalog), read_only=True).close()
        return True
    except duckdb.Error:
        return False


def _remade(layout: Layout, err: duckdb.Error) -> duckdb.DuckDBPyConnection | None:
    damaged = layout.catalog.with_name(layout.catalog.name + ".damaged")
    try:
        os.replace(layout.catalog, damaged)
    except OSError as moved:  # a read-only folder, a file mounted on its own: views in memory this time
        print(f"ffe: {layout.catalog} could not be opened ({' '.join(str(err).split())[:160]}) nor moved aside "
              f"({moved.strerror}): using the tables directly this time", file=sys.stderr)  # fmt: skip
        return None
    layout.catalog.with_name(layout.catalog.name + ".wal").unlink(missing_ok=True)  # the damaged file's log
    print(f"ffe: {layout.catalog} could not be opened ({' '.join(str(err).split())[:160]}): made again from "
          f"the tables; the damaged file is kept as {damaged.name}", file=sys.stderr)  # fmt: skip
    return duckdb.connect(str(layout.catalog))


def table_counts(layout: Layout) -> dict[str, int]:
    with connect(layout, persist=False) as con:
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}
