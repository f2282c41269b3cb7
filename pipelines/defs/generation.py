"""Generation: expression variants of a batch's curated faces, made by an editing model and sent
back as a new ingest batch (provenance `generated`), which curation, identities, pre-labels and
annotation treat as any other. Nothing happens until a generator is configured (the `generator`
resource: $FFE_GENERATOR_KIND, $FFE_GENERATOR_PATH ...): generation spends GPU time, so it runs
when asked (the UI, `ffe build`), in the `gpu` pool, within a budget per run.
"""

# No `from __future__ import annotations` here: Dagster reads the config and resource
# annotations of asset functions at definition time.
import dagster as dg
from pydantic import Field, model_validator

from curation.generation import GenerationSettings, generate_variants
from pipelines.defs.checked import domain_checked
from pipelines.defs.curation import identities
from pipelines.defs.ingest import ingest_batches
from pipelines.defs.metadata import tidy
from pipelines.defs.writers import one_writer
from pipelines.instance import GPU_POOL
from pipelines.progress import progress_reporter
from pipelines.resources import FFEStorage, GeneratorResource
from storage.schemas import CATEGORIES

_G = GenerationSettings()
NO_GENERATOR = "no generator configured ($FFE_GENERATOR_PATH, or the generator resource's model_path)"


class GenerationConfig(dg.Config):
    categories: list[str] = Field(list(CATEGORIES), description="target expressions")
    intensities: list[float] = Field(list(_G.intensities), description="requested intensities, in (0, 1.5]")
    seeds: list[int] = Field(list(_G.seeds), description="one variant per seed per request")
    max_variants: int = Field(_G.max_variants, ge=0, description="new variants this run at most (the budget)")
    max_sources: int = Field(0, ge=0, description="source faces of the batch at most; 0: all")

    @model_validator(mode="after")
    def _valid(self) -> "GenerationConfig":
        return domain_checked(self, self._settings)

    def _settings(self) -> GenerationSettings:
        return GenerationSettings(tuple(self.categories), tuple(self.intensities), tuple(self.seeds),
                                  self.max_variants, self.max_sources or None)  # fmt: skip

    def settings(self) -> GenerationSettings:
        try:
            return self._settings()
        except ValueError as err:
            raise dg.Failure(str(err)) from None


@dg.asset(
    partitions_def=ingest_batches,
    deps=[identities],
    group_name="generation",
    kinds={"pytorch", "parquet"},
    pool=GPU_POOL,
    description="Expression variants of the batch's usable faces (`generated/<batch>/`, table `variants`), "
    "registered as a new ingest batch with provenance `generated`.",
)
@one_writer
def expression_variants(
    context: dg.AssetExecutionContext, config: GenerationConfig, ffe: FFEStorage, generator: GeneratorResource
) -> dg.MaterializeResult:
    from pixelsmile.generate import GenerationError, load_generator

    if not generator.configured:
        return dg.MaterializeResult(metadata={"skipped": NO_GENERATOR})
    layout, batch = ffe.layout, context.partition_key
    settings = config.settings()
    try:
        model = load_generator(generator.spec())
    except GenerationError as err:
        raise dg.Failure(str(err)) from None
    with progress_reporter(context, f"variants of {batch}", unit="variant") as report:
        result = generate_variants(layout, batch, model, settings, progress=report)
    if result.new_batch:
        # A partition now, so the UI shows it; the input sensor (or `ffe build`) ingests it.
        context.instance.add_dynamic_partitions(ingest_batches.name, [result.new_batch])
    context.log.info(f"variants of {batch}: {result.as_metadata()}")
    return dg.MaterializeResult(metadata=tidy({**result.as_metadata(), "generator": model.name,
                                          "generator_version": model.version}))  # fmt: skip
