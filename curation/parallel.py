"""Run a function over items in worker processes, results in input order.

Workers are started with forkserver (forking a process that runs Dagster's threads is not safe).
A worker keeps what it loads in module globals, so a model is loaded once per worker, not per item.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

# Modules whose functions run in worker processes (see ordered_map).
WORKER_MODULES = ("curation.ingest", "curation.curate", "curation.embeddings")

# The cores this process may use: set by `ffe build --workers N` in each of its N processes.
CORES_ENV = "FFE_CORES"

T = TypeVar("T")
R = TypeVar("R")


def worker_count(requested: int, n_items: int, items_per_worker: int) -> int:
    """`requested` workers if set (> 0); else one per core (`cores()`), as far as the work pays for starting
    them: auto mode gives each worker at least `items_per_worker` items (a worker's start, imports
    and model loading cost a fraction of a second)."""
    if requested > 0:
        return max(1, min(requested, n_items))
    return max(1, min(cores(), n_items // items_per_worker))


def cores() -> int:
    """The cores this process may use: $FFE_CORES if set (its share under `ffe build --workers`),
    else the machine's."""
    try:
        return max(1, int(os.environ.get(CORES_ENV, "")))
    except ValueError:
        return os.cpu_count() or 1


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, chunksize: int = 4) -> Iterator[R]:
    """`map(fn, items)` on `workers` processes (in this process when `workers` <= 1). `fn` must be
    picklable (a module-level function or a functools.partial of one)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    ctx = get_context("forkserver")
    # The fork server (one per process, started by the first pool) imports the worker modules
    # once; every worker forks from it with the heavy imports (OpenCV, MediaPipe, dlib, pyarrow)
    # done, so a pool starts in a fraction of a second. It must know all of them at its start.
    module = getattr(getattr(fn, "func", fn), "__module__", None)
    extra = [module] if module and module != "__main__" and module not in WORKER_MODULES else []
    ctx.set_forkserver_preload([*WORKER_MODULES, *extra])
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        yield from pool.map(fn, items, chunksize=chunksize)
    finally:  # on an error or interrupt, drop the items not yet started
        pool.shutdown(wait=True, cancel_futures=True)
