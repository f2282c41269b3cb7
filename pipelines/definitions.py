"""The FFE asset graph: `dagster dev` and `dagster definitions validate` load `defs` from here
(see `[tool.dagster]` in pyproject.toml); `dagster asset list -m pipelines.definitions` too."""

from __future__ import annotations

import dagster as dg

from pipelines.defs import annotation, curation, ingest, release
from pipelines.resources import FFEStorage, default_input_dir, default_workdir, label_studio_from_env

ASSETS = [
    ingest.raw_images,
    curation.faces,
    curation.face_embeddings,
    curation.identities,
    annotation.prelabels,
    annotation.annotation_tasks,
    annotation.annotations,
    annotation.affect_scores,
    release.release_plan,
    release.ffe_release,
    release.ffe_shards,
]
CHECKS = [release.shards_verified]

# Ingest and curate one batch: every asset partitioned by batch. The assets across all batches
# (identities) follow by declarative automation (the daemon) or `ffe build`.
batch_job = dg.define_asset_job(
    ingest.BATCH_JOB,
    selection=dg.AssetSelection.assets(*[a for a in ASSETS if a.partitions_def == ingest.ingest_batches]),
    description="Ingest and curate one batch of input files.",
)


def build_definitions(workdir: str | None = None, input_dir: str | None = None) -> dg.Definitions:
    """The graph over one work folder; defaults from $FFE_WORKDIR and $FFE_INPUT."""
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[batch_job, annotation.annotation_sync_job, release.release_job],
        sensors=[ingest.new_input_files, annotation.annotation_sync, release.new_release],
        resources={
            "ffe": FFEStorage(
                workdir=workdir or default_workdir(),
                input_dir=default_input_dir() if input_dir is None else input_dir,
            ),
            "label_studio": label_studio_from_env(),
        },
    )


defs = build_definitions()
