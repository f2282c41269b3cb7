"""Ingest batches: which input files each batch holds, fixed once in a manifest.

A file is identified by (path, size, mtime): a file already in a manifest is never registered again,
and one rewritten in place is new. The path is relative to the work folder when the file is inside
it (the default input folder, generated variants), so a copied or moved work folder still knows its
own input; files elsewhere keep their absolute path. A batch id is a hash of its file list, so two
registrars seeing the same new files name the same batch, and a sensor's run key (the batch id)
launches it once. Registration holds a file lock, so the sensor and `ffe build` can run side by side.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from storage.atomic import atomic_write_text
from storage.layout import Layout

BATCH_PREFIX = "batch-"


@dataclass(frozen=True)
class InputFile:
    path: str  # relative to the work folder when inside it, else absolute (`located` opens it)
    size: int
    mtime_ns: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.path, self.size, self.mtime_ns)

    def located(self, layout: Layout) -> Path:
        """The file's absolute path (an absolute stored path is kept as it is)."""
        return layout.root / self.path


def stored_path(layout: Layout, path: str | os.PathLike[str]) -> str:
    """How a path is recorded: relative to the work folder when inside it, else absolute."""
    p = Path(path)
    return p.relative_to(layout.root).as_posix() if p.is_relative_to(layout.root) else str(p)


def link_outside(path: Path, root: Path) -> str | None:
    """Where `path` really is, when a link (the file, or a folder on the way) takes it out of the
    input folder `root`; else None."""
    real = Path(os.path.realpath(path))
    return None if real.is_relative_to(os.path.realpath(root)) else str(real)


def scan_input(input_dir: str | os.PathLike[str], *, min_age_s: float = 0.0,
               follow_links: bool = False) -> list[InputFile]:  # fmt: skip
    """Every non-hidden file under `input_dir`, sorted by path. Files modified within the last
    `min_age_s` seconds are left for a later scan: they may still be being copied in. Dangling
    links are kept (ingest records them as unreadable rather than losing them). A link to a folder
    outside the input is listed as itself (ingest records it as `link_outside_input`), or, with
    `follow_links`, walked into; one to a folder inside is not walked twice."""
    root = Path(input_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {root} does not exist")
    newest_ok = time.time_ns() - int(min_age_s * 1e9)
    found, walked = [], {os.path.realpath(root)}
    for folder, dirs, files in os.walk(root, followlinks=follow_links):
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            path = Path(folder) / d
            if not path.is_symlink():
                kept.append(d)
            elif link_outside(path, root) is None or os.path.realpath(path) in walked:
                continue  # inside the input (walked as itself), or a loop
            elif follow_links:
                walked.add(os.path.realpath(path))
                kept.append(d)
            else:
                files.append(d)  # recorded, not walked
        dirs[:] = kept
        for name in files:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            st = path.lstat() if path.is_symlink() and not path.is_file() else path.stat()
            if st.st_mtime_ns > newest_ok:
                continue
            found.append(InputFile(str(path), st.st_size, st.st_mtime_ns))
    return sorted(found, key=lambda f: f.path)


DOMAINS = ("real", "anime")
PROVENANCES = ("real", "generated")


@dataclass(frozen=True)
class Manifest:
    batch: str
    input_dir: str
    created_at: str
    files: tuple[InputFile, ...]
    domain: str = "real"  # real | anime: FFE is half of each
    pre_cropped: bool = False  # every image is one face: taken whole where no face is found
    whole_images: bool = False  # every image is one face, taken whole: no detection (a synthetic world)
    label_files: tuple[InputFile, ...] = ()  # labels.csv files registered with these images (curation/labels.py)
    provenance: str = "real"  # real | generated (expression variants: curation/generation.py)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        raw = json.loads(path.read_text())
        return cls(
            batch=raw["batch"],
            input_dir=raw["input_dir"],
            created_at=raw["created_at"],
            files=tuple(InputFile(**f) for f in raw["files"]),
            domain=raw.get("domain", "real"),
            pre_cropped=bool(raw.get("pre_cropped", False)),
            whole_images=bool(raw.get("whole_images", False)),
            label_files=tuple(InputFile(**f) for f in raw.get("label_files", ())),
            provenance=raw.get("provenance", "real"),
        )

    def dumps(self) -> str:
        files = {"files": [asdict(f) for f in self.files], "label_files": [asdict(f) for f in self.label_files]}
        return json.dumps({**asdict(self), **files}, indent=1, sort_keys=True)


def batch_id_for(files: list[InputFile]) -> str:
    digest = hashlib.sha256(json.dumps([f.key for f in files]).encode()).hexdigest()
    return f"{BATCH_PREFIX}{digest[:12]}"


@contextmanager
def _registry_lock(layout: Layout) -> Iterator[None]:
    layout.batches.mkdir(parents=True, exist_ok=True)
    with open(layout.batches / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def manifests(layout: Layout) -> list[Manifest]:
    """All registered batches, oldest first."""
    if not layout.batches.is_dir():
        return []
    found = [Manifest.load(p) for p in layout.batches.glob(f"{BATCH_PREFIX}*.json")]
    return sorted(found, key=lambda m: (m.created_at, m.batch))


def load_manifest(layout: Layout, batch: str) -> Manifest:
    path = layout.batch_manifest(batch)
    if not path.is_file():
        raise FileNotFoundError(f"batch {batch!r} has no manifest at {path}")
    return Manifest.load(path)


def register_new_batch(
    layout: Layout,
    input_dir: str | os.PathLike[str],
    *,
    min_age_s: float = 0.0,
    domain: str = "real",
    pre_cropped: bool = False,
    provenance: str = "real",
    follow_links: bool = False,
    whole_images: bool = False,
) -> Manifest | None:
    """Put every file of `input_dir` that no batch holds yet into a new batch; None if none. New
    label files (`labels.csv`) go with the new images; alone, they wait for some. `follow_links`:
    folders linked from outside the input are walked (setting input.follow_links)."""
    from curation.labels import is_label_file

    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, not {domain!r}")
    if provenance not in PROVENANCES:
        raise ValueError(f"provenance must be one of {', '.join(PROVENANCES)}, not {provenance!r}")
    root = Path(input_dir).expanduser().resolve()
    with _registry_lock(layout):
        known = {f.key for m in manifests(layout) for f in (*m.files, *m.label_files)}
        scanned = [InputFile(stored_path(layout, f.path), f.size, f.mtime_ns)
                   for f in scan_input(root, min_age_s=min_age_s, follow_links=follow_links)]  # fmt: skip
        found = [f for f in scanned if f.key not in known]
        new = [f for f in found if not is_label_file(f.path)]
        if not new:
            return None
        manifest = Manifest(
            batch=batch_id_for(new),
            input_dir=stored_path(layout, root),
            created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
            files=tuple(new),
            domain=domain,
            pre_cropped=pre_cropped or whole_images,
            whole_images=whole_images,
            label_files=tuple(f for f in found if is_label_file(f.path)),
            provenance=provenance,
        )
        atomic_write_text(layout.batch_manifest(manifest.batch), manifest.dumps())
        return manifest
