"""Paths a release's own files list (manifest.json's files and shards, shards/index.parquet's shard
names, the face ids of plan.parquet and splits.parquet), resolved inside the release folder.

Those files can be edited like any other: an entry that is absolute, has a `..` component or goes
through a link to somewhere outside the release folder would make verify or the loader read (and
the build write) a file that is not the release's. `release_path` is the one check: every such
path is resolved through it, and an entry that leaves the folder is refused before anything is
opened, with a StorageError naming the file that lists it, the entry and the release.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from storage.errors import StorageError


def release_path(folder: Path, entry: object, *, listed_in: str = "manifest.json", under: str = "") -> Path:
    """`folder / under / entry`, where `entry` is a path as `listed_in` (a file of the release)
    lists it, relative to `folder / under`. StorageError naming `listed_in`, the entry and the
    release when the entry is not a relative name, is absolute, has a `..` component, or resolves
    (through links) outside `folder`. Returns the path as named (not resolved), so that file names
    stay the release's. Nothing is opened: a path not there (yet) is fine."""
    if not isinstance(entry, str) or not entry or "\0" in entry:
        raise StorageError(f"{_entry(folder, entry, listed_in)} is not a file name in the release folder")
    parts = [p for p in f"{under}/{entry}".split("/") if p not in ("", ".")]
    path = folder / under / entry
    if entry.startswith("/"):
        why = "an absolute path"
    elif ".." in parts:
        why = "a '..' component"
    elif not _through_a_link(str(folder), parts):
        return path  # no `..` and no link below the folder: inside it
    else:
        try:
            target = path.resolve()
        except (OSError, RuntimeError) as err:  # a link loop (RuntimeError before Python 3.13)
            why = f"a link that cannot be resolved: {err}"
        else:
            if target.is_relative_to(folder.resolve()):
                return path
            why = f"a link to {target}, outside it"
    raise StorageError(f"{_entry(folder, entry, listed_in)} leaves the release folder ({why})")


def _entry(folder: Path, entry: object, listed_in: str) -> str:
    return f"{listed_in} entry {entry!r} of release {folder.name}"


def _through_a_link(path: str, parts: list[str]) -> bool:
    """Whether `path / parts...` passes through a symlink below `path` (one lstat per part that
    exists: resolving the whole path costs several times more, and a release lists many)."""
    for part in parts:
        path = os.path.join(path, part)
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return True
        except FileNotFoundError:
            return False  # nothing further down exists: no link either
        except OSError:
            return True  # cannot tell (not a folder, no permission): resolve it
    return False
