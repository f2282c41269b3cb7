"""Between the work folder and Label Studio: push new faces as tasks, pull annotations.

Both are idempotent: a face is pushed once (its face_id is looked up in the project), and a pull
rewrites the `annotations` table from the server's state (one row per annotator per face, the
latest edit), so rerunning either changes nothing. Malformed annotations go to `failures`
(stage `annotations`) with the reason.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from annotation import labelstudio as lsapi
from annotation.scores import ALL
from storage import tables
from storage.layout import Layout

STAGE = "annotations"


def settings_from_env(layout: Layout, **overrides) -> lsapi.ServerSettings:
    """Server settings from FFE_LABEL_STUDIO_URL / FFE_LABEL_STUDIO_TOKEN (never from files)."""
    values = dict(
        url=os.environ.get("FFE_LABEL_STUDIO_URL", ""),
        token=os.environ.get("FFE_LABEL_STUDIO_TOKEN", ""),
        crops_dir=str(layout.crops),
        document_root=os.environ.get("FFE_LABEL_STUDIO_DOCUMENT_ROOT", str(layout.root)),
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return lsapi.ServerSettings(**values)


def eligible_faces(layout: Layout) -> list[dict]:
    """Faces that can enter a release (in an identity, not a duplicate), with crop and pre-label."""
    eligible = {r["face_id"] for r in tables.read_table(layout, "identities").to_pylist() if r["duplicate_of"] is None}
    crops = {
        r["face_id"]: r["crop_path"]
        for r in tables.read_table(layout, "faces", columns=["face_id", "crop_path"]).to_pylist()
    }
    pre = {r["face_id"]: r for r in tables.read_table(layout, "prelabels").to_pylist()}
    return [dict(face_id=f, crop_path=crops[f], prelabel=pre.get(f)) for f in sorted(eligible) if f in crops]


def image_url(layout: Layout, crop_path: str, document_root: str) -> str:
    rel = (layout.root / crop_path).resolve().relative_to(Path(document_root).resolve())
    return f"/data/local-files/?d={rel.as_posix()}"


def setup(layout: Layout, settings: lsapi.ServerSettings) -> int:
    ls = lsapi.connect(settings)
    return lsapi.ensure_project(ls, settings)


def push(layout: Layout, settings: lsapi.ServerSettings) -> dict:
    ls = lsapi.connect(settings)
    project_id = lsapi.ensure_project(ls, settings)
    faces = eligible_faces(layout)
    payloads = [
        lsapi.task_payload(
            f["face_id"],
            image_url(layout, f["crop_path"], settings.document_root),
            f["prelabel"],
            (f["prelabel"] or {}).get("model_version", ""),
        )
        for f in faces
    ]
    pushed = lsapi.push_tasks(ls, project_id, payloads, settings)
    return {"project_id": project_id, "eligible_faces": len(faces), "pushed": pushed}


def sync(layout: Layout, settings: lsapi.ServerSettings) -> dict:
    ls = lsapi.connect(settings)
    project_id = lsapi.ensure_project(ls, settings)
    known = set(tables.read_table(layout, "faces", columns=["face_id"]).column("face_id").to_pylist())
    pulled = lsapi.pull_annotations(ls, project_id, known, settings)
    now = datetime.now(UTC)
    # History first: a version is kept before the table that replaces it is written.
    seen = {
        (r["annotation_id"], r["updated_at"])
        for r in tables.read_table(layout, "annotation_history", columns=["annotation_id", "updated_at"]).to_pylist()
    }
    changed = [dict(r, synced_at=now) for r in pulled.rows if (r["annotation_id"], r["updated_at"]) not in seen]
    if changed:
        tables.write_partition(layout, "annotation_history", now.strftime("%Y%m%dT%H%M%S%fZ"), changed)
    tables.write_partition(layout, "annotations", ALL, pulled.rows)
    tables.write_partition(
        layout, "failures", f"{STAGE}__{ALL}",
        [dict(q, stage=STAGE, partition=ALL, at=now) for q in pulled.quarantined],
    )  # fmt: skip
    by_status: dict[str, int] = {}
    for r in pulled.rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return {"project_id": project_id, "annotations": len(pulled.rows), "by_status": by_status,
            "new_versions": len(changed), "quarantined": len(pulled.quarantined)}  # fmt: skip
