"""Expression variants: new faces made from curated ones by an editing model, sent back through
curation like any input.

Most photo collections hold one or two expressions per person; FFE pairs each identity with many
expressions at many intensities, as the paper made it (an editing model turning each source into
variants). For one ingest batch:

1. Sources: its faces that passed quality, belong to an identity and are not duplicates (never a
   generated face: variants are not made of variants).
2. Requests: each source x category x intensity x seed, in that order; each is known by its
   variant key (source, generator and its version, prompt, seed): one already made is skipped, so a
   rerun makes nothing new; `max_variants` caps what one run makes.
3. Each variant is written to `generated/<batch>/<key>.png` (atomically: the file is the progress,
   so a killed run resumes without remaking it), its record to `variants/<batch>`. A request that
   fails (its source's crop is gone, the model raised) goes to `failures` with its reason and the
   run goes on; five failures in a row stop it (a broken model fails every request alike).
4. The folder is registered as a new ingest batch with provenance `generated`: ingest, curation,
   pre-labels and annotation treat it as any batch; `identities` checks each variant against its
   source's identity and rejects one that drifted (curation/identities.py).

The generator is passed in (pixelsmile.generate builds them): this module needs no model code.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from curation.batches import load_manifest, register_new_batch
from storage import tables
from storage.atomic import atomic_write_bytes
from storage.blobs import read_crop
from storage.errors import StorageError
from storage.failures import ItemError
from storage.layout import Layout
from storage.schemas import CATEGORIES


@dataclass(frozen=True)
class GenerationSettings:
    categories: tuple[str, ...] = CATEGORIES
    intensities: tuple[float, ...] = (0.35, 0.7, 1.0)
    seeds: tuple[int, ...] = (0,)
    max_variants: int = 1000  # new variants per run: the budget
    max_sources: int | None = None  # None: every usable face of the batch

    def __post_init__(self):
        if unknown := sorted(set(self.categories) - set(CATEGORIES)):
            raise ValueError(f"generation: unknown categories {unknown}")
        if not self.categories:
            raise ValueError("generation: categories must name at least one expression")
        if not self.seeds or any(not 0 <= s < 2**32 for s in self.seeds):
            raise ValueError(f"generation: seeds must be integers in [0, 2**32), not {list(self.seeds)}")
        if not self.intensities or any(not 0.0 < a <= 1.5 for a in self.intensities):
            raise ValueError(f"generation: intensities must be in (0, 1.5], not {self.intensities}")
        if self.max_variants < 0:
            raise ValueError("generation: max_variants must be >= 0")


@dataclass
class GenerationReport:
    batch: str
    sources: int = 0
    requested: int = 0
    existing: int = 0  # made by an earlier run
    resumed: int = 0  # files a killed run wrote, recorded now
    generated: int = 0
    failed: int = 0  # requests that failed (in `failures`, stage expression_variants): retried next run
    left_for_later: int = 0  # over the budget
    new_batch: str | None = None
    skipped: str | None = None  # why nothing was planned
    per_category: dict[str, int] = field(default_factory=dict)

    def as_metadata(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def variant_key(source_face_id: str, generator, prompt: str, seed: int) -> str:
    """A variant's identity: the same source, generator (and version), prompt and seed make it once."""
    key = json.dumps([source_face_id, generator.name, generator.version, prompt, seed])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def usable_sources(layout: Layout, batch: str) -> list[dict]:
    """Faces of `batch` that passed quality, hold an identity and are no duplicate, with their crop."""
    faces = tables.read_partition(layout, "faces", batch).select(["face_id", "crop_path", "quality_ok"]).to_pylist()
    if not tables.has_partition(layout, "identities", batch):
        return []
    ids = {r["face_id"]: r for r in tables.read_partition(layout, "identities", batch).to_pylist()}
    out = []
    for f in sorted(faces, key=lambda f: f["face_id"]):
        ident = ids.get(f["face_id"])
        if f["quality_ok"] and ident is not None and ident["duplicate_of"] is None:
            out.append({**f, "identity_id": ident["identity_id"]})
    return out


def generate_variants(layout: Layout, batch: str, generator, settings: GenerationSettings = GenerationSettings(),
                      progress: Callable[[int, int], None] | None = None) -> GenerationReport:  # fmt: skip
    """Make the variants of `batch` not made yet (up to the budget) and register them as a batch."""
    report = GenerationReport(batch=batch)
    manifest = load_manifest(layout, batch)
    if manifest.provenance != "real":
        report.skipped = f"{batch} is a {manifest.provenance} batch: variants are made of real faces only"
        return report
    sources = usable_sources(layout, batch)[: settings.max_sources]
    report.sources = len(sources)
    if not sources:
        report.skipped = f"{batch} has no usable face (quality passed, an identity, not a duplicate)"
        return report
    previous = (tables.read_partition(layout, "variants", batch).to_pylist()
                if tables.has_partition(layout, "variants", batch) else [])  # fmt: skip
    made = {r["variant_key"] for r in previous}
    folder = layout.generated / batch
    todo = []
    for src, category, intensity, seed in itertools.product(sources, settings.categories, settings.intensities,
                                                            settings.seeds):  # fmt: skip
        prompt = generator.prompt(category, intensity)
        key = variant_key(src["face_id"], generator, prompt, seed)
        report.requested += 1
        if key in made:
            report.existing += 1
        else:
            todo.append((key, src, category, intensity, seed, prompt))
    report.left_for_later = max(0, len(todo) - settings.max_variants)
    todo = todo[: settings.max_variants]
    rows, failures, crop, failing = [], [], (None, None), 0  # requests come source by source: one read each
    for done, (key, src, category, intensity, seed, prompt) in enumerate(todo, start=1):
        path = folder / f"{key}.png"
        if path.is_file():
            report.resumed += 1  # written by a run that was stopped before recording it
        else:
            item = f"{src['face_id']} {category} {intensity:.2f} seed {seed} ({key})"
            try:
                if crop[0] != src["face_id"]:
                    crop = (src["face_id"], read_crop(layout, src))
                image = generator(crop[1], category, intensity, seed)
            except ItemError as err:  # this source's crop is gone: its requests fail, the rest go on
                failures.append(_failure(item, err.reason, err.detail, batch))
                continue
            except Exception as err:  # the model failed on this request
                failures.append(_failure(item, "generation_error", f"{type(err).__name__}: {err}", batch))
                failing += 1
                if failing >= MAX_FAILING:  # every request fails alike: the model, not the input
                    _record(layout, batch, previous + rows, failures)
                    raise RuntimeError(f"generation stopped after {failing} failed requests in a row; last: "
                                       f"{item}: {type(err).__name__}: {err}") from err  # fmt: skip
                continue
            failing = 0
            buf = io.BytesIO()
            image.convert("RGB").save(buf, "PNG")
            try:
                atomic_write_bytes(path, buf.getvalue(), fsync=False)
            except OSError as err:
                raise StorageError(f"cannot write variant {path}: {err.strerror or err} ({done - 1} of "
                                   f"{len(todo)} written; rerun to resume)") from None  # fmt: skip
            report.generated += 1
        report.per_category[category] = report.per_category.get(category, 0) + 1
        rows.append(dict(variant_key=key, source_face_id=src["face_id"], source_identity_id=src["identity_id"],
                         source_batch=batch, generator=generator.name, generator_version=generator.version,
                         category=category, intensity=float(intensity), prompt=prompt, seed=int(seed),
                         path=layout.relative(path), generated_at=datetime.now(UTC)))  # fmt: skip
        if progress is not None:
            progress(done, len(todo))
    report.failed = len(failures)
    _record(layout, batch, previous + rows, failures)
    if folder.is_dir():
        # Files of earlier runs are known to their batches already: only the new ones register.
        new = register_new_batch(layout, folder, domain=manifest.domain, pre_cropped=True, provenance="generated")
        report.new_batch = new.batch if new else None
    return report


MAX_FAILING = 5  # failed requests in a row that stop a run (a broken model), recorded first
STAGE = "expression_variants"


def _failure(item: str, reason: str, detail: str, batch: str) -> dict:
    return dict(item=item, stage=STAGE, reason=reason, detail=detail, partition=batch, at=datetime.now(UTC))


def _record(layout: Layout, batch: str, rows: list[dict], failures: list[dict]) -> None:
    """The batch's variants (all runs') and this run's failed requests (retried by the next run)."""
    if rows:
        tables.write_partition(layout, "variants", batch, rows)
    tables.write_partition(layout, "failures", tables.failures_partition(STAGE, batch), failures)


def variant_sources(layout: Layout, batch: str) -> dict[str, dict]:
    """For the faces of a generated batch: face_id -> the record of the variant it was found in
    (source face and identity). Empty for other batches."""
    manifest = load_manifest(layout, batch)
    if manifest.provenance != "generated":
        return {}
    by_path = {}
    for part in tables.partitions(layout, "variants"):
        for r in tables.read_partition(layout, "variants", part).to_pylist():
            by_path[str((layout.root / r["path"]).resolve())] = r
    images = tables.read_partition(layout, "images", batch).select(["image_id", "source_uri"]).to_pylist()
    # source_uri is relative to the work folder for files inside it (older batches: absolute).
    record_of = {i["image_id"]: by_path.get(str((layout.root / i["source_uri"]).resolve())) for i in images}
    faces = tables.read_partition(layout, "faces", batch).select(["face_id", "image_id"]).to_pylist()
    return {f["face_id"]: record_of[f["image_id"]] for f in faces if record_of.get(f["image_id"])}
