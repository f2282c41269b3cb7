"""Progress of long work: a tqdm bar on a terminal, plain periodic lines anywhere else.

tqdm redraws its bar with carriage returns; in a log file or a CI console every redraw becomes one
more frame of text (a demo log was mostly such frames). Where the stream is not a terminal we print
one line every `every_s` seconds and one at the end instead:

    bench: 24/60 tasks (40%), 1.9 tasks/s, 19 s left
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


class PlainProgress:
    """The part of tqdm's interface our loops use (iterate, update, set_postfix, close, n), as lines."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        every_s: float = 10.0,
        file: TextIO | None = None,
    ) -> None:
        self.iterable, self.desc, self.unit, self.every_s = iterable, desc, unit, every_s
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable) + initial
        self.total, self.n, self.first = total, initial, initial
        self.file = file or sys.stderr
        self.start = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._print()

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(values or {}), **kwargs}.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.first:
                self._print()

    def _print(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.n - self.first) / elapsed
        units = self.unit if self.unit.endswith("s") else f"{self.unit}s"
        line = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {units}"
        if self.total:
            line += f" ({self.n / self.total:.0%})"
        line += f", {rate:.3g} {units}/s"
        if self.total and rate > 0 and self.n < self.total:
            line += f", {(self.total - self.n) / rate:.0f} s left"
        if self.postfix:
            line += f", {self.postfix}"
        print(line, file=self.file, flush=True)


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    every_s: float = 10.0,
    file: TextIO | None = None,
):
    """A tqdm bar where `file` (default stderr) is a terminal, else `PlainProgress` lines; with
    `disable`, a silent one. Use it as tqdm: iterate over it, or call update()/close()."""
    file = file or sys.stderr
    if disable or not _is_terminal(file):
        if disable:
            file = _Silent()
        return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, every_s=every_s, file=file)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file, dynamic_ncols=True)


def _is_terminal(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


class _Silent:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
