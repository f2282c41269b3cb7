"""Annotation: model pre-labels per batch -> the affect score of every face.

`affect_scores` takes the consensus of human annotations where a face has them (the Label Studio
sync fills `annotations`) and the model's pre-label elsewhere. Its checks block: a labeling round
with too little coverage or agreement cannot reach a release.
"""

# No `from __future__ import annotations` here: Dagster reads the config and resource
# annotations of asset functions at definition time.
import math

import dagster as dg
from pydantic import Field

from annotation.scores import build_affect_scores, prelabel_batch
from annotation.sync import push, sync
from pipelines.defs.automation import after_upstream
from pipelines.defs.curation import faces, identities
from pipelines.defs.ingest import ingest_batches
from pipelines.defs.metadata import tidy
from pipelines.defs.writers import one_writer
from pipelines.resources import FFEStorage, LabelStudioResource, PrelabelScorerResource

NO_SERVER = "no Label Studio URL configured: every face is labelled by its pre-label"


@dg.asset(
    partitions_def=ingest_batches,
    deps=[faces],
    group_name="annotation",
    kinds={"parquet", "python"},
    description="12 category scores per face: its imported label, else the configured scorer's (default: "
    "blendshapes through a FACS-based mapping + the expression classifier; or a VLM: docs/annotation.md).",
)
@one_writer
def prelabels(
    context: dg.AssetExecutionContext, ffe: FFEStorage, prelabel_scorer: PrelabelScorerResource
) -> dg.MaterializeResult:
    info = prelabel_batch(ffe.layout, context.partition_key, prelabel_scorer.build())
    return dg.MaterializeResult(metadata=tidy({**info, "dagster/row_count": info["faces"]}))


@dg.asset(
    deps=[prelabels, identities],
    group_name="annotation",
    kinds={"labelstudio", "python"},
    automation_condition=after_upstream(),
    description="Release-eligible faces pushed to Label Studio as tasks, pre-labels as predictions "
    "(idempotent by face_id).",
)
@one_writer
def annotation_tasks(
    context: dg.AssetExecutionContext, ffe: FFEStorage, label_studio: LabelStudioResource
) -> dg.MaterializeResult:
    if not label_studio.configured:
        return dg.MaterializeResult(metadata={"skipped": NO_SERVER})
    info = push(ffe.layout, label_studio.settings(ffe.layout))
    context.log.info(f"annotation_tasks: {info}")
    return dg.MaterializeResult(metadata=tidy(info))


@dg.asset(
    deps=[annotation_tasks],
    group_name="annotation",
    kinds={"labelstudio", "parquet"},
    # Eager too: without a server it completes at once, and affect_scores (eager) waits for it.
    automation_condition=after_upstream(),
    description="Annotations pulled from Label Studio: one row per annotator per face (the latest edit); "
    "malformed ones quarantined in `failures`.",
)
@one_writer
def annotations(
    context: dg.AssetExecutionContext, ffe: FFEStorage, label_studio: LabelStudioResource
) -> dg.MaterializeResult:
    if not label_studio.configured:
        return dg.MaterializeResult(metadata={"skipped": NO_SERVER})
    info = sync(ffe.layout, label_studio.settings(ffe.layout))
    context.log.info(f"annotations: {info}")
    return dg.MaterializeResult(metadata=tidy({**info, "dagster/row_count": info["annotations"]}))


annotation_sync_job = dg.define_asset_job(
    "annotation_sync_job",
    selection=dg.AssetSelection.assets("annotations", "affect_scores"),
    description="Pull annotations from Label Studio and recompute the affect scores.",
)


@dg.sensor(job=annotation_sync_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Every 5 minutes, pull new and edited annotations (when a server is configured).")  # fmt: skip
def annotation_sync(context: dg.SensorEvaluationContext, label_studio: LabelStudioResource):
    if not label_studio.configured:
        return dg.SkipReason(NO_SERVER)
    return dg.RunRequest()  # no run key: every tick pulls; the pull itself is idempotent


class AffectScoresConfig(dg.Config):
    min_coverage: float = Field(0.95, ge=0.0, le=1.0, description="share of release-eligible faces with a score")
    min_alpha: float = Field(0.6, ge=-1.0, le=1.0, description="Krippendorff's alpha (interval) per category, "
                             "human ratings")  # fmt: skip


COVERAGE = "coverage"
AGREEMENT = "agreement"


@dg.asset(
    deps=[prelabels, identities, annotations],
    group_name="annotation",
    kinds={"parquet", "python"},
    automation_condition=after_upstream(),
    description="The label of every face: consensus of its human annotations, else its model pre-label.",
    check_specs=[
        dg.AssetCheckSpec(COVERAGE, asset="affect_scores", blocking=True,
                          description="Release-eligible faces (in an identity, not a duplicate) have scores."),
        dg.AssetCheckSpec(AGREEMENT, asset="affect_scores", blocking=True,
                          description="Human raters agree (alpha per category) where faces have two or more; a "
                          "category whose alpha is undefined or whose scores hardly vary is reported, not judged."),
    ],
)  # fmt: skip
@one_writer
def affect_scores(
    context: dg.AssetExecutionContext, config: AffectScoresConfig, ffe: FFEStorage
) -> dg.MaterializeResult:
    report = build_affect_scores(ffe.layout)
    # Only an evaluable alpha can fail the gate: undefined (nobody's faces overlap, no variation) or
    # not meaningful (a category almost always 0) is reported with its reason, neither pass nor fail.
    evaluable = {c: a.value for c, a in report.alpha_detail.items() if a.evaluable}
    measured = {c: a for c, a in report.alpha.items() if not math.isnan(a)}
    low = {c: round(a, 3) for c, a in evaluable.items() if a < config.min_alpha}
    not_evaluable = {c: a.reason for c, a in report.alpha_detail.items() if not a.evaluable}
    context.log.info(f"affect_scores: {report.human} human, {report.model} model; coverage {report.coverage:.3f}")
    return dg.MaterializeResult(
        metadata=tidy({
            "faces": report.faces,
            "human": report.human,
            "model": report.model,
            "coverage": report.coverage,
            "alpha": {c: round(a, 4) for c, a in measured.items()},
            "icc2_two_busiest": {c: round(v, 4) for c, v in report.icc2.items() if not math.isnan(v)},
            "dagster/row_count": report.faces,
        }),
        check_results=[
            dg.AssetCheckResult(
                check_name=COVERAGE,
                passed=report.coverage >= config.min_coverage,
                metadata=tidy({
                    "eligible": report.eligible,
                    "covered": report.covered,
                    "coverage": report.coverage,
                    "min_coverage": config.min_coverage,
                }),
            ),  # fmt: skip
            dg.AssetCheckResult(
                check_name=AGREEMENT,
                passed=not low,
                metadata=tidy({
                    "below_min_alpha": low,
                    "evaluated_categories": len(evaluable),
                    "not_evaluable": not_evaluable,  # category -> reason (docs/annotation.md)
                    "per_category": {c: a.as_dict() for c, a in report.alpha_detail.items()},
                    "note": "" if evaluable else "no category can be evaluated yet (see not_evaluable)",
                }),
            ),
        ],
    )
