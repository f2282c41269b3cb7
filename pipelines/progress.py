"""Progress for long steps: a bar on stderr (plain lines off a terminal) and a Dagster log line every few
seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg

from storage.progress import progress_bar


@contextmanager
def progress_reporter(
    context: dg.AssetExecutionContext, desc: str, unit: str = "file", every_s: float = 5.0
) -> Iterator[Callable[[int, int], None]]:
    """Yields `report(done, total)` for a domain function's `progress` argument."""
    bar = None
    start = last_log = time.monotonic()
    first = 0

    def report(done: int, total: int) -> None:
        nonlocal bar, first, last_log
        if bar is None:
            # Off a terminal the Dagster log lines below are the progress: no second copy on stderr.
            bar = progress_bar(total=total, initial=done, desc=desc, unit=unit, disable=not sys.stderr.isatty())
            first = done  # resumed work is not part of this run's rate
        else:
            bar.update(done - bar.n)
        now = time.monotonic()
        if done == total or (done > first and now - last_log >= every_s):
            last_log = now
            rate = (done - first) / max(now - start, 1e-9)
            context.log.info(f"{desc}: {done}/{total} {unit}s ({rate:.1f}/s)")

    try:
        yield report
    finally:
        if bar is not None:
            bar.close()
