"""Locks on a work folder: one writer at a time for work that two processes must not do together.

`py-filelock` (a well-kept library; an OS lock, so a killed holder releases it at once) does the
locking. Beside each lock a small JSON says who holds it (pid, host, command, since), so a caller
who waits too long is told whom it waited for.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from storage.layout import Layout


class Busy(Exception):
    """Another process holds the lock for longer than the caller waits."""


def _safe(name: str) -> str:
    """A lock name as a file name: partition keys may hold any character."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _holder(path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"pid {h['pid']} on {h['host']} ({h['command']}), since {h['since']}"
    except (OSError, ValueError, KeyError):
        return "another process"


@contextmanager
def work_lock(layout: Layout, name: str, *, what: str, timeout_s: float = 600.0,
              on_wait: Callable[[str], None] | None = None) -> Iterator[None]:  # fmt: skip
    """Hold `<workdir>/locks/<name>.lock` for the block, waiting up to `timeout_s` seconds for it.

    `what` says what the lock guards (for the error); `on_wait(holder)` is called once when the lock
    is taken and the caller must wait. Raises `Busy` naming the holder if it is not free in time."""
    folder = layout.root / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with held(folder / _safe(name), what=f"{what}: {{holder}} is at it in {layout.root}", timeout_s=timeout_s,
              on_wait=on_wait):  # fmt: skip
        yield


@contextmanager
def held(stem: Path, *, what: str, timeout_s: float, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the OS lock `<stem>.lock` for the block (who holds it in `<stem>.holder.json`), waiting up
    to `timeout_s` seconds. `what` is the error's text, with `{holder}` where the holder goes."""
    lock, holder = FileLock(f"{stem}.lock"), Path(f"{stem}.holder.json")
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait(_holder(holder))
            lock.acquire(timeout=timeout_s)
    except Timeout:
        raise Busy(f"{what.replace('{holder}', _holder(holder))}; waited {timeout_s:g} s") from None
    try:
        holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "command": " ".join(sys.argv[:3]) or "python",
                                      "since": datetime.now(UTC).isoformat(timespec="seconds")}))  # fmt: skip
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()
