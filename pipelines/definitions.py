"""The FFE asset graph: `dagster dev` and `dagster definitions validate` load `defs` from here
(see `[tool.dagster]` in pyproject.toml); `dagster asset list -m pipelines.definitions` too."""

from __future__ import annotations

import os

import dagster as dg

from pipelines import settings as ffe_settings
from pipelines.defs import annotation, curation, generation, ingest, model, release
from pipelines.defs.automation import automation_sensor
from pipelines.resources import (
    GeneratorResource,
    PixelSmileResource,
    PrelabelScorerResource,
    default_workdir,
    resources_from_settings,
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
variants_job = dg.define_asset_job(
    "variants_job",
    selection=dg.AssetSelection.assets(generation.expression_variants),
    description="Expression variants of one batch's faces (when a generator is configured).",
)
across_batches_job = dg.define_asset_job(
    "across_batches_job",
    selection=dg.AssetSelection.assets(*[a for a in ASSETS if a.partitions_def is None]),
    description="The assets across all batches: identities, annotation, affect scores and the release plan "
    "(the daemon runs them by declarative automation).",
)
# Every asset is in one of these, in the order data flows: `ffe build` runs each step under its job.
JOBS = [batch_job, variants_job, across_batches_job, release.release_job, model.model_job]


def build_definitions(
    workdir: str | None = None,
    input_dir: str | None = None,
    pixelsmile: PixelSmileResource | None = None,
    *,
    generator: GeneratorResource | None = None,
    prelabel_scorer: PrelabelScorerResource | None = None,
    domain: str | None = None,
    pre_cropped: bool | None = None,
    settings: ffe_settings.Effective | None = None,
    whole_images: bool | None = None,
) -> dg.Definitions:
    """The graph over one work folder, its resources from the folder's settings (`settings`, else
    <workdir>/settings.yaml or $FFE_SETTINGS, with $FFE_* overrides: pipelines/settings.py). The
    other arguments override single resources or values (tests, `ffe build`'s flags)."""
    if settings is None:
        flags = {"input.folder": input_dir or None, "input.domain": domain, "input.pre_cropped": pre_cropped,
                 "input.whole_images": whole_images}  # fmt: skip
        settings = ffe_settings.load(workdir or default_workdir(), file=os.environ.get("FFE_SETTINGS") or None,
                                     flags=flags)  # fmt: skip
    resources = resources_from_settings(settings)
    resources.update({k: v for k, v in {"pixelsmile": pixelsmile, "generator": generator,
                                         "prelabel_scorer": prelabel_scorer}.items() if v is not None})  # fmt: skip
    # Training runs in its own process; on Kubernetes: dagster_k8s.PipesK8sClient (docs).
    resources["pipes_subprocess_client"] = dg.PipesSubprocessClient()
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[*JOBS, annotation.annotation_sync_job, model.bench_job],
        sensors=[ingest.new_input_files, automation_sensor, annotation.annotation_sync, release.new_release,
                 model.verified_release],  # fmt: skip
        schedules=[model.nightly_bench],
        resources=resources,
    )


defs = build_definitions()
