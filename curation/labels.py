"""Labels that come with the images: a `labels.csv` beside them in the input folder.

Collections that are labelled already (a published FFE release, the synthetic world, a lab's own
recordings) bring their identity and intensity labels along:

    file,identity,happy,sad,angry,fear,surprised,disgust,confused,contempt,confident,shy,sleepy,anxious
    p01/neutral.png,person-01,0,0,0,0,0,0,0,0,0,0,0,0
    p01/smile.png,person-01,0.8,0,0,0,0,0,0,0,0.2,0,0,0

`file` is relative to the CSV's folder; `identity` (any text) and the twelve scores are each
optional, as whole columns. A label file is registered with the batch whose files it names and is
not an image; its rows bind to that batch's files. Identity labels put faces into the identity they
name (curation.identities); score labels become the faces' pre-labels, `model_version` "imported"
(annotation.scores), so people still review them in Label Studio when a server is configured.
A row that cannot be used (an unknown file, a score outside [0, 1], a file named twice) goes to
`failures` (stage `labels`) with its reason; the rest of the file still counts.
"""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime
from pathlib import Path

from storage import tables
from storage.layout import Layout
from storage.schemas import CATEGORIES

LABEL_FILE = "labels.csv"
STAGE = "labels"
IMPORTED = "imported"  # the model_version of pre-labels taken from a label file


def is_label_file(path: str | Path) -> bool:
    return Path(path).name == LABEL_FILE


def failures_partition(batch: str) -> str:
    return tables.failures_partition(STAGE, batch)


def _parse(path: Path, files: set[str]) -> tuple[dict[str, dict], list[tuple[str, str, str]]]:
    """(labels by absolute file path, problems as (item, reason, detail)) of one label file."""
    problems: list[tuple[str, str, str]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = [h.strip() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return {}, [(str(path), "unreadable_label_file", f"{path}: {err}")]
    if rows and "file" not in header:
        return {}, [(str(path), "bad_label_columns", f"{path}: no `file` column (columns: {', '.join(header)})")]
    given = [c for c in CATEGORIES if c in header]
    if given and len(given) != len(CATEGORIES):
        missing = [c for c in CATEGORIES if c not in header]
        detail = f"{path}: scores need all 12 columns; missing {', '.join(missing)}"
        return {}, [(str(path), "bad_label_columns", detail)]
    labels: dict[str, dict] = {}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        item = f"{path}:{line}"
        target = str((path.parent / row["file"]).resolve()) if row.get("file") else ""
        if target not in files:
            # Files of earlier batches are labelled when they are registered; not here.
            if not row.get("file") or not Path(target).exists():
                problems.append((item, "unknown_file", f"{path} line {line}: no file {row.get('file')!r} in the input"))
            continue
        if target in labels:
            problems.append((item, "labelled_twice", f"{path} line {line}: {row['file']} has a label already"))
            continue
        scores = None
        if given:
            try:
                scores = {c: float(row[c]) for c in CATEGORIES}
            except ValueError:
                problems.append((item, "bad_score", f"{path} line {line}: scores must be numbers"))
                continue
            if bad := [c for c, v in scores.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)]:
                problems.append((item, "bad_score", f"{path} line {line}: {', '.join(bad)} outside [0, 1]"))
                continue
        labels[target] = {"identity": row.get("identity") or None, "scores": scores, "label_file": str(path)}
    return labels, problems


def import_labels(layout: Layout, batch: str, label_files: list[str], image_files: list[str]) -> dict:
    """Write `imported_labels/<batch>` (one row per ingested image a label file names) and the
    rows it cannot use to `failures`. Reruns rewrite both: they depend on the batch alone."""
    # Manifest paths are relative to the work folder where inside it; label rows name absolute ones.
    stored = {str(layout.root / f): f for f in image_files}
    labels: dict[str, dict] = {}
    problems: list[tuple[str, str, str]] = []
    for path in label_files:
        found, bad = _parse(layout.root / path, set(stored))
        problems += bad
        for target, label in ((stored[t], v) for t, v in found.items()):
            if target in labels:
                problems.append((target, "labelled_twice", f"{target} is labelled in {labels[target]['label_file']} "
                                                           f"and {label['label_file']}"))  # fmt: skip
            else:
                labels[target] = label
    images = tables.read_partition(layout, "images", batch).select(["image_id", "source_uri"]).to_pylist()
    rows = []
    for image in images:
        label = labels.get(image["source_uri"])
        if label is None:
            continue
        scores = label["scores"] or dict.fromkeys(CATEGORIES)
        rows.append({"image_id": image["image_id"], "batch": batch, "label_file": label["label_file"],
                     "identity": label["identity"], **scores})  # fmt: skip
    now = datetime.now(UTC)
    tables.write_partition(layout, "imported_labels", batch, rows)
    tables.write_partition(layout, "failures", failures_partition(batch), [
        dict(item=item, stage=STAGE, reason=reason, detail=detail, partition=batch, at=now)
        for item, reason, detail in problems
    ])  # fmt: skip
    return {"labelled_images": len(rows), "label_problems": len(problems)}


def labels_by_face(layout: Layout, batches: list[str]) -> dict[str, dict]:
    """face_id -> its imported label ({identity, scores}), for faces that are their image's only one."""
    out: dict[str, dict] = {}
    for batch in batches:
        if not tables.has_partition(layout, "imported_labels", batch):
            continue
        by_image = {r["image_id"]: r for r in tables.read_partition(layout, "imported_labels", batch).to_pylist()}
        if not by_image:
            continue
        faces = tables.read_partition(layout, "faces", batch).select(["face_id", "image_id"]).to_pylist()
        per_image: dict[str, list[str]] = {}
        for f in faces:
            per_image.setdefault(f["image_id"], []).append(f["face_id"])
        for image_id, face_ids in per_image.items():
            if image_id in by_image and len(face_ids) == 1:  # a label names an image, not one of its faces
                r = by_image[image_id]
                scores = None if r[CATEGORIES[0]] is None else {c: float(r[c]) for c in CATEGORIES}
                out[face_ids[0]] = {"identity": r["identity"], "scores": scores}
    return out
