"""The FFE asset graph: `dagster dev` and `dagster definitions validate` load `defs` from here
(see `[tool.dagster]` in pyproject.toml); `dagster asset list -m pipelines.definitions` too."""

from __future__ import annotations

import os

import dagster as dg

from pipelines.defs import annotation, curation, generation, ingest, model, release
from pipelines.resources import (
    FFEStorage,
    GeneratorResource,
    PixelSmileResource,
    PrelabelScorerResource,
    default_input_dir,
    default_workdir,
    generator_from_env,
    label_studio_from_env,
    pixelsmile_from_env,
    prelabel_scorer_from_env,
)

ASSETS = [
    ingest.raw_images,
    curation.faces,
    curation.face_embeddings,
    curation.identities,
    annotation.prelabels,
    generation.expression_variants,
    annotation.annotation_tasks,
    annotation.annotations,
    annotation.affect_scores,
    release.release_plan,
    release.ffe_release,
    release.ffe_shards,
    model.pixelsmile_lora,
    model.ffe_bench,
]
CHECKS = [release.shards_verified, model.bench_regression]

# Ingest and curate one batch: every asset partitioned by batch but generation (which needs the
# batch's identities, and a generator). The assets across all batches (identities) follow by
# declarative automation (the daemon) or `ffe build`.
batch_job = dg.define_asset_job(
    ingest.BATCH_JOB,
    selection=dg.AssetSelection.assets(
        *[a for a in ASSETS if a.partitions_def == ingest.ingest_batches and a is not generation.expression_variants]
    ),
    description="Ingest and curate one batch of input files.",
)


def build_definitions(
    workdir: str | None = None,
    input_dir: str | None = None,
    pixelsmile: PixelSmileResource | None = None,
    *,
    generator: GeneratorResource | None = None,
    prelabel_scorer: PrelabelScorerResource | None = None,
    domain: str | None = None,
    pre_cropped: bool | None = None,
) -> dg.Definitions:
    """The graph over one work folder; defaults from $FFE_WORKDIR, $FFE_INPUT, $FFE_INPUT_DOMAIN,
    $FFE_INPUT_PRE_CROPPED and the $FFE_TRAIN_* / $FFE_JUDGE variables (pipelines/resources.py)."""
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[batch_job, annotation.annotation_sync_job, release.release_job, model.model_job, model.bench_job],
        sensors=[ingest.new_input_files, annotation.annotation_sync, release.new_release, model.verified_release],
        schedules=[model.nightly_bench],
        resources={
            "ffe": FFEStorage(
                workdir=workdir or default_workdir(),
                input_dir=default_input_dir() if input_dir is None else input_dir,
                domain=domain or os.environ.get("FFE_INPUT_DOMAIN", "real"),
                pre_cropped=os.environ.get("FFE_INPUT_PRE_CROPPED", "") == "1" if pre_cropped is None else pre_cropped,
            ),
            "label_studio": label_studio_from_env(),
            "pixelsmile": pixelsmile or pixelsmile_from_env(),
            "generator": generator or generator_from_env(),
            "prelabel_scorer": prelabel_scorer or prelabel_scorer_from_env(),
            # Training runs in its own process; on Kubernetes: dagster_k8s.PipesK8sClient (docs).
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        },
    )


defs = build_definitions()
