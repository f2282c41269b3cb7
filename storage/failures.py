"""One item's failure never fails its partition: every per-item loop (ingest, faces, embeddings,
pre-labels, label rows, generation requests) turns an item's exception into a `failures` row that
names the item, the stage and the exception, and goes on with the rest.

Only the work folder's own faults (`StorageError`: a full disk, lost permissions) still stop a stage:
every later item would fail the same way, and what is done is kept for the rerun.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storage.errors import StorageError

UNEXPECTED = "unexpected_error"  # the reason of an exception nobody anticipated: a bug or an odd input


class ItemError(Exception):
    """An anticipated problem of one item, with its reason code (e.g. `unreadable_crop`)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def failure_row(stage: str, partition: str, item: str, reason: str, detail: str) -> dict:
    """A `failures` row (storage/schemas.py)."""
    return dict(item=item, stage=stage, reason=reason, detail=detail[:2000], partition=partition, at=datetime.now(UTC))


def describe(err: BaseException) -> str:
    """`TypeError: message (at module.py:123 in function)`: the exception and where it was raised."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(err).__name__}: {' '.join(str(err).split()) or '(no message)'}{where}"


def row_for(stage: str, partition: str, item: str, err: Exception) -> dict:
    if isinstance(err, ItemError):
        return failure_row(stage, partition, item, err.reason, err.detail)
    return failure_row(stage, partition, item, UNEXPECTED, describe(err))


@dataclass(frozen=True)
class Isolated:
    """`fn(item)` so that an exception for one item becomes `(None, failure row)` instead of ending
    the loop; a result is `(result, None)`. Picklable, so it runs in worker processes too."""

    fn: Callable[[Any], Any]
    stage: str
    partition: str
    item_id: Callable[[Any], str]

    def __call__(self, item: Any) -> tuple[Any, dict | None]:
        try:
            return self.fn(item), None
        except StorageError:
            raise
        except Exception as err:  # one item's problem, whatever it is
            return None, row_for(self.stage, self.partition, self.item_id(item), err)


class StageFailed(RuntimeError):
    """Every item of a partition failed unexpectedly: most likely not the items but the code or the
    environment (a broken model, a wrong setting). The rows are in `failures`; the stage fails."""


def fail_if_all_failed(stage: str, partition: str, items: int, rows: Iterable[Mapping]) -> None:
    """Raise StageFailed when each of `items` (> 0) items has an `unexpected_error` row."""
    unexpected = [r for r in rows if r["reason"] == UNEXPECTED]
    if items and len({r["item"] for r in unexpected}) >= items:
        first = unexpected[0]
        raise StageFailed(f"{stage}: every one of the {items} item(s) of {partition} failed unexpectedly, "
                          f"e.g. {first['item']}: {first['detail']} (all in the failures table)")  # fmt: skip
