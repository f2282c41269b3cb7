"""Ingest: input files -> content-addressed originals + the `images` and `failures` tables.

One dynamic partition per ingest batch. The sensor registers a batch when new files appear in the
input folder and requests its run with the batch id as run key, so each batch (and so each file)
is launched once.
"""

# No `from __future__ import annotations` here: Dagster reads the config and resource
# annotations of asset functions at definition time.
import difflib
from collections import Counter
from dataclasses import replace

import dagster as dg
from pydantic import Field, field_validator

from curation.batches import load_manifest, manifests, register_new_batch
from curation.ingest import IngestSettings, batch_is_ingested, failures_partition, ingest_batch
from curation.labels import import_labels
from pipelines.defs.metadata import tidy
from pipelines.defs.writers import one_writer
from pipelines.progress import progress_reporter
from pipelines.resources import FFEStorage
from storage import tables

ingest_batches = dg.DynamicPartitionsDefinition(name="ingest_batches")


_DEFAULTS = IngestSettings()
# What people write for a format, as Pillow names it.
FORMAT_ALIASES = {"JPG": "JPEG", "JPE": "JPEG", "TIF": "TIFF", "HEIC": "HEIF", "J2K": "JPEG2000", "JP2": "JPEG2000"}


def image_formats() -> set[str]:
    """The format names Pillow can open here (its plugins and pillow-heif's), upper case."""
    from PIL import Image

    import curation.imageio  # noqa: F401  (registers HEIF/AVIF when pillow-heif is installed)

    Image.init()
    return set(Image.OPEN) | set(_DEFAULTS.formats)


class IngestConfig(dg.Config):
    """Run config of `raw_images`; defaults come from `IngestSettings`."""

    max_megapixels: float = Field(_DEFAULTS.max_megapixels, gt=0, description="larger images are refused undecoded")
    min_side: int = Field(_DEFAULTS.min_side, ge=1, le=1_000_000, description="images with a shorter side are refused")
    formats: list[str] = Field(list(_DEFAULTS.formats), min_length=1, description="PIL format names accepted")
    chunk_size: int = Field(_DEFAULTS.chunk_size, gt=0, description="files per staged chunk (resume unit)")
    workers: int = Field(_DEFAULTS.workers, ge=0, description="decoding processes; 0 = one per core")
    fsync_images: bool = Field(_DEFAULTS.fsync_images, description="flush each original to disk")

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        """Pillow's names (JPG read as JPEG); an unknown one is refused, naming the nearest: a typo
        would otherwise reject every file of that format as unsupported."""
        known, out = image_formats(), []
        for name in value:
            name = FORMAT_ALIASES.get(name.strip().upper(), name.strip().upper())
            if name not in known:
                near = difflib.get_close_matches(name, sorted(known), n=1)
                raise ValueError(f"{name!r} is not an image format Pillow reads here"
                                 + (f" (did you mean {near[0]}?)" if near else ""))  # fmt: skip
            out.append(name)
        return out

    def settings(self) -> IngestSettings:
        return IngestSettings(
            max_megapixels=self.max_megapixels,
            min_side=self.min_side,
            formats=tuple(self.formats),
            chunk_size=self.chunk_size,
            workers=self.workers,
            fsync_images=self.fsync_images,
        )


EVERY_FILE_ACCOUNTED = "every_file_accounted_for"


@dg.asset(
    partitions_def=ingest_batches,
    group_name="ingest",
    kinds={"parquet", "python"},
    description="Originals stored under their sha256; one `images` row per new content, one "
    "`failures` row per rejected file (reason and detail).",
    check_specs=[
        dg.AssetCheckSpec(
            EVERY_FILE_ACCOUNTED,
            asset="raw_images",
            description="Each file of the batch manifest is in `images` or `failures`, exactly once.",
        )
    ],
)
@one_writer
def raw_images(context: dg.AssetExecutionContext, config: IngestConfig, ffe: FFEStorage) -> dg.MaterializeResult:
    layout, batch = ffe.layout, context.partition_key
    with progress_reporter(context, f"ingest {batch}") as report:
        settings = replace(config.settings(), follow_links=ffe.follow_links)
        summary = ingest_batch(layout, batch, settings, progress=report)
    manifest = load_manifest(layout, batch)
    labels = import_labels(layout, batch, [f.path for f in manifest.label_files], [f.path for f in manifest.files],
                           follow_links=ffe.follow_links)  # fmt: skip
    if manifest.label_files:
        context.log.info(f"{batch}: labels for {labels['labelled_images']} images, {labels['label_problems']} "
                         "label rows unusable (failures, stage labels)")  # fmt: skip
    context.log.info(
        f"{batch}: {summary.images} images, {sum(summary.failures.values())} rejected "
        f"{dict(summary.failures)}" + (f", {summary.resumed} resumed" if summary.resumed else "")
    )
    return dg.MaterializeResult(
        metadata=tidy({**summary.as_metadata(), **labels, "dagster/row_count": summary.images}),
        check_results=[_check_every_file_accounted(ffe, batch)],
    )


def _check_every_file_accounted(ffe: FFEStorage, batch: str) -> dg.AssetCheckResult:
    layout = ffe.layout
    expected = {f.path for f in load_manifest(layout, batch).files}
    images = tables.read_partition(layout, "images", batch).column("source_uri").to_pylist()
    failed = tables.read_partition(layout, "failures", failures_partition(batch)).column("item").to_pylist()
    seen = Counter(images + failed)
    missing = sorted(expected - seen.keys())
    twice = sorted(k for k, n in seen.items() if n > 1)
    unexpected = sorted(seen.keys() - expected)
    return dg.AssetCheckResult(
        check_name=EVERY_FILE_ACCOUNTED,
        passed=not (missing or twice or unexpected),
        metadata={
            "files": len(expected),
            "missing": missing[:20],
            "recorded_twice": twice[:20],
            "not_in_manifest": unexpected[:20],
        },
    )


BATCH_JOB = "batch_job"  # every asset partitioned by ingest batch: see pipelines/definitions.py


@dg.sensor(
    job_name=BATCH_JOB,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers new files of the input folder as an ingest batch and launches it.",
)
def new_input_files(context: dg.SensorEvaluationContext, ffe: FFEStorage) -> dg.SensorResult | dg.SkipReason:
    layout = ffe.layout
    if not ffe.input_path.is_dir():
        return dg.SkipReason(f"input folder {ffe.input_path} does not exist")
    register_new_batch(layout, ffe.input_path, min_age_s=ffe.input_settle_seconds, domain=ffe.domain,
                       pre_cropped=ffe.pre_cropped, whole_images=ffe.whole_images,
                       follow_links=ffe.follow_links)  # fmt: skip
    # Every registered batch becomes a partition (also those that `ffe build` registered), and each
    # one not yet ingested gets a run; its run key stops the daemon from launching it twice.
    known = set(context.instance.get_dynamic_partitions(ingest_batches.name))
    batches = [m.batch for m in manifests(layout)]
    new_partitions = [b for b in batches if b not in known]
    to_ingest = [b for b in batches if not batch_is_ingested(layout, b)]
    if not new_partitions and not to_ingest:
        return dg.SkipReason("no new input files")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=b, run_key=b) for b in to_ingest],
        dynamic_partitions_requests=[ingest_batches.build_add_request(new_partitions)] if new_partitions else [],
    )
