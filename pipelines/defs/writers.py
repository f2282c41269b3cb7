"""One writer per partition: every asset holds a lock on its partition of the work folder while it
computes, so runs that overlap (two `ffe build`, a build beside the daemon's runs, the multiprocess
executor) take turns on a partition instead of writing the same staging folder and tables at once.

The lock is per partition key, not per asset: the assets of one batch (or one release) share
staging files and folders, so a second run's `raw_images` must not rewrite a batch while the first
run's `faces` reads it. Assets without partitions share one lock (`across-batches`). A run that had
to wait says whom it waited for, then builds its partition from the same inputs: the same rows as
one clean build (every stage is deterministic and writes whole partitions atomically). Locks are
OS locks (py-filelock, storage/locks.py): a killed run releases them at once, and the next run
resumes from the staging chunks it left. docs/architecture.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import dagster as dg

from storage.locks import work_lock

ACROSS_BATCHES = "across-batches"
WAIT_S = 24 * 3600.0  # a run waits for the one ahead of it; Dagster's run monitoring bounds it


def one_writer(fn: Callable) -> Callable:
    """Decorate an asset function (under `@dg.asset`) that takes `context` and the `ffe` resource:
    its body runs holding the lock of its partition."""

    @functools.wraps(fn)  # Dagster reads the parameters through __wrapped__
    def locked(context, *args, **kwargs):
        ffe = kwargs["ffe"]
        partition = context.partition_key if context.has_partition_key else ACROSS_BATCHES
        asset = context.asset_key.to_user_string() if isinstance(context, dg.AssetExecutionContext) else fn.__name__

        def waiting(holder: str) -> None:
            context.log.info(f"{asset} {partition}: waiting for {holder}, which is writing this partition")

        with work_lock(ffe.layout, f"partition-{partition}", what=f"{asset} {partition}", timeout_s=WAIT_S,
                       on_wait=waiting):  # fmt: skip
            return fn(context, *args, **kwargs)

    return locked
