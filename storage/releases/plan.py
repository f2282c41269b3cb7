"""Release planning: which faces a release holds, in which split, under which version.

The version is a short hash of the release config and of every face's (face_id, identity_id,
domain, rounded scores), in face_id order: the same inputs give the same version, so planning
twice is free and a rebuild writes the same bytes. A plan is written once under
`releases/<version>/plan.parquet` (+ `plan.json`); building the release reads only the plan, so
what a version holds cannot drift if the tables change while it is being built.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage import catalog, tables
from storage.atomic import atomic_open, atomic_write_text
from storage.blobs import file_digest
from storage.errors import StorageError
from storage.layout import Layout
from storage.releases.config import SPLITS, ReleaseConfig
from storage.schemas import CATEGORIES, RELEASE_FACES

RELEASE_FORMAT = 2  # bump when the bytes a config produces change: old versions stay distinct
VERSION_PREFIX = "r"


def release_eligible(layout: Layout) -> set[str]:
    """Faces that can enter a release: assigned to an identity (so they passed quality) and not a
    copy of another face."""
    rows = tables.read_table(layout, "identities", columns=["face_id", "duplicate_of"]).to_pylist()
    return {r["face_id"] for r in rows if r["duplicate_of"] is None}


def split_of(identity_id: str, config: ReleaseConfig) -> str:
    """bench / val / train by a uniform hash of the identity: stable as data grows."""
    digest = hashlib.sha256(f"{config.split_salt}:{identity_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < config.bench_fraction:
        return "bench"
    return "val" if u < config.bench_fraction + config.val_fraction else "train"


@dataclass
class Plan:
    version: str
    config: ReleaseConfig
    faces: pa.Table  # RELEASE_FACES rows, crop hashes still null, sorted by face_id
    missing_crops: list[dict] = field(default_factory=list)  # {face_id, crop_path}
    snapshot: dict = field(default_factory=dict)  # the annotation state the plan came from

    def counts(self) -> dict[str, int]:
        splits = self.faces.column("split").to_pylist()
        ids = self.faces.column("identity_id").to_pylist()
        out = {"faces": len(splits), "identities": len(set(ids))}
        for s in SPLITS:
            out[f"{s}_faces"] = splits.count(s)
        return out


_INPUT_SQL = """
SELECT a.face_id, i.identity_id, f.domain, f.batch, f.image_id, img.source_uri, f.crop_path,
       {scores}, a.source, a.n_annotators, a.agreement, a.model_version
FROM affect_scores a
JOIN identities i USING (face_id)
JOIN faces f USING (face_id)
LEFT JOIN images img USING (image_id)
WHERE i.duplicate_of IS NULL AND f.quality_ok
ORDER BY a.face_id
"""


def _inputs(layout: Layout) -> pa.Table:
    with catalog.connect(layout, persist=False) as con:
        return con.sql(_INPUT_SQL.format(scores=", ".join(f'a."{c}"' for c in CATEGORIES))).to_arrow_table()


def _version(config: ReleaseConfig, face_ids, identity_ids, domains, scores: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": RELEASE_FORMAT, "config": config.to_json()}, sort_keys=True).encode())
    for fid, iid, dom, row in zip(face_ids, identity_ids, domains, scores.tolist(), strict=True):
        h.update(f"\n{fid}\t{iid}\t{dom}\t{json.dumps(row)}".encode())
    return VERSION_PREFIX + h.hexdigest()[:12]


def _snapshot(layout: Layout, rows: pa.Table) -> dict:
    """What the labels came from: the affect_scores file, its sources and models."""
    path = layout.table_file("affect_scores", "all")
    sha = file_digest(path)[0] if path.is_file() else None
    return {
        "affect_scores_sha256": sha,
        "by_source": {s: rows.column("source").to_pylist().count(s) for s in ("human", "model")},
        "model_versions": sorted(set(rows.column("model_version").to_pylist())),
        "batches": sorted(set(rows.column("batch").to_pylist())),
    }


def _provenance_by_batch(layout: Layout) -> dict[str, str]:
    """batch -> real | generated, from the batch manifests (curation/batches.py writes them)."""
    found = {}
    for path in layout.batches.glob("batch-*.json") if layout.batches.is_dir() else ():
        found[path.stem] = json.loads(path.read_text()).get("provenance", "real")
    return found


def _kept_by_provenance(rows: pa.Table, config: ReleaseConfig) -> list[bool]:
    """The configured provenances; and per identity at most max_generated_per_real generated faces
    per real one, the same ones whatever else changes (lowest hash of face_id first)."""
    faces, ids, prov = (rows.column(c).to_pylist() for c in ("face_id", "identity_id", "provenance"))
    keep = [p in config.provenances for p in prov]
    if not config.max_generated_per_real:
        return keep
    real = Counter(i for i, p, k in zip(ids, prov, keep, strict=True) if k and p == "real")
    generated = sorted((hashlib.sha256(f.encode()).hexdigest(), n) for n, (f, p, k) in
                       enumerate(zip(faces, prov, keep, strict=True)) if k and p == "generated")  # fmt: skip
    taken: Counter = Counter()
    for _, n in generated:
        if taken[ids[n]] < int(config.max_generated_per_real * real[ids[n]]):
            taken[ids[n]] += 1
        else:
            keep[n] = False
    return keep


def plan_release(layout: Layout, config: ReleaseConfig) -> Plan:
    """The release the current tables give under `config` (nothing is written)."""
    rows = _inputs(layout)
    counts = pc.value_counts(rows.column("face_id")).to_pylist()
    if twice := sorted(c["values"] for c in counts if c["counts"] > 1):
        raise StorageError(
            f"{len(twice)} face_id(s) appear more than once across affect_scores, identities and faces "
            f"(e.g. {', '.join(twice[:3])}): a table holds a face twice; rebuild that stage"
        )
    rows = rows.filter(pc.is_in(rows.column("domain"), pa.array(list(config.domains))))
    provenance_of = _provenance_by_batch(layout)
    rows = rows.append_column("provenance", pa.array([provenance_of.get(b, "real") for b in
                                                      rows.column("batch").to_pylist()], pa.string()))  # fmt: skip
    rows = rows.filter(pa.array(_kept_by_provenance(rows, config), pa.bool_()))
    exists = np.array([(layout.root / p).is_file() for p in rows.column("crop_path").to_pylist()], dtype=bool)
    missing = [
        {"face_id": f, "crop_path": p}
        for f, p, ok in zip(rows.column("face_id").to_pylist(), rows.column("crop_path").to_pylist(), exists,
                            strict=True) if not ok
    ]  # fmt: skip
    if missing and config.missing_crop == "fail":
        shown = ", ".join(f"{m['face_id']} ({m['crop_path']})" for m in missing[:5])
        raise StorageError(
            f"{len(missing)} face(s) have no crop file: {shown}; re-run curation for their batches, "
            "or plan with missing_crop='skip' to leave them out"
        )
    rows = rows.filter(pa.array(exists))
    scores = np.zeros((rows.num_rows, len(CATEGORIES)))
    for k, c in enumerate(CATEGORIES):
        scores[:, k] = rows.column(c).to_numpy(zero_copy_only=False)
    scores = np.round(scores, config.score_decimals)
    ids = rows.column("identity_id").to_pylist()
    version = _version(config, rows.column("face_id").to_pylist(), ids, rows.column("domain").to_pylist(), scores)
    split_by_id = {i: split_of(i, config) for i in set(ids)}
    dominant = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=int)
    intensity = scores.max(axis=1) if len(scores) else np.zeros(0)
    faces = pa.table(
        {
            "face_id": rows.column("face_id"),
            "identity_id": rows.column("identity_id"),
            "split": pa.array([split_by_id[i] for i in ids], pa.string()),
            "domain": rows.column("domain"),
            "batch": rows.column("batch"),
            "provenance": rows.column("provenance"),
            "image_id": rows.column("image_id"),
            "source_uri": rows.column("source_uri"),
            "crop_path": rows.column("crop_path"),
            "image": pa.array([f"images/{f}.png" for f in rows.column("face_id").to_pylist()], pa.string()),
            **{c: pa.array(scores[:, k]) for k, c in enumerate(CATEGORIES)},
            "category": pa.array(
                [
                    CATEGORIES[d] if s >= config.min_target_score else None
                    for d, s in zip(dominant, intensity, strict=True)
                ],
                pa.string(),
            ),
            "intensity": pa.array(intensity, pa.float64()),
            "intensity_bin": pa.array([config.bin_of(s) for s in intensity], pa.int8()),
            "source": rows.column("source"),
            "n_annotators": rows.column("n_annotators"),
            "agreement": rows.column("agreement"),
            "model_version": rows.column("model_version"),
            "crop_sha256": pa.nulls(rows.num_rows, pa.string()),
            "crop_bytes": pa.nulls(rows.num_rows, pa.int64()),
        }
    ).cast(RELEASE_FACES)
    return Plan(version, config, faces, missing, _snapshot(layout, rows))


# --- where a release lives --------------------------------------------------------------------


def release_dir(layout: Layout, version: str):
    return layout.releases / version


def write_plan(layout: Layout, plan: Plan, extra_snapshot: dict | None = None) -> bool:
    """Write the plan of a version not planned before; False when it already exists (same
    inputs, same version: nothing to do)."""
    folder = release_dir(layout, plan.version)
    if (folder / "plan.json").is_file():
        return False
    with atomic_open(folder / "plan.parquet") as f:
        pq.write_table(plan.faces, f, compression="zstd")
    atomic_write_text(
        folder / "plan.json",
        json.dumps(
            {
                "version": plan.version,
                "format": RELEASE_FORMAT,
                "planned_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "config": plan.config.to_json(),
                "counts": plan.counts(),
                "annotation_snapshot": {**plan.snapshot, **(extra_snapshot or {})},
                "missing_crops": plan.missing_crops,
            },
            indent=1,
        ),
    )  # plan.json last: a plan counts once it exists
    return True


def read_plan(layout: Layout, version: str) -> tuple[dict, pa.Table]:
    folder = release_dir(layout, version)
    try:
        info = json.loads((folder / "plan.json").read_text())
    except FileNotFoundError:
        raise StorageError(f"release {version} was never planned (no {folder / 'plan.json'})") from None
    return info, pq.read_table(folder / "plan.parquet", schema=RELEASE_FACES)


def planned_versions(layout: Layout) -> list[str]:
    """Every planned version, oldest first."""
    if not layout.releases.is_dir():
        return []
    found = []
    for p in layout.releases.glob("*/plan.json"):
        found.append((json.loads(p.read_text())["planned_at"], p.parent.name))
    return [v for _, v in sorted(found)]
