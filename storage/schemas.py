"""Every table's schema, in one place. Writers validate against these; the catalog derives its
views from them, so a table exists (empty) in DuckDB before its first row is written."""

from __future__ import annotations

import pyarrow as pa

# The 12 FFE expression categories, in the paper's order. The first six (Ekman's) form the "-6"
# subsets of FFE-Bench (Acc-6, CLS-6).
CATEGORIES: tuple[str, ...] = (
    "happy",
    "sad",
    "angry",
    "fear",
    "surprised",
    "disgust",
    "confused",
    "contempt",
    "confident",
    "shy",
    "sleepy",
    "anxious",
)
CATEGORIES_6: tuple[str, ...] = CATEGORIES[:6]

# Expressions people (and models) confuse: the targets of one training triplet and the pairs of
# FFE-Bench's mSCR. The paper names the first two; the rest are ours (docs/releases.md says why).
# Releases add pairs that the score correlation matrix finds.
CONFUSABLE_PAIRS: tuple[tuple[str, str], ...] = (
    ("fear", "surprised"),
    ("angry", "disgust"),
    ("disgust", "contempt"),
    ("happy", "confident"),
    ("shy", "anxious"),
    ("sad", "sleepy"),
)

_TIMESTAMP = pa.timestamp("us", tz="UTC")

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # sha256 of the file's bytes
        pa.field("path", pa.string(), nullable=False),  # relative to the work folder
        pa.field("source_uri", pa.string(), nullable=False),  # where it was ingested from
        pa.field("batch", pa.string(), nullable=False),
        pa.field("format", pa.string(), nullable=False),  # PIL's name: JPEG, PNG, WEBP ...
        pa.field("mode", pa.string(), nullable=False),  # PIL mode as stored: RGB, L, RGBA, CMYK ...
        # Display size: after the EXIF orientation is applied, as a viewer shows the image.
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("exif_orientation", pa.int8()),  # 1 = none or upright; null: a damaged value (see notes)
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("ingested_at", _TIMESTAMP, nullable=False),
        pa.field("notes", pa.string()),  # what the file does not say plainly (a damaged EXIF orientation ...)
    ]
)

# Every rejected or broken item of every stage: nothing is dropped silently.
FAILURES = pa.schema(
    [
        pa.field("item", pa.string(), nullable=False),  # a file path, an image_id, a face_id ...
        pa.field("stage", pa.string(), nullable=False),  # the asset that rejected it
        pa.field("reason", pa.string(), nullable=False),  # a short machine-readable code
        pa.field("detail", pa.string(), nullable=False),  # the human-readable why
        pa.field("partition", pa.string(), nullable=False),
        pa.field("at", _TIMESTAMP, nullable=False),
    ]
)

# MediaPipe FaceLandmarker's 52 ARKit-style blendshapes, in its output order.
BLENDSHAPES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)  # fmt: skip
N_LANDMARKS = 478

_F32 = pa.float32()

# One row per face found (quality-rejected faces included: `quality_ok` false, `reject_reason` set).
# Coordinates are pixels of the image as displayed (EXIF orientation applied).
FACES = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),  # <image_id[:16]>_<index>, largest face first
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("batch", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),  # real | anime
        pa.field("face_index", pa.int16(), nullable=False),
        pa.field("detector", pa.string(), nullable=False),  # dlib_hog | scrfd | landmarker | whole_image
        pa.field("det_score", _F32),  # the detector's own score, where it gives one
        pa.field("bbox_x0", _F32, nullable=False),
        pa.field("bbox_y0", _F32, nullable=False),
        pa.field("bbox_x1", _F32, nullable=False),
        pa.field("bbox_y1", _F32, nullable=False),
        pa.field("landmarks", pa.list_(_F32, N_LANDMARKS * 3)),  # x, y, z per point; null: whole_image
        pa.field("blendshapes", pa.struct([pa.field(n, _F32) for n in BLENDSHAPES])),
        pa.field("yaw", _F32),  # degrees; head turned to the image's right is positive
        pa.field("pitch", _F32),  # degrees
        pa.field("roll", _F32),  # degrees
        pa.field("kps5", pa.list_(_F32, 10)),  # eyes, nose tip, mouth corners in crop pixels
        pa.field("crop_path", pa.string(), nullable=False),  # relative to the work folder
        pa.field("crop_phash", pa.int64(), nullable=False),  # 64-bit DCT hash of the crop
        pa.field("face_px", _F32, nullable=False),  # sqrt of the face box area, source pixels
        pa.field("sharpness", _F32, nullable=False),  # variance of the Laplacian of the crop
        pa.field("brightness", _F32, nullable=False),  # mean luminance (0-255) of the crop's centre
        pa.field("out_of_frame", _F32, nullable=False),  # share of the crop padded beyond the photo (tight frames)
        pa.field("rotation", pa.int16()),  # degrees the photo was turned (counter-clockwise) to find the face
        pa.field("quality_ok", pa.bool_(), nullable=False),
        pa.field("reject_reason", pa.string(), nullable=False),  # comma-separated; "" when ok
    ]
)

FACE_EMBEDDINGS = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("batch", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),  # dlib_resnet_v1 | arcface:<file name>
        pa.field("vector", pa.list_(_F32), nullable=False),
    ]
)

# One row per face that passed quality, assigned once (incrementally): ids never change.
IDENTITIES = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("identity_id", pa.string(), nullable=False),
        pa.field("duplicate_of", pa.string()),  # face_id of an earlier copy of the same shot
        pa.field("distance", _F32, nullable=False),  # to the identity's centre when assigned
        pa.field("batch", pa.string(), nullable=False),
        pa.field("assigned_at", _TIMESTAMP, nullable=False),
    ]
)


def _category_fields(nullable: bool) -> list[pa.Field]:
    return [pa.field(c, _F32, nullable=nullable) for c in CATEGORIES]


# Model scores per face: the annotators' starting point and the embedded default's labels.
PRELABELS = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("batch", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        *_category_fields(nullable=False),
    ]
)

# Labels that came with the images (curation/labels.py): one row per labelled image; identity and
# scores each optional (null).
IMPORTED_LABELS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("batch", pa.string(), nullable=False),
        pa.field("label_file", pa.string(), nullable=False),
        pa.field("identity", pa.string()),
        *_category_fields(nullable=True),
    ]
)

# Expression variants generated from curated faces (curation/generation.py), per source batch: what
# made each one, so that it is never made twice and its identity can be checked against its source.
VARIANTS = pa.schema(
    [
        pa.field("variant_key", pa.string(), nullable=False),  # hash of source, generator, prompt, seed
        pa.field("source_face_id", pa.string(), nullable=False),
        pa.field("source_identity_id", pa.string(), nullable=False),
        pa.field("source_batch", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),  # kind:model[+lora]
        pa.field("generator_version", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("intensity", _F32, nullable=False),  # requested, not measured: pre-labels measure
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # relative to the work folder
        pa.field("generated_at", _TIMESTAMP, nullable=False),
    ]
)

# One row per annotator per face (the latest version of their annotation).
ANNOTATIONS = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("annotator", pa.string(), nullable=False),
        pa.field("task_id", pa.int64(), nullable=False),
        pa.field("annotation_id", pa.int64(), nullable=False),
        # submitted | skipped | unusable | empty (submitted with no slider set); in annotation_history
        # also deleted (gone from Label Studio: the last version seen, kept)
        pa.field("status", pa.string(), nullable=False),
        *_category_fields(nullable=True),  # null when skipped, unusable or empty; or that slider was left untouched
        pa.field("lead_time_s", _F32),
        pa.field("updated_at", _TIMESTAMP, nullable=False),
    ]
)

# Every version of every annotation a sync saw (append-only: one file per sync that saw changes).
ANNOTATION_HISTORY = pa.schema([*ANNOTATIONS, pa.field("synced_at", _TIMESTAMP, nullable=False)])

# The Label Studio tasks a work folder pushed, per project: one row per task key (a face_id, or a
# gold copy's key). A task deleted in Label Studio keeps its row with `deleted_at` (when a push or
# sync first saw it gone), and push does not make it again unless asked (--recreate-deleted).
LABEL_STUDIO_TASKS = pa.schema(
    [
        pa.field("project_id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("task_id", pa.int64(), nullable=False),  # the oldest task of the key
        pa.field("tasks", pa.int32(), nullable=False),  # tasks holding the key (copies count; 0 once deleted)
        pa.field("first_seen_at", _TIMESTAMP, nullable=False),
        pa.field("deleted_at", _TIMESTAMP),
        pa.field("deletions", pa.int16(), nullable=False),  # times it was found deleted (recreated since)
    ]
)

# Faces whose scores are known (a reviewed reference set): asked again as hidden gold tasks.
GOLD_SCORES = pa.schema(
    [pa.field("face_id", pa.string(), nullable=False), *_category_fields(nullable=False),
     pa.field("source", pa.string(), nullable=False)]
)  # fmt: skip

# How well each annotator matches the gold scores; their weight in the consensus.
ANNOTATOR_QUALITY = pa.schema(
    [
        pa.field("annotator", pa.string(), nullable=False),
        pa.field("gold_ratings", pa.int32(), nullable=False),
        pa.field("gold_mae", _F32),  # mean |rating - gold| over categories; null without gold ratings
        pa.field("reliability", _F32, nullable=False),  # 1 / (0.05 + gold_mae), normalised to mean 1
    ]
)

# The label of each face: consensus of human annotations, or the model's pre-label.
AFFECT_SCORES = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),
        *_category_fields(nullable=False),
        pa.field("source", pa.string(), nullable=False),  # human | model
        pa.field("n_annotators", pa.int16(), nullable=False),
        pa.field("agreement", _F32),  # 1 - mean |rating - consensus| over raters and categories (human)
        pa.field("model_version", pa.string(), nullable=False),  # of the pre-label (also for human rows)
    ]
)

_F64 = pa.float64()

# One row per face of a dataset release (`releases/<version>/splits.parquet`). Scores are rounded to
# the release's precision and stored as float64 so that the rounded decimals stay exact.
RELEASE_FACES = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("identity_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | val | bench
        pa.field("domain", pa.string(), nullable=False),
        pa.field("batch", pa.string(), nullable=False),
        pa.field("provenance", pa.string()),  # real | generated (its batch's; null in releases before it)
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string()),  # the ingested file
        pa.field("crop_path", pa.string(), nullable=False),  # in the work folder
        pa.field("image", pa.string(), nullable=False),  # in the release: images/<face_id>.png
        *[pa.field(c, _F64, nullable=False) for c in CATEGORIES],
        pa.field("category", pa.string()),  # the dominant expression; null below the target threshold
        pa.field("intensity", _F64, nullable=False),  # the highest score (the dominant one's)
        pa.field("intensity_bin", pa.int8(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # human | model (affect_scores)
        pa.field("n_annotators", pa.int16(), nullable=False),
        pa.field("agreement", _F32),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("crop_sha256", pa.string()),  # null in the plan; filled when the release is built
        pa.field("crop_bytes", pa.int64()),
    ]
)

# One row per WebDataset sample (an identity) of a release (`shards/index.parquet`).
SHARD_INDEX = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),  # the sample key: the identity_id
        pa.field("split", pa.string(), nullable=False),
        pa.field("face_ids", pa.list_(pa.string()), nullable=False),
        pa.field("byte_offset", pa.int64(), nullable=False),  # of the sample's first tar header
        pa.field("bytes", pa.int64(), nullable=False),  # headers and padding included
    ]
)

# FFE-Bench metrics (pixelsmile.metrics.summary's names) as leaderboard columns (docs/bench.md).
BENCH_METRICS: dict[str, str] = {
    "mSCR": "mscr", "Acc-6": "acc6", "Acc-12": "acc12", "CLS-6": "cls6", "CLS-12": "cls12", "ID Sim": "id_sim",
    "HES": "hes", "CLS-12/task": "cls12_task", "|I-a|": "intensity_gap", "Acc-12@1": "acc12_at1",
}  # fmt: skip

# One row per bench run (`tables/bench_runs/<run_id>.parquet`): measured models and baselines, and
# runs that failed (status "failed", a reason, no metrics: they never rank). The `leaderboard` view
# holds the finished ones beside the paper's reported numbers.
BENCH_RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("release", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),  # a name: "pixelsmile-lora@<run>", "no-edit", ...
        pa.field("kind", pa.string(), nullable=False),  # measured | baseline
        pa.field("status", pa.string(), nullable=False),  # ok | failed
        pa.field("reason", pa.string()),  # why a run failed
        pa.field("judge", pa.string()),  # name@version of the expression judge
        pa.field("tasks", pa.int32()),  # bench tasks (source x category); rows before 2026-12 held edits here
        pa.field("edits", pa.int32()),  # edits judged (tasks x alphas)
        *[pa.field(column, _F64) for column in BENCH_METRICS.values()],
        pa.field("ci95", pa.string()),  # JSON: {metric: [low, high]} from the bootstrap over sources
        pa.field("config_hash", pa.string()),
        pa.field("git_commit", pa.string()),
        pa.field("at", _TIMESTAMP, nullable=False),
        pa.field("notes", pa.string()),  # what a reader should know (a LoRA that edits nothing ...)
    ]
)

TABLES: dict[str, pa.Schema] = {
    "images": IMAGES,
    "failures": FAILURES,
    "faces": FACES,
    "face_embeddings": FACE_EMBEDDINGS,
    "identities": IDENTITIES,
    "imported_labels": IMPORTED_LABELS,
    "variants": VARIANTS,
    "prelabels": PRELABELS,
    "annotations": ANNOTATIONS,
    "annotation_history": ANNOTATION_HISTORY,
    "label_studio_tasks": LABEL_STUDIO_TASKS,
    "gold_scores": GOLD_SCORES,
    "annotator_quality": ANNOTATOR_QUALITY,
    "affect_scores": AFFECT_SCORES,
    "bench_runs": BENCH_RUNS,
}


def schema_of(table: str) -> pa.Schema:
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(sorted(TABLES))}") from None
