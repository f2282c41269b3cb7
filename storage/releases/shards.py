"""WebDataset shards of a release: one sample per identity, byte-identical across rebuilds.

A sample is `<identity_id>.json` (the identity's faces with their scores) and one
`<identity_id>.<face_id>.png` per face; keys have no dots, so webdataset groups them. Shards are
planned before a byte is written: per split, identities in the order of a hash of their id, packed
until `shard_target_bytes`, with every tar offset known from the member sizes (so
`index.parquet` can point a reader at any sample). Each shard is written into a temp file, then
renamed: no half shard is ever visible. Members carry mtime 0, owner 0/0 without names and mode
0644: nothing of the machine or the moment that wrote them. A record per finished shard (under
staging/) lets a rerun skip it; `_stats.json` is written last, then the manifest is completed.
"""

from __future__ import annotations

import hashlib
import json
import queue
import shutil
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_open, atomic_write_text, sweep_temp_files
from storage.blobs import file_digest
from storage.errors import StorageError
from storage.layout import Layout
from storage.releases.build import read_manifest, rows_by_identity, write_manifest
from storage.releases.config import SPLITS, ReleaseConfig
from storage.releases.paths import release_path
from storage.releases.plan import release_dir
from storage.schemas import CATEGORIES, RELEASE_FACES, SHARD_INDEX
from storage.tarstream import BLOCK

STAGE = "ffe_shards"
RECORD = 20 * BLOCK  # tarfile pads an archive to a multiple of this
STATS = "_stats.json"
INDEX = "index.parquet"

Progress = Callable[[int, int], None]


def member_bytes(size: int) -> int:
    return BLOCK + -(-size // BLOCK) * BLOCK


def tar_bytes(members: int) -> int:
    return -(-(members + 2 * BLOCK) // RECORD) * RECORD  # two zero blocks end the archive


@dataclass
class SampleSpec:
    key: str
    split: str
    face_ids: list[str]
    face_bytes: list[int]
    json: bytes

    @property
    def bytes(self) -> int:
        return member_bytes(len(self.json)) + sum(member_bytes(n) for n in self.face_bytes)


@dataclass
class ShardSpec:
    name: str
    split: str
    samples: list[SampleSpec] = field(default_factory=list)
    members: int = 0  # bytes of the samples' members, headers and padding included

    def add(self, sample: SampleSpec) -> None:
        self.samples.append(sample)
        self.members += sample.bytes

    @property
    def bytes(self) -> int:
        return tar_bytes(self.members)


def sample_json(identity_id: str, rows: list[dict]) -> bytes:
    faces = [
        {
            "face_id": r["face_id"],
            "member": f"{r['face_id']}.png",
            "category": r["category"],
            "intensity": r["intensity"],
            "intensity_bin": r["intensity_bin"],
            "scores": {c: r[c] for c in CATEGORIES},
            "source": r["source"],
            "crop_sha256": r["crop_sha256"],
        }
        for r in rows
    ]
    doc = {"identity_id": identity_id, "split": rows[0]["split"], "domain": rows[0]["domain"], "faces": faces}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _order(identity_id: str) -> str:
    return hashlib.sha256(identity_id.encode()).hexdigest()  # spreads an id range over all shards


def plan_shards(faces: pa.Table, target_bytes: int) -> list[ShardSpec]:
    by_identity = rows_by_identity(faces)
    shards: list[ShardSpec] = []
    for split in SPLITS:
        ids = sorted((i for i, rows in by_identity.items() if rows[0]["split"] == split), key=_order)
        current: ShardSpec | None = None
        for identity in ids:
            rows = by_identity[identity]
            spec = SampleSpec(identity, split, [r["face_id"] for r in rows], [r["crop_bytes"] for r in rows],
                              sample_json(identity, rows))  # fmt: skip
            if current is None or (current.samples and tar_bytes(current.members + spec.bytes) > target_bytes):
                current = ShardSpec(f"{split}-{sum(s.split == split for s in shards):06d}.tar", split)
                shards.append(current)
            current.add(spec)
    return shards


class _HashingWriter:
    """Passes bytes on to a file and hashes them on the way, in a thread of its own: sha256 and
    the write both release the GIL, so hashing overlaps the I/O instead of adding to it."""

    def __init__(self, f):
        self.f, self.n = f, 0
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=256)
        self._thread = threading.Thread(target=self._hash, name="shard-sha256", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (data := self._queue.get()) is not None:
            self._sha.update(data)

    def write(self, data: bytes) -> int:
        self._queue.put(data)
        self.n += len(data)
        return self.f.write(data)

    def close(self) -> str:
        """Stop the hashing thread; the sha256 of everything written."""
        self._queue.put(None)
        self._thread.join()
        return self._sha.hexdigest()


def _sample(spec: ShardSpec, s: SampleSpec, images: Path) -> dict[str, bytes]:
    sample: dict[str, bytes] = {"json": s.json}
    for face_id, size in zip(s.face_ids, s.face_bytes, strict=True):
        data = (images / f"{face_id}.png").read_bytes()
        if len(data) != size:
            raise StorageError(f"{spec.name}: image of {face_id} changed since the release was built "
                               f"({len(data)} bytes, splits.parquet says {size})")  # fmt: skip
        sample[f"{face_id}.png"] = data
    return sample


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def write_shard(spec: ShardSpec, images: Path, dest: Path) -> dict:
    """Write one shard to `dest` (atomically); returns its record.

    The bytes are those `tarfile` writes in ustar format (webdataset's TarWriter too, with our fixed
    metadata): a header block per member, its data, zero padding to 512 bytes; two zero blocks and
    padding to 10 KB at the end. Written directly, because tarfile's stream mode (what TarWriter
    uses) copies each member through 10 KB slices and halves the throughput."""
    try:
        # No fsync per shard: like tarfile and webdataset, we leave write-back to the kernel (an
        # fsync per shard costs a third of the throughput). What a power loss could spoil, the
        # sha256 catches: a rerun re-hashes finished shards before skipping them, and the
        # blocking check re-reads every shard against the manifest.
        with atomic_open(dest, fsync=False) as f:
            out = _HashingWriter(f)
            try:
                for s in spec.samples:
                    sample = _sample(spec, s, images)
                    for ext in sorted(sample):  # webdataset's member order
                        data = sample[ext]
                        out.write(_header(f"{s.key}.{ext}", len(data)) + data + b"\0" * (-len(data) % BLOCK))
                out.write(b"\0" * (tar_bytes(out.n) - out.n))  # end-of-archive blocks and record padding
            finally:
                sha256 = out.close()
    except StorageError:
        raise
    except FileNotFoundError as err:
        raise StorageError(f"{spec.name}: image missing from the release: {err.filename}") from None
    except OSError as err:
        raise StorageError(f"cannot write shard {dest.name}: {err.strerror or err}") from None
    if out.n != spec.bytes:  # the offsets in index.parquet depend on it
        raise StorageError(f"{spec.name}: wrote {out.n} bytes, planned {spec.bytes}")
    faces = sum(len(s.face_ids) for s in spec.samples)
    return {"name": spec.name, "split": spec.split, "samples": len(spec.samples), "faces": faces,
            "bytes": out.n, "sha256": sha256}  # fmt: skip


def index_rows(specs: list[ShardSpec]) -> list[dict]:
    rows = []
    for spec in specs:
        offset = 0
        for s in spec.samples:
            rows.append(dict(shard=spec.name, key=s.key, split=s.split, face_ids=s.face_ids, byte_offset=offset,
                             bytes=s.bytes))  # fmt: skip
            offset += s.bytes
    return rows


def write_shards(layout: Layout, version: str, *, workers: int = 4, progress: Progress | None = None) -> dict:
    """Write the shards of a built release that are not written yet, then complete its manifest."""
    manifest = read_manifest(layout, version)
    if manifest is None:
        raise StorageError(f"release {version} is not built yet (no manifest.json): build ffe_release first")
    if manifest["complete"]:
        return manifest
    folder = release_dir(layout, version)
    shards_dir, records_dir = folder / "shards", layout.staging_dir(STAGE, version)
    config = ReleaseConfig.from_json(manifest["config"])
    faces = pq.read_table(folder / "splits.parquet", schema=RELEASE_FACES)
    for face_id in faces.column("face_id").to_pylist():  # each crop read is one of the release's
        release_path(folder, f"images/{face_id}.png", listed_in="splits.parquet")
    specs = plan_shards(faces, config.shard_target_bytes)
    sweep_temp_files(shards_dir)
    sweep_temp_files(records_dir)

    def finished(spec: ShardSpec) -> dict | None:
        """The record of a shard an earlier run finished, if the file still has its bytes (shards
        are not fsynced one by one: after a power loss, a renamed file may hold zeros)."""
        rec_path, path = records_dir / f"{spec.name}.json", shards_dir / spec.name
        if not (rec_path.is_file() and path.is_file()):
            return None
        rec = json.loads(rec_path.read_text())
        return rec if file_digest(path) == (rec["sha256"], rec["bytes"]) else None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        earlier = list(pool.map(finished, specs))
    records = {s.name: r for s, r in zip(specs, earlier, strict=True) if r is not None}
    todo = [s for s in specs if s.name not in records]
    start = time.monotonic()

    def one(spec: ShardSpec) -> dict:
        rec = write_shard(spec, folder / "images", shards_dir / spec.name)
        atomic_write_text(records_dir / f"{spec.name}.json", json.dumps(rec))  # the shard counts as done
        return rec

    done_before = len(records)
    if progress:
        progress(done_before, len(specs))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, rec in enumerate(pool.map(one, todo), 1):
            records[rec["name"]] = rec
            if progress:
                progress(done_before + i, len(specs))
    wall = time.monotonic() - start

    with atomic_open(shards_dir / INDEX) as f:
        pq.write_table(pa.Table.from_pylist(index_rows(specs), schema=SHARD_INDEX), f, compression="zstd")
    ordered = [records[s.name] for s in specs]
    written = sum(r["bytes"] for r in ordered if r["name"] in {s.name for s in todo})
    stats = {
        "version": version,
        "shards": len(specs),
        "samples": sum(r["samples"] for r in ordered),
        "faces": sum(r["faces"] for r in ordered),
        "bytes": sum(r["bytes"] for r in ordered),
        "written_this_run": len(todo),
        "skipped_finished": done_before,
        "wall_s": round(wall, 3),
        "mb_per_s": round(written / 1e6 / wall, 1) if wall > 0 and written else None,
        "workers": workers,
    }
    atomic_write_text(shards_dir / STATS, json.dumps(stats, indent=1) + "\n")  # last: the shards are done

    manifest["shards"] = {s: [r for r in ordered if r["split"] == s] for s in SPLITS}
    for name in (f"shards/{INDEX}", f"shards/{STATS}"):
        manifest["files"][name] = dict(zip(("sha256", "bytes"), file_digest(folder / name), strict=True))
    manifest["complete"] = True
    write_manifest(layout, version, manifest)
    shutil.rmtree(records_dir, ignore_errors=True)
    return manifest


def shard_names(manifest: dict, split: str) -> list[str]:
    return [r["name"] for r in (manifest["shards"] or {}).get(split, [])]


def shard_paths(folder: Path, manifest: dict, split: str) -> list[str]:
    """The local paths of a split's shards; StorageError naming the first that leaves the folder."""
    return [str(release_path(folder, name, under="shards")) for name in shard_names(manifest, split)]
