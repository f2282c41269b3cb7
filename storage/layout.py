"""Where everything lives in a work folder. One class, so no other module builds a path by hand.

images/ab/<sha256>.<ext>      originals, content-addressed, never rewritten
crops/ab/<face_id>.png        aligned face crops
tables/<table>/<partition>.parquet
catalog.duckdb                DuckDB views over tables/
batches/<batch>.json          ingest batch manifests (the files each batch holds)
staging/<asset>/<partition>/  per-chunk progress of a partition still being built
releases/<version>/           dataset releases
runs/<version>/<run_id>/      training and bench runs
generated/<source batch>/     expression variants of that batch's faces (an input folder of their own)
dagster/                      the Dagster instance (runs, event logs, schedules)
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class ReadOnlyWorkFolder(OSError):
    """The work folder (or a folder in it) cannot be written: the message names it and why."""


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> Layout:
        return cls(Path(root).expanduser().resolve())

    def require_writable(self) -> None:
        """Prove the work folder and each folder in it writable by writing a file (permission bits
        say nothing about a read-only mount, or to root); for a folder still to be made, the
        nearest existing parent. ReadOnlyWorkFolder naming the first that is not, before any work."""
        existing = next(p for p in (self.root, *self.root.parents) if p.is_dir())
        inside = []
        if existing == self.root:
            inside = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink())
        for folder in [existing, *inside]:
            if (err := write_refused(folder)) is not None:
                why = "on a read-only file system" if err.errno == errno.EROFS else f"not writable ({err.strerror})"
                if folder == self.root:
                    where = f"work folder {self.root} is {why}"
                elif existing != self.root:
                    where = f"cannot create work folder {self.root}: {folder} is {why}"
                else:
                    where = f"work folder {self.root} is not writable: {folder.name}/ in it is {why}"
                raise ReadOnlyWorkFolder(f"{where}; builds write tables, originals and Dagster's records there: "
                                         "make it writable, or give another --workdir") from None
        # Deeper folders (a release's runs/<version>, Dagster's history) by their access rights only:
        # writing a file in each of hundreds would cost more than it tells.
        for folder in self._folders_below(inside, depth=2):
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ReadOnlyWorkFolder(f"work folder {self.root} is not writable: {folder.relative_to(self.root)}/ "
                                         "in it is not writable; builds write tables, originals and Dagster's records "
                                         "there: make it writable, or give another --workdir")  # fmt: skip

    @staticmethod
    def _folders_below(folders: list[Path], depth: int) -> Iterator[Path]:
        """Folders under `folders`, `depth` levels down at most, links not followed."""
        for folder in folders:
            try:
                below = [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            yield from below
            if depth > 1:
                yield from Layout._folders_below(below, depth - 1)

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def crops(self) -> Path:
        return self.root / "crops"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def batches(self) -> Path:
        return self.root / "batches"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def default_input(self) -> Path:
        return self.root / "input"

    def table_dir(self, table: str) -> Path:
        return self.tables / table

    def table_file(self, table: str, partition: str) -> Path:
        return self.tables / table / f"{partition}.parquet"

    def staging_dir(self, asset: str, partition: str) -> Path:
        return self.staging / asset / partition

    def batch_manifest(self, batch: str) -> Path:
        return self.batches / f"{batch}.json"

    @property
    def images_temp(self) -> Path:
        """Temp files of originals being written; renamed into images/ab/ when complete."""
        return self.images / ".tmp"

    def image_path(self, image_id: str, ext: str) -> Path:
        """Two-level fan-out by hash prefix keeps folders small at millions of files."""
        return self.images / image_id[:2] / f"{image_id}.{ext}"

    def crop_path(self, face_id: str) -> Path:
        return self.crops / face_id[:2] / f"{face_id}.png"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def write_refused(folder: Path) -> OSError | None:
    """Why a file cannot be made in `folder` (None: it can): tried, as mode bits say nothing about
    a read-only mount, or to root."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".ffe-write-test-"):
            return None
    except OSError as err:
        return err
