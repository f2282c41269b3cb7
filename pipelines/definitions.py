"""The FFE asset graph: `dagster dev` and `dagster definitions validate` load `defs` from here
(see `[tool.dagster]` in pyproject.toml); `dagster asset list -m pipelines.definitions` too."""

from __future__ import annotations

import dagster as dg

from pipelines.defs import ingest
from pipelines.resources import FFEStorage, default_input_dir, default_workdir


def build_definitions(workdir: str | None = None, input_dir: str | None = None) -> dg.Definitions:
    """The graph over one work folder; defaults from $FFE_WORKDIR and $FFE_INPUT."""
    return dg.Definitions(
        assets=[ingest.raw_images],
        jobs=[ingest.ingest_job],
        sensors=[ingest.new_input_files],
        resources={
            "ffe": FFEStorage(
                workdir=workdir or default_workdir(),
                input_dir=default_input_dir() if input_dir is None else input_dir,
            )
        },
    )


defs = build_definitions()
