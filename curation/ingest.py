"""Ingest one batch: read each file once, hash it, validate it by decoding, store it under its hash.

Resumable at chunk granularity: every `chunk_size` files, the rows so far are staged as Parquet
(atomically). A rerun after a crash or SIGKILL skips the files that staged chunks already hold, so
every good file is ingested exactly once; the partition's tables are written only when the whole
batch is done, and then the staging folder is removed.

Rows go to two tables: `images` (one per distinct content) and `failures` (stage `raw_images`:
every file that is not a new image, with a reason from `curation.probe` plus `unreadable` and
`duplicate`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context

import pyarrow as pa

from curation.batches import InputFile, load_manifest
from curation.probe import Rejected, probe
from storage import tables
from storage.atomic import sweep_temp_files
from storage.blobs import content_id, put_image
from storage.errors import StorageError
from storage.layout import Layout

STAGE = "raw_images"
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")


@dataclass(frozen=True)
class IngestSettings:
    max_megapixels: float = 50.0  # larger images are refused undecoded (decompression bombs)
    min_side: int = 32  # smaller images cannot hold a usable face
    formats: tuple[str, ...] = DEFAULT_FORMATS  # PIL format names accepted
    chunk_size: int = 256  # files per staged chunk: the most a crash can cost
    workers: int = 0  # processes decoding in parallel; 0 = one per core for big enough batches
    fsync_images: bool = False  # flush every stored original to disk (power-loss safety, slower)

    def worker_count(self, n_files: int) -> int:
        """`workers` if set; else one per core, as far as the batch pays for a pool: starting one
        costs ~0.3 s (forkserver, imports), worth it from a few hundred files."""
        if self.workers > 0:
            return max(1, min(self.workers, n_files))
        return max(1, min(os.cpu_count() or 1, n_files // 128))


@dataclass
class IngestSummary:
    batch: str
    files: int = 0
    images: int = 0
    resumed: int = 0  # files found done in staged chunks of an earlier, interrupted run
    failures: Counter = field(default_factory=Counter)

    def as_metadata(self) -> dict:
        return {
            "files": self.files,
            "images": self.images,
            "failed": sum(self.failures.values()),
            "resumed_from_staging": self.resumed,
            "failures_by_reason": dict(sorted(self.failures.items())),
        }


@dataclass(frozen=True)
class _Outcome:
    """What a worker learned about one file: an image (image_id set) or a rejection."""

    item: str
    image_id: str | None = None
    path: str = ""
    info: dict | None = None
    size: int = 0
    reason: str = ""
    detail: str = ""


def _now() -> datetime:
    return datetime.now(UTC)


def _ingest_one(layout: Layout, settings: IngestSettings, file: InputFile) -> _Outcome:
    """Runs in a worker: one read, one hash, one decode, one (idempotent) store."""
    try:
        with open(file.path, "rb") as f:
            data = f.read()
    except OSError as err:
        return _Outcome(file.path, reason="unreadable", detail=f"{type(err).__name__}: {err.strerror or err}")
    try:
        info = probe(
            data,
            formats=frozenset(settings.formats),
            max_megapixels=settings.max_megapixels,
            min_side=settings.min_side,
        )
    except Rejected as rej:
        return _Outcome(file.path, reason=rej.reason, detail=rej.detail, size=len(data))
    image_id = content_id(data)
    try:
        stored = put_image(layout, data, image_id, info.extension, fsync=settings.fsync_images)
    except OSError as err:  # the work folder's fault, not the file's: stop the batch
        raise StorageError(f"cannot store {file.path} under {layout.images}: {err.strerror or err}") from None
    return _Outcome(file.path, image_id=image_id, path=layout.relative(stored), info=info.__dict__, size=len(data))


def _outcomes(layout: Layout, settings: IngestSettings, files: list[InputFile]) -> Iterator[_Outcome]:
    """Outcomes in input order, decoded by `settings.worker_count` processes."""
    one = functools.partial(_ingest_one, layout, settings)  # picklable, for the pool
    n_workers = settings.worker_count(len(files))
    if n_workers <= 1:
        yield from map(one, files)
        return
    # forkserver: forking a process that runs Dagster's threads is not safe.
    pool = ProcessPoolExecutor(n_workers, mp_context=get_context("forkserver"))
    try:
        yield from pool.map(one, files, chunksize=8)
    finally:  # on an error or interrupt, drop the files not yet started
        pool.shutdown(wait=True, cancel_futures=True)


class _Staging:
    """The staged chunks of one batch: what an interrupted run already finished."""

    def __init__(self, layout: Layout, batch: str):
        self.layout = layout
        self.dir = layout.staging_dir(STAGE, batch)
        self.chunk_layout = Layout(self.dir)  # chunk files reuse the table writers

    def chunk_ids(self) -> list[str]:
        # The images file is written last, so it marks a complete chunk.
        return tables.partitions(self.chunk_layout, "images")

    def read(self, table: str) -> pa.Table:
        done = set(self.chunk_ids())
        parts = [tables.read_partition(self.chunk_layout, table, c) for c in sorted(done)]
        return pa.concat_tables(parts) if parts else tables.to_table(table, [])

    def done_items(self) -> set[str]:
        """Input files that staged chunks hold, as images or as failures."""
        return set(self.read("images").column("source_uri").to_pylist()) | set(
            self.read("failures").column("item").to_pylist()
        )

    def write_chunk(self, images: list[dict], failures: list[dict]) -> None:
        existing = self.chunk_ids()
        chunk = f"{int(existing[-1]) + 1 if existing else 0:06d}"
        try:
            tables.write_partition(self.chunk_layout, "failures", chunk, failures)
            tables.write_partition(self.chunk_layout, "images", chunk, images)
        except OSError as err:
            raise StorageError(f"cannot stage {len(images) + len(failures)} rows in {self.dir}: {err}") from None

    def sweep(self) -> None:
        """Drop what writers killed mid-file left: staged chunks, originals, final tables."""
        for folder in (
            self.chunk_layout.table_dir("images"),
            self.chunk_layout.table_dir("failures"),
            self.layout.images_temp,
            self.layout.table_dir("images"),
            self.layout.table_dir("failures"),
        ):
            sweep_temp_files(folder)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def ingest_batch(
    layout: Layout,
    batch: str,
    settings: IngestSettings = IngestSettings(),
    progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Ingest every file of `batch`'s manifest; write its `images` and `failures` partitions."""
    manifest = load_manifest(layout, batch)
    staging = _Staging(layout, batch)
    staging.sweep()

    done = staging.done_items()
    staged_images = staging.read("images")
    todo = [f for f in manifest.files if f.path not in done]
    summary = IngestSummary(batch=batch, files=len(manifest.files), resumed=len(manifest.files) - len(todo))

    # Content already ingested, by other batches or by this one's staged chunks: first copy wins.
    earlier = tables.read_table(layout, "images", columns=["image_id", "source_uri"], exclude=[batch])
    first_source: dict[str, str] = dict(
        zip(earlier.column("image_id").to_pylist(), earlier.column("source_uri").to_pylist(), strict=False)
    )
    first_source.update(
        zip(staged_images.column("image_id").to_pylist(), staged_images.column("source_uri").to_pylist(), strict=False)
    )

    images: list[dict] = []
    failures: list[dict] = []
    n_done = summary.resumed
    if progress:
        progress(n_done, summary.files)
    try:
        for out in _outcomes(layout, settings, todo):
            if out.image_id is not None and out.image_id in first_source:
                out = _Outcome(
                    out.item,
                    reason="duplicate",
                    detail=f"same bytes as image {out.image_id[:16]}... from {first_source[out.image_id]}",
                )
            if out.image_id is None:
                failures.append(_failure_row(out, batch))
            else:
                first_source[out.image_id] = out.item
                images.append(_image_row(out, batch))
            n_done += 1
            if len(images) + len(failures) >= settings.chunk_size:
                staging.write_chunk(images, failures)
                images, failures = [], []
            if progress:
                progress(n_done, summary.files)
    except StorageError as err:
        with contextlib.suppress(OSError):  # keep what this run finished, if there is room for it
            staging.write_chunk(images, failures)
        kept = len(staging.done_items())
        raise StorageError(f"{err} ({kept} of {summary.files} files of {batch} are kept; rerun to resume)") from None
    if images or failures or not staging.chunk_ids():
        staging.write_chunk(images, failures)

    # The partition's tables appear only now, whole; the failures file goes last, so a crash
    # between the two leaves staging in place and the rerun simply writes both again.
    all_images, all_failures = staging.read("images"), staging.read("failures")
    tables.write_partition(layout, "images", batch, all_images)
    tables.write_partition(layout, "failures", failures_partition(batch), all_failures)
    staging.remove()

    summary.images = all_images.num_rows
    summary.failures = Counter(all_failures.column("reason").to_pylist())
    return summary


def _failure_row(out: _Outcome, batch: str) -> dict:
    return dict(item=out.item, stage=STAGE, reason=out.reason, detail=out.detail, partition=batch, at=_now())


def _image_row(out: _Outcome, batch: str) -> dict:
    return dict(
        image_id=out.image_id,
        path=out.path,
        source_uri=out.item,
        batch=batch,
        bytes=out.size,
        ingested_at=_now(),
        **out.info,
    )


def failures_partition(batch: str) -> str:
    """The `failures` table holds every stage's rejects: one file per stage and partition."""
    return f"{STAGE}__{batch}"


def batch_is_ingested(layout: Layout, batch: str) -> bool:
    return tables.has_partition(layout, "failures", failures_partition(batch)) and not (
        layout.staging_dir(STAGE, batch).exists()
    )
