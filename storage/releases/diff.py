"""What changed between two releases: faces added and removed, score changes, split moves."""

from __future__ import annotations

import pyarrow.parquet as pq

from storage.errors import StorageError
from storage.layout import Layout
from storage.releases.plan import release_dir
from storage.schemas import CATEGORIES, RELEASE_FACES


def _faces(layout: Layout, version: str) -> dict[str, dict]:
    folder = release_dir(layout, version)
    # A built release has splits.parquet; one only planned has the same rows in plan.parquet.
    for name in ("splits.parquet", "plan.parquet"):
        if (folder / name).is_file():
            rows = pq.read_table(folder / name, schema=RELEASE_FACES).to_pylist()
            return {r["face_id"]: r for r in rows}
    raise StorageError(f"no release {version} in {layout.releases}")


def diff_releases(layout: Layout, old: str, new: str, *, limit: int = 50) -> dict:
    """Counts of every kind of change, and up to `limit` examples of each."""
    a, b = _faces(layout, old), _faces(layout, new)
    added, removed = sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys())
    changed, moved = [], []
    for face_id in sorted(a.keys() & b.keys()):
        ra, rb = a[face_id], b[face_id]
        delta = {c: round(rb[c] - ra[c], 6) for c in CATEGORIES if rb[c] != ra[c]}
        if delta:
            changed.append({"face_id": face_id, "delta": delta, "max_abs": max(abs(v) for v in delta.values())})
        if ra["split"] != rb["split"]:
            moved.append({"face_id": face_id, "from": ra["split"], "to": rb["split"]})
    changed.sort(key=lambda c: (-c["max_abs"], c["face_id"]))
    ids_a = {r["identity_id"] for r in a.values()}
    ids_b = {r["identity_id"] for r in b.values()}
    return {
        "old": old,
        "new": new,
        "faces": {"old": len(a), "new": len(b)},
        "added": {"count": len(added), "face_ids": added[:limit]},
        "removed": {"count": len(removed), "face_ids": removed[:limit]},
        "score_changes": {"count": len(changed), "largest": changed[:limit]},
        "split_moves": {"count": len(moved), "faces": moved[:limit]},
        "identities": {"added": len(ids_b - ids_a), "removed": len(ids_a - ids_b)},
    }


def render_diff(d: dict) -> str:
    lines = [
        f"{d['old']} -> {d['new']}: {d['faces']['old']} -> {d['faces']['new']} faces",
        f"  added     {d['added']['count']:>6} faces ({d['identities']['added']} new identities)",
        f"  removed   {d['removed']['count']:>6} faces ({d['identities']['removed']} identities gone)",
        f"  rescored  {d['score_changes']['count']:>6} faces",
        f"  moved     {d['split_moves']['count']:>6} faces between splits",
    ]
    if d["added"]["face_ids"]:
        lines += ["", "added:"] + [f"  + {f}" for f in d["added"]["face_ids"]]
    if d["removed"]["face_ids"]:
        lines += ["", "removed:"] + [f"  - {f}" for f in d["removed"]["face_ids"]]
    if d["score_changes"]["largest"]:
        lines += ["", "largest score changes:"]
        for c in d["score_changes"]["largest"]:
            deltas = ", ".join(f"{k} {v:+.3f}" for k, v in c["delta"].items())
            lines.append(f"  ~ {c['face_id']}: {deltas}")
    if d["split_moves"]["faces"]:
        lines += ["", "split moves:"] + [
            f"  > {m['face_id']}: {m['from']} -> {m['to']}" for m in d["split_moves"]["faces"]
        ]
    return "\n".join(lines)
