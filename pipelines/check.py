"""`ffe check`: does the work folder hold what Dagster's records say was built?

Dagster records a partition as materialised once; a file deleted or cut afterwards (a cleanup
script, a full disk, a copy that stopped half way) is not its business. This module compares the
records with the folder and names every difference, as (asset, partition) so that `ffe build`
rebuilds exactly those from upstream (`broken_partitions`), `ffe status` flags them and `ffe check
--repair` runs that build:

- a table partition an asset wrote that is gone, or that Parquet cannot read (its footer);
- a crop of a `faces` row that is gone or cut short (its PNG's last chunk), or an original of an
  `images` row that is gone or not of the size `images` records: the batch's `faces` (or
  `raw_images`, when its input file is still there to ingest again) is rebuilt, and what a rebuilt
  partition feeds with it;
- a file of a finished release that is gone or not of the size its manifest records (the bytes
  themselves: `ffe release verify`).

Cheap by design: footers and stat calls, no hashing; a file changed in place at the same size is
not seen here (`ffe release verify` hashes a release's files).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import dagster as dg

from storage import tables
from storage.errors import StorageError
from storage.layout import Layout
from storage.releases.build import read_manifest
from storage.releases.plan import release_dir

# Assets that write one partition of each of these tables per batch, every time they run:
# (table, the partition's name from the batch's). Failures too: a lost failures partition would
# hide why files were refused, and a lost `imported_labels` the labels a person gave.
_OWN = ("{batch}",)
PER_BATCH = {
    "raw_images": (("images", _OWN), ("imported_labels", _OWN), ("failures", ("raw_images", "{batch}")),
                   ("failures", ("labels", "{batch}"))),
    "faces": (("faces", _OWN), ("failures", ("faces", "{batch}"))),
    "face_embeddings": (("face_embeddings", _OWN), ("failures", ("face_embeddings", "{batch}"))),
    "prelabels": (("prelabels", _OWN), ("failures", ("prelabels", "{batch}"))),
}  # fmt: skip


def _partition(name: tuple[str, ...], batch: str) -> str:
    return batch if name == _OWN else tables.failures_partition(name[0], batch)


def _owner(layout: Layout, path: Path) -> tuple[str, str | None]:
    """(the asset that writes table file `path`, its batch or None)."""
    table, stem = path.parent.name, path.stem
    for asset, files in PER_BATCH.items():
        for t, name in files:
            batch = stem if name == _OWN else stem.removeprefix(tables.failures_partition(name[0], ""))
            if t == table and _partition(name, batch) == stem:
                return asset, batch
    return next((a for a, t in ACROSS.items() if t == table), table), None
# Assets across batches that write `<table>/all.parquet` every time they run.
ACROSS = {"affect_scores": "affect_scores"}
RELEASE_ASSET = "ffe_release"


@dataclass(frozen=True)
class Problem:
    asset: str  # what rebuilds it
    partition: str | None  # a batch, a release version, or None (across batches)
    item: str  # the file, relative to the work folder
    reason: str  # missing | unreadable | wrong_size | crop_missing | crop_cut | original_missing | original_wrong_size
    more: tuple[str, ...] = ()  # further files of the same partition and reason

    SHOWN = 5  # of `more`, named in a line; --json lists all

    def describe(self) -> str:
        where = f"{self.asset} {self.partition}" if self.partition else self.asset
        line = f"{where}: {self.item} {self.reason.replace('_', ' ')}"
        if self.more:
            rest = f", and {len(self.more) - self.SHOWN} more (`ffe check --json` lists all)"
            line += f"; so are {', '.join(self.more[: self.SHOWN])}{rest if len(self.more) > self.SHOWN else ''}"
        return line


def _materialized(instance: dg.DagsterInstance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def check(layout: Layout, instance: dg.DagsterInstance) -> list[Problem]:
    """Every difference between Dagster's records and the work folder (module doc)."""
    problems: list[Problem] = []
    for asset, files in PER_BATCH.items():
        for batch in sorted(_materialized(instance, asset)):
            for table, name in files:
                path = layout.table_file(table, _partition(name, batch))
                if reason := tables.parquet_problem(path):
                    problems.append(Problem(asset, batch, layout.relative(path), reason))
    for asset, table in ACROSS.items():
        if instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None:
            path = layout.table_file(table, "all")
            if reason := tables.parquet_problem(path):
                problems.append(Problem(asset, None, layout.relative(path), reason))
    for table in sorted(p.name for p in layout.tables.glob("*") if p.is_dir()):  # any other file that is cut
        for path in sorted(layout.table_dir(table).glob("*.parquet")):
            if tables.parquet_problem(path) and not any(p.item == layout.relative(path) for p in problems):
                owner, batch = _owner(layout, path)
                problems.append(Problem(owner, batch, layout.relative(path), "unreadable"))
    problems += _file_problems(layout, {p.partition for p in problems if p.asset == "faces"},
                               {p.partition for p in problems if p.asset == "raw_images"})  # fmt: skip
    problems += _release_problems(layout, instance)
    problems += _bench_problems(layout, instance)
    return problems


def _bench_problems(layout: Layout, instance: dg.DagsterInstance) -> list[Problem]:
    """The leaderboard rows (`bench_runs/<run id>`) each release's latest bench recorded, gone or
    cut: rebuilt by benching again (the same tasks, judge and weights give the same row)."""
    problems, key = [], dg.AssetKey("ffe_bench")
    for version in sorted(_materialized(instance, "ffe_bench")):
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[version]), limit=1, ascending=False
        ).records or (None,)
        metadata = record.asset_materialization.metadata if record and record.asset_materialization else {}
        for name in ("run_id", "baseline_run_id", "base_run_id"):
            if (run_id := getattr(metadata.get(name), "value", None)) is None:
                continue  # skipped (nothing to bench), or benched before the baseline was recorded here
            path = layout.table_file("bench_runs", str(run_id))
            if reason := tables.parquet_problem(path):
                problems.append(Problem("ffe_bench", version, layout.relative(path), reason))
    return problems


def _file_problems(layout: Layout, faces_broken: set[str | None], images_broken: set[str | None]) -> list[Problem]:
    """Crops and originals the tables name that are gone, and originals cut or grown (their size
    is in `images`): one problem per batch and kind, naming the first. A batch whose `faces` table
    is itself broken has its crops made again anyway; its originals are still looked at."""
    problems = []
    for batch in tables.partitions(layout, "faces"):
        if batch in faces_broken or tables.parquet_problem(layout.table_file("faces", batch)):
            continue
        gone, cut = [], []
        for crop in tables.read_partition(layout, "faces", batch).column("crop_path").to_pylist():
            if not (layout.root / crop).is_file():
                gone.append(crop)
            elif not _png_complete(layout.root / crop):
                cut.append(crop)
        problems += [_first_of("faces", batch, damaged, reason)
                     for damaged, reason in ((gone, "crop_missing"), (cut, "crop_cut")) if damaged]  # fmt: skip
    for batch in tables.partitions(layout, "images"):
        if batch in images_broken or tables.parquet_problem(layout.table_file("images", batch)):
            continue
        gone, cut = [], []
        for r in tables.read_partition(layout, "images", batch).select(["path", "source_uri", "bytes"]).to_pylist():
            path = layout.root / r["path"]
            if not path.is_file():
                gone.append(r)
            elif path.stat().st_size != r["bytes"]:
                cut.append(r)
        for damaged, reason in ((gone, "original_missing"), (cut, "original_wrong_size")):
            if damaged:
                # Ingest copies originals from the input folder (a copy of the wrong size is written
                # again): rebuildable while the inputs are there.
                where = "raw_images" if all(Path(r["source_uri"]).is_file() or (layout.root / r["source_uri"]).is_file()
                                            for r in damaged) else "inputs gone"  # fmt: skip
                problems.append(_first_of(where, batch, [r["path"] for r in damaged], reason))
    return problems


def _first_of(asset: str, batch: str, items: list[str], reason: str) -> Problem:
    """One problem for a batch's files of one kind: the first, and the others in `more`."""
    return Problem(asset, batch, items[0], reason, tuple(items[1:]))


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # a PNG's last chunk: what a cut file lacks


def _png_complete(path: Path) -> bool:
    """Whether a crop (a PNG, as `faces` writes them) still ends with its IEND chunk: one small read
    at the end, so a file cut short is found without decoding it."""
    if path.suffix.lower() != ".png":
        return True
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - len(PNG_END)))
            return f.read() == PNG_END
    except OSError:
        return False


def _release_problems(layout: Layout, instance: dg.DagsterInstance) -> list[Problem]:
    problems = []
    for version in sorted(_materialized(instance, RELEASE_ASSET)):
        folder = release_dir(layout, version)
        try:
            manifest = read_manifest(layout, version)
        except StorageError:
            problems.append(Problem(RELEASE_ASSET, version, layout.relative(folder / "manifest.json"), "unreadable"))
            continue
        if manifest is None:
            problems.append(Problem(RELEASE_ASSET, version, layout.relative(folder / "manifest.json"), "missing"))
            continue
        expected = {name: f["bytes"] for name, f in (manifest.get("files") or {}).items()}
        for split in (manifest.get("shards") or {}).values():
            expected.update({f"shards/{s['name']}": s["bytes"] for s in split})
        for name, size in sorted(expected.items()):
            path = folder / name
            reason = "missing" if not path.is_file() else "wrong_size" if path.stat().st_size != size else None
            if reason:
                problems.append(Problem(RELEASE_ASSET, version, layout.relative(path), reason))
    return problems


def set_aside(layout: Layout, problems: list[Problem], echo=print) -> list[Problem]:
    """Clear the way for a rebuild: move each unreadable table file to `<name>.parquet.unreadable`
    (kept for a look, read by nothing: every reader globs `*.parquet`), and the manifest of each
    damaged release to `manifest.json.damaged`, so that `ffe_release` and `ffe_shards` build the
    release again from its plan (to the same bytes). Returns `problems`."""
    for p in problems:
        if p.reason == "unreadable" and p.asset != RELEASE_ASSET:  # a manifest: moved below
            path = layout.root / p.item
            if path.is_file():
                path.replace(path.with_name(path.name + ".unreadable"))
                echo(f"moved aside {p.item} (unreadable) to {p.item}.unreadable")
    for version in sorted({p.partition for p in problems if p.asset == RELEASE_ASSET and p.partition}):
        manifest = release_dir(layout, version) / "manifest.json"
        if manifest.is_file():
            manifest.replace(manifest.with_name("manifest.json.damaged"))
            echo(f"release {version} is damaged: rebuilding it from its plan")
    return problems


def broken_partitions(problems: list[Problem]) -> dict[tuple[str, str | None], str]:
    """(asset, partition) -> the first problem's description, for what `ffe build` can rebuild."""
    out: dict[tuple[str, str | None], str] = {}
    for p in problems:
        if p.asset != "inputs gone":
            out.setdefault((p.asset, p.partition), p.describe())
    return out


def as_rows(problems: list[Problem]) -> list[dict]:
    return [asdict(p) for p in problems]
