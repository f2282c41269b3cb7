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
import io
import math
import os
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

from curation.batches import link_outside, load_manifest
from storage import tables
from storage.failures import UNEXPECTED, describe
from storage.layout import Layout
from storage.schemas import CATEGORIES

LABEL_FILE = "labels.csv"
STAGE = "labels"
IMPORTED = "imported"  # the model_version of pre-labels taken from a label file


def is_label_file(path: str | Path) -> bool:
    return Path(path).name == LABEL_FILE


def failures_partition(batch: str) -> str:
    return tables.failures_partition(STAGE, batch)


def _sniff(text: str) -> str:
    """The delimiter a spreadsheet wrote: comma, semicolon (European Excel, with decimal commas), tab
    or bar; comma when the sample is ambiguous."""
    try:
        return csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _number(text: str, decimal_comma: bool) -> float:
    return float(text.replace(",", ".") if decimal_comma else text)


def _header(path: Path, raw: list[str]) -> tuple[dict[str, int], list[tuple[str, str, str]]]:
    """Column index by our name (case and spaces ignored, `Happy ` is `happy`); problems for a column
    given twice or one we do not know (with the nearest known name)."""
    import difflib

    known = ["file", "identity", *CATEGORIES]
    index: dict[str, int] = {}
    problems = []
    for k, name in enumerate(raw):
        key = " ".join(name.split()).lower()
        if not key:
            continue  # a trailing delimiter's empty column
        if key in index:
            problems.append((str(path), "bad_label_columns", f"{path}: column {name!r} is given twice"))
        elif key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            problems.append((str(path), "bad_label_columns", f"{path}: unknown column {name!r}{hint}"))
        else:
            index[key] = k
    return index, problems


def _target(folder: Path, name: str) -> str:
    """The file a row names, as the input scan records it: relative to the CSV's folder, `\\` read as
    `/`, Unicode in NFC (a Mac writes names in NFD), `..` resolved lexically (links are not followed:
    a row names the link that was ingested, not its target)."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/"))
    if os.path.isabs(name):  # an absolute path names itself (then it must lie in the input)
        return os.path.normpath(name)
    return os.path.normpath(unicodedata.normalize("NFC", str(folder)) + "/" + name)


def _parse(path: Path, files: set[str],
           refused_root: Path | None = None) -> tuple[dict[str, dict], list[tuple[str, str, str]]]:  # fmt: skip
    """(labels by absolute file path, problems as (item, reason, detail)) of one label file. Every row
    that is not used is a problem (file:line and why), except rows naming files of earlier batches.
    `refused_root`: the input folder, when links out of it are not read (a row naming a file
    through one is then `link_outside_input`)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        return {}, [(str(path), "unreadable_label_file", f"{path}: {err}")]
    delimiter = _sniff(text)
    try:
        table = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as err:
        return {}, [(str(path), "unreadable_label_file", f"{path}: {err}")]
    table = [r for r in table if any(c.strip() for c in r)]
    if not table:
        return {}, []
    columns, problems = _header(path, table[0])
    if problems:
        return {}, problems
    if "file" not in columns:
        return {}, [(str(path), "bad_label_columns", f"{path}: no `file` column (columns: {', '.join(table[0])})")]
    given = [c for c in CATEGORIES if c in columns]
    if given and len(given) != len(CATEGORIES):
        missing = [c for c in CATEGORIES if c not in columns]
        detail = f"{path}: scores need all 12 columns; missing {', '.join(missing)}"
        return {}, [(str(path), "bad_label_columns", detail)]
    folder = path.parent
    normalized = {unicodedata.normalize("NFC", f): f for f in files}
    labels: dict[str, dict] = {}
    for line, raw in enumerate(table[1:], start=2):
        item = f"{path}:{line}"
        try:
            found = _row(raw, columns, given, folder, normalized, delimiter == ";", len(table[0]), refused_root)
        except _Unused as why:
            problems.append((item, why.reason, f"{path} line {line}: {why.detail}"))
            continue
        except Exception as err:  # anything else about this one row: recorded, the rest go on
            problems.append((item, UNEXPECTED, f"{path} line {line}: {describe(err)}"))
            continue
        if found is None:
            continue  # a file of an earlier batch: labelled when it was registered
        target, label = found
        if target in labels:
            problems.append((item, "labelled_twice", f"{path} line {line}: {raw[columns['file']]} has a label already"))
            continue
        labels[target] = {**label, "label_file": str(path)}
    return labels, problems


class _Unused(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _row(raw: list[str], columns: dict[str, int], given: list[str], folder: Path, files: dict[str, str],
         decimal_comma: bool, width: int, refused_root: Path | None = None) -> tuple[str, dict] | None:  # fmt: skip
    """One row: (the file it labels, {identity, scores}); None for a file of an earlier batch."""
    extra = [c for c in raw[width:] if c.strip()]
    if extra:
        raise _Unused("bad_row", f"{len(raw)} fields where the header has {width} ({', '.join(extra)!r} left over)")
    cell = {name: (raw[k].strip() if k < len(raw) else "") for name, k in columns.items()}
    if not cell["file"]:
        raise _Unused("unknown_file", "no file named")
    target = _target(folder, cell["file"])
    if not Path(target).is_relative_to(folder):  # `../x.png` too, though x.png is an image of the batch
        raise _Unused("outside_collection", f"{cell['file']!r} is outside the folder of the label file")
    if target not in files:
        if not os.path.lexists(target):
            raise _Unused("unknown_file", f"no file {cell['file']!r} in the input")
        if refused_root is not None and (real := link_outside(Path(target), refused_root)):
            raise _Unused("link_outside_input", f"{cell['file']!r} is reached through a link to {real}, outside "
                          f"the input folder {refused_root}: not read (setting input.follow_links)")  # fmt: skip
        return None
    scores = None
    if given:
        try:
            scores = {c: _number(cell[c], decimal_comma) for c in CATEGORIES}
        except ValueError:
            raise _Unused("bad_score", "scores must be numbers") from None
        if bad := [c for c, v in scores.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)]:
            raise _Unused("bad_score", f"{', '.join(bad)} outside [0, 1]")
    return files[target], {"identity": cell.get("identity") or None, "scores": scores}


def import_labels(layout: Layout, batch: str, label_files: list[str], image_files: list[str],
                  follow_links: bool = False) -> dict:  # fmt: skip
    """Write `imported_labels/<batch>` (one row per ingested image a label file names) and the
    rows it cannot use to `failures`. Reruns rewrite both: they depend on the batch alone. A label
    file that is a link out of the batch's input folder is not read unless `follow_links`."""
    root = layout.root / load_manifest(layout, batch).input_dir
    # Manifest paths are relative to the work folder where inside it; label rows name absolute ones.
    stored = {str(layout.root / f): f for f in image_files}
    labels: dict[str, dict] = {}
    problems: list[tuple[str, str, str]] = []
    for path in label_files:
        if not follow_links and (target := link_outside(layout.root / path, root)):
            problems.append((str(layout.root / path), "link_outside_input", f"{layout.root / path}: a link to "
                             f"{target}, outside the input folder {root}: not read (setting input.follow_links)"))
            continue
        found, bad = _parse(layout.root / path, set(stored), None if follow_links else root)
        problems += bad
        for target, label in ((stored[t], v) for t, v in found.items()):
            if target in labels:
                problems.append((target, "labelled_twice", f"{target} is labelled in {labels[target]['label_file']} "
                                                           f"and {label['label_file']}"))  # fmt: skip
            else:
                labels[target] = label
    images = tables.read_partition(layout, "images", batch).select(["image_id", "source_uri"]).to_pylist()
    problems += _labels_of_files_not_ingested(layout, batch, labels, {i["image_id"]: i["source_uri"] for i in images})
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


def _labels_of_files_not_ingested(layout: Layout, batch: str, labels: dict[str, dict],
                                  sources: dict[str, str]) -> list[tuple[str, str, str]]:  # fmt: skip
    """Labels whose file is not an image of the batch under its own path: a file with the same
    bytes as one ingested before it (a link to it, a copy) gives its label to that image, where
    that image is in this batch and has no label of its own; any other such label is recorded
    (it was lost without a word: a link sorting before the labelled file took its place), but for
    a refused file's, whose failure row already says why. Moves the
    labels it applies in `labels` to their image's path; returns the problems."""
    from curation import ingest
    from storage.blobs import file_digest

    ingested = set(sources.values())
    if not (orphans := [t for t in labels if t not in ingested]):
        return []
    refused = {r["item"]: r for r in tables.read_partition(layout, "failures", ingest.failures_partition(batch))
               .select(["item", "reason"]).to_pylist()}  # fmt: skip
    problems = []
    for target in orphans:
        label = labels.pop(target)
        why = refused.get(target, {}).get("reason", "not ingested")
        try:
            image_id = file_digest(layout.root / target)[0] if why == "duplicate" else None
        except OSError as err:  # gone since it was ingested
            why = f"duplicate, now unreadable: {err.strerror}"
            image_id = None
        if image_id is not None:
            source = sources.get(image_id)
            if source is not None and source not in labels:
                labels[source] = label  # the same picture, ingested from `source`
                continue
            where = (f"is ingested from {source}, which has its own label" if source is not None
                     else "was ingested in an earlier batch: label it there")  # fmt: skip
            problems.append((target, "label_not_applied", f"{target} in {label['label_file']}: the same bytes "
                             f"as image {image_id[:16]}..., which {where}"))  # fmt: skip
        elif target not in refused:  # a refused image has its own failure row, which says why
            problems.append((target, "label_not_applied", f"{target} in {label['label_file']}: its image was "
                             f"not ingested ({why}), so its label is not used"))  # fmt: skip
    return problems


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
