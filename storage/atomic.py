"""Atomic file writes: a reader sees the old file, the whole new file, or nothing.

Data is written to a hidden temp file in the destination folder and renamed into place. A process
killed mid-write leaves only a `.name.tmp-*` file, which no glob of ours (`*.parquet`, `*.json`)
matches and `sweep_temp_files` removes. `fsync=True` also survives power loss (file and folder are
flushed before and after the rename); a SIGKILL needs no fsync, since the page cache outlives the
process.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_MARKER = ".tmp-"


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Open a binary file for writing that appears at `path` only when the block exits cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    with atomic_open(path, fsync=fsync) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def sweep_temp_files(folder: str | os.PathLike[str]) -> int:
    """Delete temp files that killed writers left in `folder` (not recursive); return how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.glob(f".*{TEMP_MARKER}*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed += 1
    return removed
