"""Staged chunks: how a long partition build survives a crash.

A step that turns many items into table rows writes them in chunks under
`staging/<asset>/<partition>/`: one Parquet file per table per chunk, then a `.done` marker (the
chunk counts only once its marker exists). A rerun reads the finished chunks, skips their items and
goes on. When every item is done, `publish` writes each table's partition file whole and removes
the staging folder, so a partition file never looks finished before it is.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa

from storage import tables
from storage.atomic import atomic_write_bytes, sweep_temp_files
from storage.errors import StorageError
from storage.layout import Layout


class Staging:
    def __init__(self, layout: Layout, asset: str, partition: str, table_names: Iterable[str]):
        self.layout = layout
        self.dir = layout.staging_dir(asset, partition)
        self.table_names = tuple(table_names)
        self._chunks = Layout(self.dir)  # chunk files reuse the table writers: <dir>/tables/<t>/<chunk>
        self.sweep()

    @property
    def marker_dir(self):
        return self.dir / "done"

    def sweep(self) -> None:
        """Drop what writers killed mid-file left (only files whose writer process is gone)."""
        for table in self.table_names:
            sweep_temp_files(self._chunks.table_dir(table))
            sweep_temp_files(self.layout.table_dir(table))
        sweep_temp_files(self.marker_dir)

    def chunk_ids(self) -> list[str]:
        return sorted(p.stem for p in self.marker_dir.glob("*.done")) if self.marker_dir.is_dir() else []

    def read(self, table: str) -> pa.Table:
        parts = [tables.read_partition(self._chunks, table, c) for c in self.chunk_ids()]
        return pa.concat_tables(parts) if parts else tables.to_table(table, [])

    def write_chunk(self, rows: dict[str, list[dict]]) -> None:
        existing = self.chunk_ids()
        chunk = f"{int(existing[-1]) + 1 if existing else 0:06d}"
        try:
            for table in self.table_names:
                tables.write_partition(self._chunks, table, chunk, rows.get(table, []))
            atomic_write_bytes(self.marker_dir / f"{chunk}.done", b"")
        except OSError as err:
            n = sum(len(r) for r in rows.values())
            raise StorageError(f"cannot stage {n} rows in {self.dir}: {err}") from None

    def publish(self, partition_of: dict[str, str]) -> dict[str, pa.Table]:
        """Write every table's partition file from all chunks (the last one listed goes last: a
        crash before it leaves staging in place), then remove staging. Returns what was written."""
        written = {}
        for table, partition in partition_of.items():
            written[table] = tables.write_partition(self.layout, table, partition, self.read(table))
        shutil.rmtree(self.dir, ignore_errors=True)
        return written

    def exists(self) -> bool:
        return self.dir.exists()


class ChunkWriter:
    """Collects rows per table, stages them every `chunk_size` finished items, and reports
    progress as (items done, `total`), counting the `done` items an earlier run staged."""

    def __init__(
        self,
        staging: Staging,
        chunk_size: int,
        *,
        total: int = 0,
        done: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ):
        self.staging, self.chunk_size = staging, chunk_size
        self.total, self.done, self.progress = total, done, progress
        self.rows: dict[str, list[dict]] = {t: [] for t in staging.table_names}
        self.items = 0
        if progress:
            progress(done, total)

    def add(self, table: str, row: dict) -> None:
        self.rows[table].append(row)

    def item_done(self) -> None:
        self.items += 1
        self.done += 1
        if self.items >= self.chunk_size:
            self.flush()
        if self.progress:
            self.progress(self.done, self.total)

    @contextlib.contextmanager
    def finishing(self) -> Iterator[ChunkWriter]:
        """Around the loop that feeds the writer: at the end, stage what is pending (an empty chunk
        if nothing was staged, so the partition can be published); on a StorageError (a full
        disk), stage what this run finished if there is room, then let the error go on."""
        try:
            yield self
        except StorageError:
            with contextlib.suppress(OSError):
                self.flush()
            raise
        self.flush(force=not self.staging.chunk_ids())

    def flush(self, *, force: bool = False) -> None:
        """Stage what is pending; `force` stages even an empty chunk (so a partition with no
        items still has a finished chunk to publish)."""
        if self.items or force:
            self.staging.write_chunk(self.rows)
        self.rows = {t: [] for t in self.staging.table_names}
        self.items = 0
