"""Atomic file writes: a reader sees the old file, the whole new file, or nothing.

Data is written to a hidden temp file (in the destination folder, or in `temp_dir` on the same file
system) and renamed into place. A process killed mid-write leaves only a `.name.tmp-<pid>-*` file,
which no glob of ours (`*.parquet`, `*.json`) matches and `sweep_temp_files` removes once its
writer is gone. `fsync=True` also survives power loss (file and folder are
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


def _temp_path(path: Path, temp_dir: Path | None) -> Path:
    name = f".{path.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
    return (temp_dir or path.parent) / name


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_new(tmp: Path) -> BinaryIO:
    try:
        return open(tmp, "wb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:  # folders are made on first use only: no mkdir call per file
        tmp.parent.mkdir(parents=True, exist_ok=True)
        return open(tmp, "wb")  # noqa: SIM115


def publish(tmp: Path, path: Path, *, fsync: bool = True) -> None:
    """Rename a complete temp file to its final name (same file system), making folders on demand."""
    try:
        os.replace(tmp, path)
    except FileNotFoundError:
        if not tmp.exists():
            raise
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def write_temp(data: bytes, path: Path, *, fsync: bool = True, temp_dir: Path | None = None) -> Path:
    """Write `data` to a new temp file meant to become `path`; `publish` it or unlink it."""
    tmp = _temp_path(path, temp_dir)
    try:
        with _open_new(tmp) as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], *, fsync: bool = True, temp_dir: str | os.PathLike[str] | None = None
) -> Iterator[BinaryIO]:
    """Open a binary file for writing that appears at `path` only when the block exits cleanly.

    `temp_dir` (same file system as `path`) collects the temp files of many folders in one place,
    so that one cheap sweep finds what killed writers left (the blob store's fan-out folders)."""
    path = Path(path)
    tmp = _temp_path(path, Path(temp_dir) if temp_dir is not None else None)
    try:
        with _open_new(tmp) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        publish(tmp, path, fsync=fsync)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, fsync: bool = True, temp_dir: str | os.PathLike[str] | None = None
) -> None:
    path = Path(path)
    tmp = write_temp(data, path, fsync=fsync, temp_dir=Path(temp_dir) if temp_dir is not None else None)
    try:
        publish(tmp, path, fsync=fsync)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def _writer_alive(temp_name: str) -> bool:
    try:
        pid = int(temp_name.split(TEMP_MARKER, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed writer whose parent has not reaped it yet (in a container whose init does not reap,
    that is forever) still answers kill(pid, 0): /proc says it is a zombie."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def sweep_temp_files(folder: str | os.PathLike[str]) -> int:
    """Delete the temp files in `folder` (not recursive) whose writing process is gone; return how
    many. Files of live writers (a batch running in parallel) are left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.glob(f".*{TEMP_MARKER}*"):
        if _writer_alive(p.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed += 1
    return removed
