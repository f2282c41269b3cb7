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
        pa.field("exif_orientation", pa.int8(), nullable=False),  # 1 = none or upright
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("ingested_at", _TIMESTAMP, nullable=False),
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

TABLES: dict[str, pa.Schema] = {
    "images": IMAGES,
    "failures": FAILURES,
}


def schema_of(table: str) -> pa.Schema:
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(sorted(TABLES))}") from None
