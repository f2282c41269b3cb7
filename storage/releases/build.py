"""Build a planned release: images/, splits.parquet, triplets, the dataset card and manifest.json.

Everything here is a function of the plan, so two builds of one version write the same bytes
(manifest.json aside: it records when it was built). `images/` holds each face's crop under its
face_id, hard-linked from the work folder where the file system allows (no extra space) and
copied where it does not, so a release folder is self-contained: move it, tar it, train on it.
The manifest is written last; shards (`storage.releases.shards`) complete it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage import tables
from storage.atomic import atomic_open, atomic_write_text, sweep_temp_files
from storage.blobs import file_digest
from storage.errors import StorageError
from storage.layout import Layout
from storage.releases.config import SPLITS, ReleaseConfig
from storage.releases.paths import release_path
from storage.releases.plan import read_plan, release_dir
from storage.releases.triplets import (
    TRIPLET_SCHEMA,
    Face,
    correlated_pairs,
    identity_triplets,
    jsonl_record,
)
from storage.schemas import CATEGORIES, RELEASE_FACES

STAGE = "ffe_release"
TRIPLET_FILES = {"train": "triplets.jsonl", "val": "triplets_val.jsonl"}  # the bench split never trains
MANIFEST = "manifest.json"

Progress = Callable[[int, int], None]
IMAGE_CHUNK = 256  # images per thread task: a future per image costs more than linking and hashing it


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _collect_images(layout: Layout, folder: Path, faces: pa.Table, workers: int, progress: Progress | None):
    """images/<face_id>.png for every face, and (sha256, bytes) of each, in the plan's order."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    sweep_temp_files(images)  # links a killed run left half made
    pairs = list(zip(faces.column("face_id").to_pylist(), faces.column("crop_path").to_pylist(), strict=True))

    def one(item: tuple[str, str]) -> tuple[str, int]:
        face_id, crop = item
        dst = release_path(folder, f"images/{face_id}.png", listed_in="plan.parquet")
        if not dst.is_file():  # a rerun keeps what it linked before
            src = layout.root / crop
            try:
                _link_or_copy(src, dst)
            except FileNotFoundError:
                raise StorageError(
                    f"crop of face {face_id} ({crop}) vanished after release {folder.name} was planned; "
                    "plan again (release_plan) to release without it"
                ) from None
            except OSError as err:
                raise StorageError(f"cannot write {dst}: {err.strerror or err}") from None
        return file_digest(dst)

    chunks = [pairs[i : i + IMAGE_CHUNK] for i in range(0, len(pairs), IMAGE_CHUNK)]
    out: list[tuple[str, int]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:  # file I/O and hashing release the GIL
        for digests in pool.map(lambda chunk: [one(item) for item in chunk], chunks):
            out += digests
            if progress:
                progress(len(out), len(pairs))
    return out


def faces_of(rows: list[dict]) -> list[Face]:
    return [
        Face(r["face_id"], r["image"], {c: r[c] for c in CATEGORIES}, r["category"], r["intensity"], r["intensity_bin"])
        for r in rows
    ]


def rows_by_identity(faces: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in faces.to_pylist():
        out[r["identity_id"]].append(r)
    return dict(sorted(out.items()))


def release_pairs(
    faces: pa.Table, config: ReleaseConfig
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], np.ndarray]:
    """(configured pairs, pairs found from the train split's score correlations, the matrix)."""
    train = faces.filter(pc.equal(faces.column("split"), "train"))
    scores = np.stack([train.column(c).to_numpy() for c in CATEGORIES], axis=1) if train.num_rows else np.zeros((0, 12))
    found, corr = correlated_pairs(
        scores, config.pairs, extra=config.extra_pairs, min_correlation=config.min_pair_correlation
    )
    return list(config.pairs), found, corr


VALIDATE_FIRST, VALIDATE_EVERY = 1000, 100  # schema checks cost ~0.5 ms a record: all tests check every line


def _write_triplets(folder: Path, faces: pa.Table, pairs, config: ReleaseConfig) -> dict[str, int]:
    """One JSONL per training split. Records come from one function over typed columns, so the
    schema is checked on the first VALIDATE_FIRST records of a file and every VALIDATE_EVERY-th after."""
    validator = jsonschema.Draft202012Validator(TRIPLET_SCHEMA)
    counts = {}
    identities = rows_by_identity(faces)
    for split, name in TRIPLET_FILES.items():
        n = 0
        with atomic_open(folder / name) as f:
            for identity, rows in identities.items():
                if rows[0]["split"] != split:
                    continue
                for t in identity_triplets(identity, faces_of(rows), pairs, max_per_pair=config.max_triplets_per_pair,
                                           seed=config.triplet_seed):  # fmt: skip
                    record = jsonl_record(t, rows[0]["domain"])
                    checked = n < VALIDATE_FIRST or n % VALIDATE_EVERY == 0
                    if checked and (errors := sorted(validator.iter_errors(record), key=str)):
                        raise StorageError(f"triplet of {identity} breaks the JSONL schema: {errors[0].message}")
                    f.write((json.dumps(record, sort_keys=True) + "\n").encode())
                    n += 1
        counts[split] = n
    atomic_write_text(folder / "triplets.schema.json", json.dumps(TRIPLET_SCHEMA, indent=1) + "\n")
    return counts


def _counts(faces: pa.Table, config: ReleaseConfig) -> dict:
    rows = faces.select(["identity_id", "split", "category", "intensity_bin"]).to_pylist()
    by_split = {s: {"faces": 0, "identities": set()} for s in SPLITS}
    bins: dict[str, dict[str, list[int]]] = {s: {} for s in SPLITS}
    for r in rows:
        by_split[r["split"]]["faces"] += 1
        by_split[r["split"]]["identities"].add(r["identity_id"])
        cat = r["category"] or "none"
        bins[r["split"]].setdefault(cat, [0] * config.intensity_bins)[r["intensity_bin"]] += 1
    return {
        "faces": len(rows),
        "identities": len({r["identity_id"] for r in rows}),
        "splits": {s: {"faces": v["faces"], "identities": len(v["identities"])} for s, v in by_split.items()},
        # faces per split, dominant category ("none": below min_target_score) and intensity bin
        "category_bins": {s: dict(sorted(v.items())) for s, v in bins.items()},
    }


def record_missing_crops(layout: Layout, version: str, missing: list[dict]) -> None:
    now = datetime.now(UTC)
    rows = [
        dict(item=m["face_id"], stage=STAGE, reason="missing_crop", detail=f"crop file {m['crop_path']} does not exist",
             partition=version, at=now)
        for m in missing
    ]  # fmt: skip
    tables.write_partition(layout, "failures", tables.failures_partition(STAGE, version), rows)


def read_manifest(layout: Layout, version: str) -> dict | None:
    """A release's manifest; None when it has none (not built). StorageError naming the file when
    it cannot be read as a manifest (cut, overwritten): `ffe check` lists it and `ffe build` moves
    it aside and builds the release again."""
    path = release_dir(layout, version) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StorageError(f"{layout.relative(path)} is damaged ({err}): `ffe build` rebuilds the release") from None
    if not isinstance(manifest, dict) or "version" not in manifest:
        raise StorageError(f"{layout.relative(path)} is damaged (not a release manifest): `ffe build` rebuilds it")
    if why := _shape_problem(manifest):
        raise StorageError(f"{layout.relative(path)} is damaged ({why}): `ffe build` rebuilds the release")
    return manifest


def _shape_problem(manifest: dict) -> str | None:
    """What in a manifest does not have the shape `build_release` writes (an edited or foreign file
    would otherwise fail deep inside a reader with a bare AttributeError), or None."""
    shapes = {"version": str, "complete": bool, "counts": dict, "files": dict, "shards": dict, "config": dict}
    for key, kind in shapes.items():
        if manifest.get(key) is not None and not isinstance(manifest[key], kind):  # None: not written yet
            return f"its {key!r} is a {type(manifest[key]).__name__}, not a {kind.__name__}"
    for name, entry in (manifest.get("files") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            return f"its files entry {name!r} has no sha256"
    for split, shards in (manifest.get("shards") or {}).items():
        if not isinstance(shards, list) or not all(isinstance(x, dict) and isinstance(x.get("name"), str)
                                                   for x in shards):  # fmt: skip
            return f"its shards of {split!r} are not a list of named shards"
    return None


def write_manifest(layout: Layout, version: str, manifest: dict) -> None:
    atomic_write_text(release_dir(layout, version) / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def build_release(layout: Layout, version: str, *, workers: int = 8, progress: Progress | None = None) -> dict:
    """Build `version` from its plan; a built one is left as it is. Returns its manifest."""
    if (done := read_manifest(layout, version)) is not None:
        return done
    from storage.releases.card import write_card  # matplotlib: only when a release is built

    info, faces = read_plan(layout, version)
    config = ReleaseConfig.from_json(info["config"])
    folder = release_dir(layout, version)
    for sub in (folder, folder / "plots"):
        sweep_temp_files(sub)
    if info["missing_crops"]:
        record_missing_crops(layout, version, info["missing_crops"])
    digests = _collect_images(layout, folder, faces, workers, progress)
    faces = faces.set_column(
        faces.schema.get_field_index("crop_sha256"), "crop_sha256", pa.array([d for d, _ in digests], pa.string())
    ).set_column(
        faces.schema.get_field_index("crop_bytes"), "crop_bytes", pa.array([n for _, n in digests], pa.int64())
    )
    faces = faces.cast(RELEASE_FACES)
    with atomic_open(folder / "splits.parquet") as f:
        pq.write_table(faces, f, compression="zstd")

    configured, found, corr = release_pairs(faces, config)
    triplets = _write_triplets(folder, faces, configured + found, config)
    manifest = {
        "version": version,
        "format": info["format"],
        "planned_at": info["planned_at"],
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": info["config"],
        "counts": {**_counts(faces, config), "triplets": triplets},
        "pairs": {
            "configured": [list(p) for p in configured],
            "found": [list(p) for p in found],
            "correlation": {
                "categories": list(CATEGORIES),
                "matrix": [[None if not np.isfinite(v) else round(float(v), 4) for v in row] for row in corr],
            },
        },  # fmt: skip
        "annotation_snapshot": info["annotation_snapshot"],
        "missing_crops": len(info["missing_crops"]),
        "images": {"count": faces.num_rows, "sha256": "per face: splits.parquet, column crop_sha256"},
        "shards": None,  # filled in by the shards step
        "complete": False,
    }
    card_files = write_card(folder, manifest, faces)
    names = ["splits.parquet", *TRIPLET_FILES.values(), "triplets.schema.json", *card_files]
    manifest["files"] = {n: dict(zip(("sha256", "bytes"), file_digest(folder / n), strict=True)) for n in names}
    write_manifest(layout, version, manifest)
    return manifest
