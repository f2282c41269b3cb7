"""The model: each verified release trains PixelSmile and benches it, with no one asking.

`verified_release` launches `model_job` (train, then bench) for each release whose shards passed
their blocking check, once (run key = version). `pixelsmile_lora` trains in its own process through
Dagster Pipes (`accelerate launch`; on a cluster, PipesK8sClient: docs/scale.md), in the
`gpu` pool; `ffe_bench` benches the result into the leaderboard; `bench_regression` flags a release
whose model got worse than the previous release's beyond the noise. `nightly_bench` reruns the
bench of the latest model (a new run only when the judge, tasks or code changed).
A crashed or NaN training run and a failed bench are recorded in `bench_runs` as failed, with
their reason; they never rank.
"""

# No `from __future__ import annotations` here: Dagster reads the config and resource
# annotations of asset functions at definition time.
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from pipelines import model
from pipelines.defs.metadata import tidy
from pipelines.defs.release import ffe_shards, releases, shards_verified
from pipelines.defs.writers import one_writer
from pipelines.errors import FFEError
from pipelines.instance import GPU_POOL, REBUILD_TAG
from pipelines.resources import FFEStorage, PixelSmileResource
from pixelsmile.train import OUTCOME, PARENT_ENV, TrainConfig, parent_token, read_outcome
from storage import tables
from storage.leaderboard import record_run, regression
from storage.releases.build import read_manifest
from storage.releases.plan import planned_versions


def _recipe(pixelsmile: PixelSmileResource) -> dict:
    try:
        return model.load_recipe(pixelsmile.recipe)
    except FFEError as err:
        raise dg.Failure(str(err)) from None


def _nothing_to_train(manifest: dict | None, recipe: dict) -> str | None:
    if not manifest or not manifest.get("complete"):
        return "the release is not built (no complete manifest)"
    triplets = manifest["counts"]["triplets"]["train"]
    batch = int(recipe.get("batch_size", TrainConfig.batch_size))
    if triplets < batch:
        return (f"the release has {triplets} training triplets, fewer than one batch of {batch} "
                "(too few identities with two expressions of a confusable pair)")  # fmt: skip
    return None


@dg.asset(
    partitions_def=releases,
    deps=[ffe_shards],
    group_name="model",
    kinds={"pytorch", "accelerate"},
    pool=GPU_POOL,
    description="PixelSmile trained on the release (`runs/<version>/train-<recipe>/final/`), in its own "
    "process through Dagster Pipes; resumes from its latest checkpoint.",
)
@one_writer
def pixelsmile_lora(
    context: dg.AssetExecutionContext,
    ffe: FFEStorage,
    pixelsmile: PixelSmileResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    layout, version = ffe.layout, context.partition_key
    recipe = _recipe(pixelsmile)
    if why := _nothing_to_train(read_manifest(layout, version), recipe):
        context.log.info(f"pixelsmile_lora {version}: {why}: nothing trained")
        return dg.MaterializeResult(metadata={"skipped": why})
    name = model.model_name(recipe)
    try:
        config = model.training_config(layout, version, recipe)
        out = Path(config.output_dir)
        if context.run.tags.get(REBUILD_TAG) and out.exists():  # `ffe build --rebuild`: afresh, the old run kept
            kept = out.with_name(f"replaced-{out.name}-{datetime.now(UTC):%Y%m%dT%H%M%S}")
            out.rename(kept)
            context.log.info(f"training {name} on {version} afresh (--rebuild); the previous run moved to {kept}")
        command = model.launch_command(model.write_training_config(config), pixelsmile.launcher, pixelsmile.processes)
    except FFEError as err:
        raise dg.Failure(str(err)) from None
    (out / OUTCOME).unlink(missing_ok=True)  # this launch's outcome, not the last one's
    context.log.info(f"training {name} on {version}: {' '.join(command)}")
    try:
        # The trainer stops when this process does (a build killed with SIGKILL leaves no orphan
        # training beside the next build's).
        invocation = pipes_subprocess_client.run(command=command, context=context, env={PARENT_ENV: parent_token()})
    except DagsterPipesExecutionError as err:
        outcome = read_outcome(out)
        reason = (outcome or {}).get("error") or f"{err} (see the run's stderr)"
        record_run(layout, f"{version}-train-{context.run.run_id[:8]}", release=version, model=name,
                   reason=f"training: {reason}")  # fmt: skip
        raise dg.Failure(f"training {name} on release {version} failed: {reason}") from None
    reported = invocation.get_materialize_result().metadata or {}
    return dg.MaterializeResult(metadata=tidy({**reported, "model": name, "folder": dg.MetadataValue.path(str(out))}))


@dg.asset(
    partitions_def=releases,
    deps=[pixelsmile_lora],
    group_name="model",
    kinds={"python", "duckdb"},
    description="FFE-Bench of the release's trained model on its bench split: `runs/<version>/<run>/bench/` "
    "(metrics, plots, report.html) and a `bench_runs` row, which the leaderboard ranks.",
)
@one_writer
def ffe_bench(
    context: dg.AssetExecutionContext, ffe: FFEStorage, pixelsmile: PixelSmileResource
) -> dg.MaterializeResult:
    from pixelsmile.bench.judges import judge_named
    from pixelsmile.bench.run import git_commit, no_edit

    layout, version = ffe.layout, context.partition_key
    manifest, recipe = read_manifest(layout, version), _recipe(pixelsmile)
    if why := _nothing_to_train(manifest, recipe) or (
        None if manifest["counts"]["splits"]["bench"]["faces"] else "the release has no bench split"
    ):
        context.log.info(f"ffe_bench {version}: {why}: nothing benched")
        return dg.MaterializeResult(metadata={"skipped": why})
    config = model.training_config(layout, version, recipe)
    trained = model.trained_model(config, recipe)
    if trained is None:
        raise dg.Failure(f"release {version} has no finished training run in {config.output_dir}: "
                         "materialize pixelsmile_lora first")  # fmt: skip
    try:
        judge = judge_named(pixelsmile.judge, pixelsmile.vlm_path)
    except ValueError as err:
        raise dg.Failure(str(err)) from None
    settings, commit = pixelsmile.bench_settings(), git_commit()
    judge_id = f"{judge.name}@{judge.version}"
    run_id = model.bench_run_id(version, trained.digest, judge_id, settings.digest(), commit)
    # The no-edit baseline on the same tasks and judge first: where "changed nothing" lands on this
    # release, drawn beside the model in its report.
    baseline_id = model.bench_run_id(version, "no-edit", judge_id, settings.digest(), commit)
    baseline = _bench_once(context, version, baseline_id, "no-edit", lambda: no_edit, judge, settings, "baseline")
    # The base editor the recipe fine-tunes, prompted without training (the paper's "PixelSmile
    # without training"): what the fine-tuning adds is the distance between these two rows.
    base_id = None
    if base := model.base_editor(config):
        base_id = model.bench_run_id(version, base.digest, judge_id, settings.digest(), commit)
        _bench_once(context, version, base_id, base.name, lambda: base.editor(config), judge, settings, "baseline")
    row = _bench_once(context, version, run_id, trained.name, lambda: trained.editor(config), judge, settings)
    folder = layout.runs / version / run_id / "bench"
    return dg.MaterializeResult(
        metadata=tidy({
            "run_id": run_id,
            "baseline_run_id": baseline_id,  # `ffe check` finds these rows (tables/bench_runs/<id>.parquet)
            "base_run_id": base_id,  # the base editor untrained, when the recipe fine-tunes one
            "model": trained.name,
            "judge": judge_id,
            **{k: row[k] for k in ("mscr", "acc12", "cls12", "id_sim", "hes")},
            "tasks": row["tasks"],
            "edits": row["edits"],
            "no_edit_hes": baseline["hes"],
            "metrics": dg.MetadataValue.md(_metrics_table(row, baseline)),
            # A link (file://) in the UI: open it in a browser on this machine.
            "report": dg.MetadataValue.url((folder / "report.html").resolve().as_uri()),
        })
    )  # fmt: skip


def _metrics_table(row: dict, baseline: dict) -> str:
    """The run's headline metrics beside the no-edit baseline's, as a Markdown table."""
    import json

    from pixelsmile.bench.report import number
    from pixelsmile.metrics import DEFINITIONS, better
    from storage.schemas import BENCH_METRICS

    ci = json.loads(row.get("ci95") or "{}")
    lines = ["| metric | better | this model | 95% interval | no-edit | what it measures |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name in ("mSCR", "Acc-6", "Acc-12", "CLS-6", "CLS-12", "ID Sim", "HES"):
        col = BENCH_METRICS[name]
        low, high = ci.get(name, (None, None))
        interval = f"{number(low, 3)} – {number(high, 3)}" if low is not None else ""
        lines.append(f"| {name} | {better(name)} | {number(row[col])} | {interval} | {number(baseline[col])} | "
                     f"{DEFINITIONS[name]} |")  # fmt: skip
    return "\n".join(lines)


def _bench_once(context, version, run_id, name, editor, judge, settings, kind="measured") -> dict:
    """The row of bench run `run_id`: recorded before (the same inputs), or run and recorded now.
    `editor` is called only when the run is new (loading a model costs)."""
    from pixelsmile.bench.run import BenchError, bench_and_record

    layout = context.resources.ffe.layout
    if tables.has_partition(layout, "bench_runs", run_id):
        (row,) = tables.read_partition(layout, "bench_runs", run_id).to_pylist()
        if row["status"] != "ok":
            raise dg.Failure(f"bench run {run_id} ({name}) failed before with the same model, judge, tasks and "
                             f"code: {row['reason']}")  # fmt: skip
        context.log.info(f"ffe_bench {version}: nothing changed since bench run {run_id} ({name}): it stands")
        return row
    try:
        return bench_and_record(layout, version, run_id, name, editor(), judge, settings, kind=kind)
    except BenchError as err:
        raise dg.Failure(f"bench of {name} on {version} failed (recorded as run {run_id}): {err}") from None


@dg.asset_check(
    asset=ffe_bench,
    partitions_def=releases,
    blocking=False,
    description="The model trained on this release against the previous release's (same recipe and judge): "
    "fails (a warning) when a headline metric got worse beyond both runs' 95% intervals.",
)
def bench_regression(context: dg.AssetCheckExecutionContext, ffe: FFEStorage, pixelsmile: PixelSmileResource):
    layout, version = ffe.layout, context.partition_key
    found = regression(layout, version, model.model_name(_recipe(pixelsmile)), planned_versions(layout))
    for change in found["worse"]:
        context.log.warning(f"{change['metric']}: {change['before']:.4f} on {found['previous']} -> "
                            f"{change['now']:.4f} on {version}, beyond the noise")  # fmt: skip
    return dg.AssetCheckResult(
        passed=not found["worse"],
        severity=dg.AssetCheckSeverity.WARN,
        metadata=tidy({
            "previous_release": found["previous"] or "none",
            "worse": [c["metric"] for c in found["worse"]],
            "better": [c["metric"] for c in found["better"]],
            "details": found,
        }),  # fmt: skip
    )


model_job = dg.define_asset_job(
    "model_job",
    selection=dg.AssetSelection.assets(pixelsmile_lora, ffe_bench),
    description="Train PixelSmile on one release, then bench it into the leaderboard.",
)
bench_job = dg.define_asset_job(
    "bench_job", selection=dg.AssetSelection.assets(ffe_bench), description="Bench one release's trained model."
)


def shards_passed(instance: dg.DagsterInstance, version: str) -> bool:
    """Whether the latest `shards_verified` evaluation of this release passed."""
    records = instance.event_log_storage.get_asset_check_execution_history(
        shards_verified.check_key, limit=1, partition_filter=PartitionKeyFilter(key=version)
    )
    return bool(records) and records[0].status == AssetCheckExecutionRecordStatus.SUCCEEDED


@dg.sensor(
    job=model_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches training and bench for each release whose shards passed verification, once.",
)
def verified_release(context: dg.SensorEvaluationContext, ffe: FFEStorage) -> dg.SensorResult | dg.SkipReason:
    instance = context.instance
    trained = instance.get_materialized_partitions(pixelsmile_lora.key)
    known = instance.get_dynamic_partitions(releases.name)
    built = [v for v in known if (read_manifest(ffe.layout, v) or {}).get("complete")]
    ready = [v for v in built if v not in trained and shards_passed(instance, v)]
    if not ready:
        return dg.SkipReason("no verified release without a model")
    # The run key makes it once per release: a failed training is retried by a person, not a loop.
    return dg.SensorResult(run_requests=[dg.RunRequest(partition_key=v, run_key=f"model-{v}") for v in ready])


@dg.schedule(
    job=bench_job,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly: bench the latest release's model again (a new run only when the judge, the "
    "bench config or the code changed since; otherwise its result stands).",
)
def nightly_bench(context: dg.ScheduleEvaluationContext, ffe: FFEStorage):
    trained = context.instance.get_materialized_partitions(pixelsmile_lora.key)
    latest = [v for v in planned_versions(ffe.layout) if v in trained]
    if not latest:
        return dg.SkipReason("no release has a trained model yet")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return dg.RunRequest(partition_key=latest[-1], run_key=f"nightly-{day}")
