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

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path

from curation.batches import InputFile, link_outside, load_manifest
from curation.parallel import ordered_map, worker_count
from curation.probe import Rejected, probe
from storage import tables
from storage.atomic import sweep_temp_files
from storage.blobs import content_id, put_image
from storage.errors import StorageError
from storage.failures import Isolated, fail_if_all_failed
from storage.layout import Layout
from storage.staging import ChunkWriter, Staging

STAGE = "raw_images"
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "HEIF", "AVIF")


@dataclass(frozen=True)
class IngestSettings:
    max_megapixels: float = 50.0  # larger images are refused undecoded (decompression bombs)
    min_side: int = 32  # smaller images cannot hold a usable face
    formats: tuple[str, ...] = DEFAULT_FORMATS  # PIL format names accepted
    chunk_size: int = 256  # files per staged chunk: the most a crash can cost
    workers: int = 0  # processes decoding in parallel; 0 = one per core for big enough batches
    fsync_images: bool = False  # flush every stored original to disk (power-loss safety, slower)
    follow_links: bool = False  # read files through links that leave the input folder (input.follow_links)


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


def _ingest_one(layout: Layout, settings: IngestSettings, root: Path, file: InputFile) -> _Outcome:
    """Runs in a worker: one read, one hash, one decode, one (idempotent) store. A file whose link
    leaves the input folder `root` is not read unless `settings.follow_links`."""
    path = file.located(layout)
    if not settings.follow_links and (target := link_outside(path, root)):
        return _Outcome(file.path, reason="link_outside_input",
                        detail=f"a link to {target}, outside the input folder {root}: not read "
                        "(setting input.follow_links: true reads such links)")  # fmt: skip
    try:
        with open(path, "rb") as f:
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


def ingest_batch(
    layout: Layout,
    batch: str,
    settings: IngestSettings = IngestSettings(),
    progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Ingest every file of `batch`'s manifest; write its `images` and `failures` partitions."""
    manifest = load_manifest(layout, batch)
    staging = Staging(layout, STAGE, batch, ["images", "failures"])
    sweep_temp_files(layout.images_temp)  # originals a killed run was writing (their writers are gone)
    staged_images = staging.read("images")
    done = set(staged_images.column("source_uri").to_pylist()) | set(
        staging.read("failures").column("item").to_pylist()
    )
    todo = [f for f in manifest.files if f.path not in done]
    summary = IngestSummary(batch=batch, files=len(manifest.files), resumed=len(manifest.files) - len(todo))

    # Content already ingested, by other batches or by this one's staged chunks: first copy wins.
    earlier = tables.read_table(layout, "images", columns=["image_id", "source_uri"], exclude=[batch])
    first_source: dict[str, str] = {}
    for t in (earlier, staged_images):
        first_source.update(zip(t.column("image_id").to_pylist(), t.column("source_uri").to_pylist(), strict=True))

    writer = ChunkWriter(staging, settings.chunk_size, total=summary.files, done=summary.resumed, progress=progress)
    root = layout.root / manifest.input_dir  # an absolute input_dir is kept as it is
    one = Isolated(functools.partial(_ingest_one, layout, settings, root), STAGE, batch, attrgetter("path"))
    try:
        with writer.finishing():
            for out, failed in ordered_map(one, todo, worker_count(settings.workers, len(todo), 128), chunksize=8):
                if failed is not None:  # one file's unexpected problem: recorded, the rest go on
                    writer.add("failures", failed)
                    writer.item_done()
                    continue
                if out.image_id is not None and out.image_id in first_source:
                    out = _Outcome(
                        out.item,
                        reason="duplicate",
                        detail=f"same bytes as image {out.image_id[:16]}... from {first_source[out.image_id]}",
                    )
                if out.image_id is None:
                    writer.add("failures", _failure_row(out, batch))
                else:
                    first_source[out.image_id] = out.item
                    writer.add("images", _image_row(out, batch))
                writer.item_done()
    except StorageError as err:
        kept = staging.read("images").num_rows + staging.read("failures").num_rows
        raise StorageError(f"{err} ({kept} of {summary.files} files of {batch} are kept; rerun to resume)") from None

    # The partition's tables appear only now, whole; failures last (see batch_is_ingested).
    written = staging.publish({"images": batch, "failures": failures_partition(batch)})
    summary.images = written["images"].num_rows
    summary.failures = Counter(written["failures"].column("reason").to_pylist())
    fail_if_all_failed(STAGE, batch, summary.files, written["failures"].to_pylist())
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
    return tables.failures_partition(STAGE, batch)


def batch_is_ingested(layout: Layout, batch: str) -> bool:
    return tables.has_partition(layout, "failures", failures_partition(batch)) and not (
        layout.staging_dir(STAGE, batch).exists()
    )
