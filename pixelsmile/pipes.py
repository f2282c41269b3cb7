"""Talking to Dagster when training runs under it (Dagster Pipes), and to nobody otherwise.

The training asset launches `pixelsmile train` (through `accelerate launch`) with Dagster Pipes'
context in the environment; the trainer then streams its progress into the run's logs and reports
what it made as the asset's metadata. Outside Dagster, and in every process but the main one, the
reporter says nothing: the training code needs no Dagster at all.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

PIPES_CONTEXT = "DAGSTER_PIPES_CONTEXT"  # set by Dagster's Pipes clients


class ChannelClosed(RuntimeError):
    """Dagster Pipes' message channel is gone: nobody hears this process any more."""


class Reporter:
    def __init__(self, pipes=None):
        self._pipes = pipes

    @property
    def active(self) -> bool:
        return self._pipes is not None

    def log(self, message: str) -> None:
        if self._pipes is not None:
            self._said(lambda: self._pipes.log.info(message))

    def materialized(self, metadata: dict[str, Any]) -> None:
        if self._pipes is not None:
            self._said(lambda: self._pipes.report_asset_materialization(metadata=metadata))

    @staticmethod
    def _said(send) -> None:
        """Send one message; the channel gone (its temporary file removed) means the run that
        launched this process has ended: said so, not as a bare "No such file" naming a temp file."""
        try:
            send()
        except OSError as err:
            raise ChannelClosed(f"the Dagster run that launched this training stopped listening ({err.strerror}): "
                                "it was interrupted or has ended") from None


def main_process() -> bool:
    """Under `accelerate launch` every process gets RANK; only rank 0 speaks."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def reporter() -> Iterator[Reporter]:
    if PIPES_CONTEXT not in os.environ or not main_process():
        yield Reporter()
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        yield Reporter(pipes)
