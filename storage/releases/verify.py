"""Re-read a release against its manifest: every file's sha256, every shard's members.

First every path the manifest lists (files and shards; then index.parquet's shard names) is checked
to stay inside the release folder (`storage.releases.paths`): one that leaves it is a problem
naming the entry, and that file is never opened.

Each shard is read once, as a stream: its sha256 and size against the manifest, every member name
checked (absolute or `..` names refuse the shard), its samples against index.parquet, each crop's
sha256 against splits.parquet, each sample's json against the faces it holds; then the counts per
split against the manifest. Problems come back as lines that start with the file they concern.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

from storage.blobs import file_digest
from storage.errors import StorageError
from storage.layout import Layout
from storage.releases.build import read_manifest
from storage.releases.config import SPLITS
from storage.releases.paths import release_path
from storage.releases.plan import release_dir
from storage.releases.shards import INDEX, STATS
from storage.schemas import RELEASE_FACES, SHARD_INDEX
from storage.tarstream import TruncatedTarError, UnsafeTarError, iter_samples


class _HashingReader:
    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.sha.update(data)
        self.n += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _verify_shard(
    path: Path, record: dict, expected: list[tuple[str, list[str]]], crop_sha: dict[str, str]
) -> list[str]:
    name = record["name"]
    if not path.is_file():
        return [f"{name}: missing"]
    problems: list[str] = []
    size = path.stat().st_size
    if size != record["bytes"]:
        problems.append(f"{name}: {size} bytes, the manifest says {record['bytes']} (truncated or edited)")
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    with open(path, "rb") as f:
        reader = _HashingReader(f)
        try:
            for key, members in iter_samples(reader, name):
                order.append(key)
                samples[key] = members
        except UnsafeTarError as err:
            return [str(err)]
        except (TruncatedTarError, OSError) as err:
            return problems + [f"{name}: unreadable tar (truncated or corrupt): {err}"]
        reader.drain()
    if reader.sha.hexdigest() != record["sha256"]:
        problems.append(f"{name}: sha256 differs from the manifest (the file was changed after it was written)")
    want_keys = [k for k, _ in expected]
    if order != want_keys:
        problems.append(f"{name}: holds samples {order[:5]}..., index.parquet lists {want_keys[:5]}...")
        return problems
    for key, face_ids in expected:
        members = samples[key]
        try:
            doc = json.loads(members.get("json", b""))
        except ValueError:
            problems.append(f"{name}: {key}.json is missing or not JSON")
            continue
        if doc.get("identity_id") != key or [f["face_id"] for f in doc.get("faces", [])] != face_ids:
            problems.append(f"{name}: {key}.json does not describe the faces index.parquet lists")
        for face_id in face_ids:
            data = members.get(f"{face_id}.png")
            if data is None:
                problems.append(f"{name}: {key}.{face_id}.png is missing")
            elif hashlib.sha256(data).hexdigest() != crop_sha[face_id]:
                problems.append(f"{name}: {key}.{face_id}.png differs from the crop splits.parquet hashes")
    return problems


def verify_release(layout: Layout, version: str, *, workers: int = 4,
                   progress: Callable[[int, int], None] | None = None) -> list[str]:  # fmt: skip
    """Every problem found, one line each; empty when the release is intact."""
    folder = release_dir(layout, version)
    manifest = read_manifest(layout, version)
    if manifest is None:
        return [f"{version}: no manifest.json (the release was never built)"]
    if not manifest["complete"]:
        return [f"{version}: manifest.json is not complete (the shards were never finished)"]
    records = [r for s in SPLITS for r in manifest["shards"][s]]
    # Every path the manifest lists is checked before any file is opened: one that leaves the
    # release folder (absolute, `..`, a link out) is a problem, and nothing of the release is read.
    problems: list[str] = []

    def inside(name: object, **where) -> Path | None:
        try:
            return release_path(folder, name, **where)
        except StorageError as err:
            problems.append(str(err))
            return None

    files = [(name, meta, inside(name)) for name, meta in manifest["files"].items()]
    shards = [(rec, inside(rec["name"], under="shards")) for rec in records]
    if problems:
        return problems
    for name, meta, path in files:
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif file_digest(path) != (meta["sha256"], meta["bytes"]):
            problems.append(f"{name}: sha256 or size differs from the manifest")
    if problems:
        return problems  # the shards are checked against these files: stop here
    splits, index = inside("splits.parquet"), inside(f"shards/{INDEX}")
    if problems:
        return problems
    faces = pq.read_table(splits, schema=RELEASE_FACES)
    crop_sha = dict(zip(faces.column("face_id").to_pylist(), faces.column("crop_sha256").to_pylist(), strict=True))
    expected: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for r in pq.read_table(index, schema=SHARD_INDEX).to_pylist():
        expected[r["shard"]].append((r["key"], r["face_ids"]))
    for name in sorted(set(expected) - {rec["name"] for rec in records}):  # an index mismatch too, named first
        inside(name, listed_in=f"shards/{INDEX}", under="shards")

    def one(shard: tuple[dict, Path]) -> list[str]:
        rec, path = shard
        return _verify_shard(path, rec, expected[rec["name"]], crop_sha)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, found in enumerate(pool.map(one, shards), 1):
            problems += found
            if progress:
                progress(i, len(records))

    in_shards = Counter(f for keys in expected.values() for _, ids in keys for f in ids)
    if twice := sorted(f for f, n in in_shards.items() if n > 1):
        problems.append(f"index.parquet: face(s) in more than one sample: {twice[:5]}")
    if missing := sorted(set(crop_sha) - set(in_shards)):
        problems.append(f"index.parquet: face(s) of splits.parquet in no shard: {missing[:5]}")
    for split in SPLITS:
        want = manifest["counts"]["splits"][split]
        got = {"faces": sum(r["faces"] for r in manifest["shards"][split]),
               "identities": sum(r["samples"] for r in manifest["shards"][split])}  # fmt: skip
        if got != want:
            problems.append(f"manifest.json: {split} shards hold {got}, the counts say {want}")
    return problems


RUN_RECORDS = {f"shards/{STATS}"}  # how a build went (times, rates), not what it made


def rebuild_matches(layout: Layout, version: str) -> list[str]:
    """Build `version` again from its plan in a scratch folder and compare every file's sha256 with
    the manifest: what differs is listed (empty: the release is reproducible to the byte)."""
    from storage.releases.build import build_release
    from storage.releases.shards import write_shards

    manifest = read_manifest(layout, version)
    if manifest is None or not manifest["complete"]:
        return [f"{version}: not built completely, nothing to compare"]
    scratch = Layout(layout.staging / f"rebuild-{version}")
    shutil.rmtree(scratch.root, ignore_errors=True)
    try:
        (scratch.root / "releases" / version).mkdir(parents=True)
        (scratch.root / "crops").symlink_to(layout.crops)  # the same crops, read where the plan says
        for name in ("plan.json", "plan.parquet"):
            shutil.copyfile(release_dir(layout, version) / name, release_dir(scratch, version) / name)
        build_release(scratch, version)
        again = write_shards(scratch, version)
    finally:
        shutil.rmtree(scratch.root, ignore_errors=True)
    rebuilt = {name: meta["sha256"] for name, meta in again["files"].items()}
    problems = [f"{name}: rebuilt with another sha256" for name, meta in manifest["files"].items()
                if name not in RUN_RECORDS and rebuilt.get(name) != meta["sha256"]]  # fmt: skip
    theirs = {r["name"]: r["sha256"] for s in SPLITS for r in again["shards"][s]}
    problems += [f"{r['name']}: rebuilt with another sha256" for s in SPLITS for r in manifest["shards"][s]
                 if theirs.get(r["name"]) != r["sha256"]]  # fmt: skip
    return problems
