"""Between the work folder and Label Studio: push new faces as tasks, pull annotations.

Both are idempotent: a face is pushed once (its face_id is looked up in the project right before
the import), and a pull rewrites the `annotations` table from the server's state (one row per
annotator per face, the latest edit), so rerunning either changes nothing. Malformed annotations
go to `failures` (stage `annotations`) with the reason.

Push and sync of one work folder take turns (a lock in `<workdir>/locks/`): a person's `ffe
annotate push` waits while `ffe ui`'s runs the same. Copies of a task that a push from elsewhere
raced in are deleted by the next push while nobody has annotated them; those holding annotations
are reported by sync (`failures`, reason `several_tasks`). `label_studio_tasks` remembers what
was pushed: a task deleted in Label Studio is recorded (and its annotations' last versions are
kept in `annotation_history` as `deleted`), and is pushed again only when asked.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from annotation import labelstudio as lsapi
from annotation.scores import ALL
from storage import tables
from storage.layout import Layout
from storage.locks import work_lock
from storage.releases.plan import release_eligible
from storage.schemas import CATEGORIES

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
    eligible = release_eligible(layout)
    crops = {
        r["face_id"]: r["crop_path"]
        for r in tables.read_table(layout, "faces", columns=["face_id", "crop_path"]).to_pylist()
    }
    pre = {r["face_id"]: r for r in tables.read_table(layout, "prelabels").to_pylist()}
    return [dict(face_id=f, crop_path=crops[f], prelabel=pre.get(f)) for f in sorted(eligible) if f in crops]


def image_url(layout: Layout, crop_path: str, document_root: str) -> str:
    """The URL under which the server's local-files storage serves a crop."""
    path, root = (layout.root / crop_path).resolve(), Path(document_root).resolve()
    if not path.is_relative_to(root):
        raise lsapi.LabelStudioError(
            f"crop {path} is outside the server's document root {root}: start Label Studio with "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT above the work folder, or set FFE_LABEL_STUDIO_DOCUMENT_ROOT"
        )
    return f"/data/local-files/?d={path.relative_to(root).as_posix()}"


def setup(layout: Layout, settings: lsapi.ServerSettings) -> int:
    ls = lsapi.connect(settings)
    return lsapi.ensure_project(ls, settings)


def _turn(layout: Layout):
    """The work folder's Label Studio lock: one push or sync at a time."""
    return work_lock(layout, "label-studio", what="a Label Studio push or sync of this work folder")


def push(layout: Layout, settings: lsapi.ServerSettings, *, recreate_deleted: bool = False) -> dict:
    """Push every release-eligible face (and the gold copies asked for) that the project does not
    hold; faces whose task was deleted in Label Studio only with `recreate_deleted`."""
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
    payloads += gold_payloads(layout, settings, n_regular=len(payloads))
    with _turn(layout):
        ls = lsapi.connect(settings)
        project_id = lsapi.ensure_project(ls, settings)
        now = datetime.now(UTC)
        tasks, removed = lsapi.remove_unannotated_copies(ls, lsapi.project_tasks(ls, project_id, settings), settings)
        record = task_record(layout, project_id, tasks, now)
        deleted = {k for k, r in record.items() if r["deleted_at"] is not None}
        have = {t.key for t in tasks} | (set() if recreate_deleted else deleted)
        new = [p for p in payloads if lsapi.task_key(p["data"]) not in have]
        made = lsapi.import_tasks(ls, project_id, new, settings)
        pushed = len(new)
        if new:  # the ids Label Studio gave them, or (if it does not say) a fresh listing
            tasks = tasks + made if made is not None else lsapi.project_tasks(ls, project_id, settings)
        write_task_record(layout, project_id, task_record(layout, project_id, tasks, now))
    wanted = {lsapi.task_key(p["data"]) for p in payloads}
    return {"project_id": project_id, "eligible_faces": len(faces), "gold_tasks": len(payloads) - len(faces),
            "pushed": pushed, "duplicates_removed": len(removed),
            "recreated": len(deleted & {lsapi.task_key(p["data"]) for p in new}),
            "deleted_not_pushed": 0 if recreate_deleted else len(deleted & wanted)}  # fmt: skip


def task_record(layout: Layout, project_id: int, tasks: list[lsapi.Task] | None, now: datetime) -> dict[str, dict]:
    """`label_studio_tasks` of the project (key -> row), brought up to `tasks` (the server's state)
    when given: keys gone from the server are marked deleted (from `now`, if not already), keys
    present are live."""
    rows = tables.read_table(layout, "label_studio_tasks").to_pylist()
    before = {r["key"]: r for r in rows if r["project_id"] == project_id}
    if tasks is None:
        return before
    oldest: dict[str, lsapi.Task] = {}
    copies: dict[str, int] = {}
    for t in sorted(tasks, key=lambda t: t.id):
        oldest.setdefault(t.key, t)
        copies[t.key] = copies.get(t.key, 0) + 1
    record = {}
    for key, r in before.items():
        if key not in oldest:
            record[key] = dict(r, tasks=0, deleted_at=r["deleted_at"] or now,
                               deletions=r["deletions"] + (r["deleted_at"] is None))  # fmt: skip
    for key, t in oldest.items():
        r = before.get(key)
        record[key] = dict(project_id=project_id, key=key, face_id=t.face_id, task_id=t.id, tasks=copies[key],
                           first_seen_at=r["first_seen_at"] if r else now, deleted_at=None,
                           deletions=r["deletions"] if r else 0)  # fmt: skip
    return record


def write_task_record(layout: Layout, project_id: int, record: dict[str, dict]) -> None:
    others = [r for r in tables.read_table(layout, "label_studio_tasks").to_pylist() if r["project_id"] != project_id]
    rows = others + sorted(record.values(), key=lambda r: r["key"])
    tables.write_partition(layout, "label_studio_tasks", ALL, sorted(rows, key=lambda r: (r["project_id"], r["key"])))


def gold_payloads(layout: Layout, settings: lsapi.ServerSettings, n_regular: int) -> list[dict]:
    """round(gold_rate x regular tasks) hidden copies of gold faces, cycling through them. Keys
    are numbered, so the same rate and task count always ask for the same gold tasks."""
    gold = sorted(tables.read_table(layout, "gold_scores", columns=["face_id"]).column("face_id").to_pylist())
    crops = {
        r["face_id"]: r["crop_path"]
        for r in tables.read_table(layout, "faces", columns=["face_id", "crop_path"]).to_pylist()
    }
    gold = [f for f in gold if f in crops]
    wanted = round(settings.gold_rate * n_regular) if gold else 0
    return [
        lsapi.task_payload(f, image_url(layout, crops[f], settings.document_root), None, "", gold_copy=k)
        for k, f in ((k, gold[k % len(gold)]) for k in range(wanted))
    ]


RELIABILITY_FLOOR = 0.05  # a perfect gold record weighs 1 / 0.05, not infinity


def annotator_quality(layout: Layout, gold_ratings: list[dict]) -> list[dict]:
    """Per annotator: gold ratings, mean absolute error against the gold scores, and a reliability
    1 / (0.05 + error) normalised to mean 1 (annotators without gold ratings get 1)."""
    known = {r["face_id"]: r for r in tables.read_table(layout, "gold_scores").to_pylist()}
    errors: dict[str, list[float]] = {}
    for r in gold_ratings:
        if r["status"] == "submitted" and r["face_id"] in known:
            errors.setdefault(r["annotator"], []).extend(
                abs(r[c] - known[r["face_id"]][c])
                for c in CATEGORIES
                if r[c] is not None  # not rated: no error
            )
    raw = {a: 1.0 / (RELIABILITY_FLOOR + sum(e) / len(e)) for a, e in errors.items()}
    mean = sum(raw.values()) / len(raw) if raw else 1.0
    annotators = {r["annotator"] for r in tables.read_table(layout, "annotations").to_pylist()} | set(errors)
    return [
        dict(annotator=a, gold_ratings=sum(r["annotator"] == a and r["status"] == "submitted" and r["face_id"] in known
                                           for r in gold_ratings),
             gold_mae=(sum(errors[a]) / len(errors[a])) if a in errors else None,
             reliability=raw[a] / mean if a in raw else 1.0)
        for a in sorted(annotators)
    ]  # fmt: skip


def sync(layout: Layout, settings: lsapi.ServerSettings) -> dict:
    """Pull every annotation into `annotations` (history first), record deleted tasks and
    annotations, and report keys held by several tasks and malformed annotations in `failures`."""
    with _turn(layout):
        ls = lsapi.connect(settings)
        project_id = lsapi.ensure_project(ls, settings)
        known = set(tables.read_table(layout, "faces", columns=["face_id"]).column("face_id").to_pylist())
        recorded = task_record(layout, project_id, None, datetime.now(UTC))
        # The whole task list only when the count says something changed (a task deleted, made or
        # copied elsewhere), while copies are known, or when an annotation we held is gone.
        copies = any(r["tasks"] > 1 for r in recorded.values())
        known_tasks = None if copies else sum(r["tasks"] for r in recorded.values())
        pulled = lsapi.pull_annotations(ls, project_id, known, settings, known_tasks=known_tasks)
        if pulled.tasks is None and held_annotations(layout) - pulled.annotation_ids:
            pulled.tasks = lsapi.project_tasks(ls, project_id, settings)
        now = datetime.now(UTC)
        changed, deleted = record_history(layout, pulled, now)  # before the table it replaces is written
        tables.write_partition(layout, "annotations", ALL, pulled.rows)
        tables.write_partition(layout, "annotator_quality", ALL, annotator_quality(layout, pulled.gold))
        if pulled.tasks is not None:
            recorded = task_record(layout, project_id, pulled.tasks, now)
            write_task_record(layout, project_id, recorded)
        several = lsapi.several_tasks(pulled.tasks if pulled.tasks is not None else pulled.annotated_tasks)
        problems = pulled.quarantined + [
            dict(item=f"face {copies[0].face_id}" if not key.startswith("gold:") else key, reason="several_tasks",
                 detail=f"{len(copies)} tasks ({', '.join(str(t.id) for t in copies)}): delete all but one in "
                        "Label Studio (`ffe annotate push` deletes the copies nobody annotated)")
            for key, copies in sorted(several.items())
        ]  # fmt: skip
        tables.write_partition(
            layout, "failures", tables.failures_partition(STAGE, ALL),
            [dict(q, stage=STAGE, partition=ALL, at=now) for q in problems],
        )  # fmt: skip
    by_status: dict[str, int] = {}
    for r in pulled.rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return {"project_id": project_id, "annotations": len(pulled.rows), "by_status": by_status,
            "not_rated": not_rated(pulled.rows), "new_versions": len(changed), "deleted_annotations": len(deleted),
            "deleted_tasks": sum(r["deleted_at"] is not None for r in recorded.values()),
            "faces_with_several_tasks": len(several), "gold_ratings": len(pulled.gold),
            "quarantined": len(pulled.quarantined)}  # fmt: skip


def held_annotations(layout: Layout) -> set[int]:
    return set(tables.read_table(layout, "annotations", columns=["annotation_id"]).column("annotation_id").to_pylist())


def record_history(layout: Layout, pulled: lsapi.Pulled, now: datetime) -> tuple[list[dict], list[dict]]:
    """Append to `annotation_history` every new version in `pulled` and, marked `deleted`, the last
    version of every annotation the server no longer holds; return (new versions, deletions)."""
    history = tables.read_table(layout, "annotation_history", columns=["annotation_id", "updated_at"]).to_pylist()
    seen = {(r["annotation_id"], r["updated_at"]) for r in history}
    changed = [dict(r, synced_at=now) for r in pulled.rows if (r["annotation_id"], r["updated_at"]) not in seen]
    held = tables.read_table(layout, "annotations").to_pylist()
    gone = [r for r in held if r["annotation_id"] not in pulled.annotation_ids]
    deleted = [dict(r, status="deleted", synced_at=now) for r in gone]
    if changed or deleted:
        tables.write_partition(layout, "annotation_history", now.strftime("%Y%m%dT%H%M%S%fZ"), changed + deleted)
    return changed, deleted


def not_rated(rows: list[dict]) -> dict[str, int]:
    """Per category, submitted annotations whose slider was left untouched (only those with any)."""
    counts = {c: sum(r["status"] == "submitted" and r[c] is None for r in rows) for c in CATEGORIES}
    return {c: n for c, n in counts.items() if n}


def import_gold(layout: Layout, csv_path: Path) -> int:
    """Load reviewed scores (CSV: face_id and one column per category, values in 0-1) into
    `gold_scores`. A row naming an unknown face or holding a bad value stops the import, naming it."""
    import csv

    faces = set(tables.read_table(layout, "faces", columns=["face_id"]).column("face_id").to_pylist())
    rows = []
    with open(csv_path, newline="") as f:
        for line, rec in enumerate(csv.DictReader(f), start=2):
            face_id = (rec.get("face_id") or "").strip()
            if face_id not in faces:
                raise ValueError(f"{csv_path}:{line}: face_id {face_id!r} is not in faces")
            try:
                scores = {c: float(rec[c]) for c in CATEGORIES}
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{csv_path}:{line}: every category needs a number ({err})") from None
            if bad := [c for c, v in scores.items() if not 0.0 <= v <= 1.0]:
                raise ValueError(f"{csv_path}:{line}: {', '.join(bad)} outside 0-1")
            rows.append(dict(face_id=face_id, source=f"file:{Path(csv_path).name}", **scores))
    tables.write_partition(layout, "gold_scores", ALL, rows)
    return len(rows)
