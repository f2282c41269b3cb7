"""Releases: affect scores + identities -> a versioned dataset release with WebDataset shards.

`release_plan` runs after every change of the labels whose blocking checks passed; it computes the
version the current tables give and, when it is new, writes its plan. Each planned version is a
partition of `releases`: the `new_release` sensor adds it and launches `ffe_release` then
`ffe_shards` for it, once (the version is the run key). `shards_verified` re-reads every shard and
blocks whatever trains on a release whose bytes do not match its manifest.
"""

# No `from __future__ import annotations` here: Dagster reads the config and resource
# annotations of asset functions at definition time.
import dagster as dg
from pydantic import Field, model_validator

from pipelines.defs.annotation import affect_scores
from pipelines.defs.automation import after_upstream
from pipelines.defs.checked import domain_checked
from pipelines.defs.curation import identities
from pipelines.defs.metadata import tidy
from pipelines.defs.writers import one_writer
from pipelines.progress import progress_reporter
from pipelines.resources import FFEStorage
from storage.releases.build import build_release, read_manifest
from storage.releases.config import ReleaseConfig
from storage.releases.plan import plan_release, planned_versions, write_plan
from storage.releases.shards import write_shards
from storage.releases.verify import verify_release

releases = dg.DynamicPartitionsDefinition(name="releases")

_DEFAULTS = ReleaseConfig()
NOTHING_TO_RELEASE = "no release-eligible face has a score yet: nothing to release"


class ReleaseSettings(dg.Config):
    """Run config of `release_plan`: every field enters the version (defaults: ReleaseConfig)."""

    val_fraction: float = Field(_DEFAULTS.val_fraction, description="share of identities in val")
    bench_fraction: float = Field(_DEFAULTS.bench_fraction, description="share of identities held out for the bench")
    split_salt: str = Field(_DEFAULTS.split_salt, description="changes every identity's split when changed")
    score_decimals: int = Field(_DEFAULTS.score_decimals, description="scores are rounded to this many decimals")
    domains: list[str] = Field(list(_DEFAULTS.domains), description="real and/or anime")
    min_target_score: float = Field(_DEFAULTS.min_target_score, description="a triplet target's least dominant score")
    intensity_bins: int = Field(_DEFAULTS.intensity_bins, description="equal-width bins balanced in triplets")
    pairs: list[list[str]] = Field([list(p) for p in _DEFAULTS.pairs], description="confusable category pairs")
    extra_pairs: int = Field(_DEFAULTS.extra_pairs, description="pairs added from the score correlations")
    min_pair_correlation: float = Field(_DEFAULTS.min_pair_correlation, description="for an added pair")
    max_triplets_per_pair: int = Field(_DEFAULTS.max_triplets_per_pair, description="per identity and pair")
    triplet_seed: int = Field(_DEFAULTS.triplet_seed, description="fixes the triplets of triplets.jsonl")
    shard_target_mb: float = Field(_DEFAULTS.shard_target_bytes / 1e6, description="WebDataset shard size, MB")
    missing_crop: str = Field(_DEFAULTS.missing_crop, description="skip: leave such faces out (recorded); fail")
    provenances: list[str] = Field(list(_DEFAULTS.provenances), description="real and/or generated faces")
    max_generated_per_real: float = Field(
        _DEFAULTS.max_generated_per_real, description="generated faces per real face of an identity; 0: no cap"
    )

    @model_validator(mode="after")
    def _valid(self) -> "ReleaseSettings":
        """Fractions, domains, pairs ...: ReleaseConfig's own checks, before any run."""
        return domain_checked(self, self._release_config)

    def _release_config(self) -> ReleaseConfig:
        values = self.model_dump()
        values["shard_target_bytes"] = int(values.pop("shard_target_mb") * 1e6)
        return ReleaseConfig.from_json(values)

    def release_config(self) -> ReleaseConfig:
        try:
            return self._release_config()
        except ValueError as err:
            raise dg.Failure(str(err)) from None


@dg.asset(
    deps=[affect_scores, identities],
    group_name="release",
    kinds={"parquet", "python"},
    automation_condition=after_upstream() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
    description="The release version the current labels give (a hash of faces, scores and config); "
    "writes its plan when the version is new.",
)
@one_writer
def release_plan(context: dg.AssetExecutionContext, config: ReleaseSettings, ffe: FFEStorage) -> dg.MaterializeResult:
    plan = plan_release(ffe.layout, config.release_config())
    if plan.faces.num_rows == 0:
        context.log.info(f"release_plan: {NOTHING_TO_RELEASE}")
        return dg.MaterializeResult(metadata={"skipped": NOTHING_TO_RELEASE, "missing_crops": len(plan.missing_crops)})
    labels = context.instance.get_latest_materialization_event(affect_scores.key)
    new = write_plan(ffe.layout, plan, {"affect_scores_run_id": labels.run_id if labels else None})
    context.log.info(f"release {plan.version}: {'new plan' if new else 'unchanged, planned before'} {plan.counts()}")
    return dg.MaterializeResult(
        metadata=tidy({
            "version": plan.version,
            "new": new,
            **plan.counts(),
            "missing_crops": len(plan.missing_crops),
            "dagster/row_count": plan.faces.num_rows,
        }
    ))


@dg.asset(
    partitions_def=releases,
    deps=[release_plan],
    group_name="release",
    kinds={"parquet", "json"},
    description="`releases/<version>/`: images, splits.parquet, triplets.jsonl (PixelSmile format), dataset card.",
)
@one_writer
def ffe_release(context: dg.AssetExecutionContext, ffe: FFEStorage) -> dg.MaterializeResult:
    version = context.partition_key
    with progress_reporter(context, f"release {version} images", unit="image") as report:
        manifest = build_release(ffe.layout, version, progress=report)
    counts = manifest["counts"]
    return dg.MaterializeResult(
        metadata={
            "faces": counts["faces"],
            "identities": counts["identities"],
            "splits": {s: v["faces"] for s, v in counts["splits"].items()},
            "triplets": counts["triplets"],
            "pairs_found": [" / ".join(p) for p in manifest["pairs"]["found"]],
            "missing_crops": manifest["missing_crops"],
            "card": dg.MetadataValue.path(str(ffe.layout.releases / version / "README.md")),
            "dagster/row_count": counts["faces"],
        }
    )


@dg.asset(
    partitions_def=releases,
    deps=[ffe_release],
    group_name="release",
    kinds={"webdataset"},
    description="WebDataset shards of the release (one sample per identity), index.parquet, _stats.json; "
    "completes manifest.json.",
)
@one_writer
def ffe_shards(context: dg.AssetExecutionContext, ffe: FFEStorage) -> dg.MaterializeResult:
    version = context.partition_key
    with progress_reporter(context, f"release {version} shards", unit="shard") as report:
        manifest = write_shards(ffe.layout, version, progress=report)
    shards = manifest["shards"]
    return dg.MaterializeResult(
        metadata={
            "shards": {s: len(v) for s, v in shards.items()},
            "bytes": sum(r["bytes"] for v in shards.values() for r in v),
            "samples": sum(r["samples"] for v in shards.values() for r in v),
        }
    )


@dg.asset_check(
    asset=ffe_shards,
    partitions_def=releases,
    blocking=True,
    description="Every shard re-read: sha256 and size as in the manifest, safe member names, samples as in "
    "index.parquet, each crop's sha256 as in splits.parquet, counts per split as in the manifest.",
)
def shards_verified(context: dg.AssetCheckExecutionContext, ffe: FFEStorage) -> dg.AssetCheckResult:
    problems = verify_release(ffe.layout, context.partition_key)
    for p in problems[:20]:
        context.log.error(p)
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": len(problems), "examples": problems[:20]})


release_job = dg.define_asset_job(
    "release_job",
    selection=dg.AssetSelection.assets(ffe_release, ffe_shards),
    description="Build one planned release: files, card, shards; then verify them.",
)


@dg.sensor(
    job=release_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds each planned release version as a partition and launches its build, once.",
)
def new_release(context: dg.SensorEvaluationContext, ffe: FFEStorage) -> dg.SensorResult | dg.SkipReason:
    layout = ffe.layout
    versions = planned_versions(layout)
    known = set(context.instance.get_dynamic_partitions(releases.name))
    new_partitions = [v for v in versions if v not in known]
    to_build = [v for v in versions if not (read_manifest(layout, v) or {}).get("complete")]
    if not new_partitions and not to_build:
        return dg.SkipReason("no new release planned")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=v, run_key=v) for v in to_build],
        dynamic_partitions_requests=[releases.build_add_request(new_partitions)] if new_partitions else [],
    )
