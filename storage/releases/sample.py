"""A labelled work folder made up from scratch, for release tests and benchmarks.

Writes the tables a release reads (images, faces, identities, prelabels, affect_scores) and one crop file per
face, through the real table writers, for `identities` people with `faces_per_identity` faces each:
one neutral face per person, the others each dominated by one category of a confusable pair at an
intensity spread over [0.3, 1], with the pair's partner co-scoring (so pairs correlate as in real
labels). Crops are noise PNGs (tiny and fast), or with `photo` the astronaut's face shifted and
tinted per face (the size and decoding cost of real crops). Call again with another batch
name to add a batch, as ingest would.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from storage import tables
from storage.atomic import atomic_write_bytes
from storage.layout import Layout
from storage.schemas import CATEGORIES, CONFUSABLE_PAIRS

MODEL_VERSION = "sample-generator"


def _png(rng: np.random.Generator, px: int, photo: bool) -> bytes:
    if photo:  # the astronaut's face, shifted and tinted: compresses like a real crop
        from skimage import data

        x, y = rng.integers(140, 180), rng.integers(20, 60)
        face = np.asarray(data.astronaut()[y : y + 200, x : x + 180], dtype=np.float32) * rng.uniform(0.8, 1.2, 3)
        img = Image.fromarray(np.clip(face, 0, 255).astype(np.uint8)).resize((px, px), Image.Resampling.BICUBIC)
    else:
        img = Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def pair_scores(
    rng: np.random.Generator, k: int, pairs=CONFUSABLE_PAIRS, *, start: int = 0, level=(0.3, 1.0),
    partner=(0.3, 0.7), background: float = 0.08,
) -> np.ndarray:  # fmt: skip
    """The 12 scores of face k of a person: face 0 neutral (only `background` noise); then both sides
    of one pair at a random `level`, then the next pair (from pair `start`, so that people cover
    every pair between them), the pair's other category co-scoring at a share `partner` of the level,
    as real labels do."""
    s = rng.uniform(0.0, background, len(CATEGORIES)) if background else np.zeros(len(CATEGORIES))
    if k > 0:
        a, b = pairs[(start + (k - 1) // 2) % len(pairs)]
        main, other = (a, b) if k % 2 else (b, a)
        value = rng.uniform(*level)
        s[CATEGORIES.index(main)] = value
        s[CATEGORIES.index(other)] = value * rng.uniform(*partner)
    return s


def _scores(rng: np.random.Generator, k: int) -> dict[str, float]:
    return {c: float(v) for c, v in zip(CATEGORIES, pair_scores(rng, k), strict=True)}


@dataclass(frozen=True)
class LabelledFace:
    person: int  # faces of one person share an identity
    png: bytes
    scores: dict[str, float]
    source_uri: str


def write_labelled_faces(
    layout: Layout, batch: str, faces: Iterable[LabelledFace], *, domain: str = "real",
    model_version: str = MODEL_VERSION,
) -> list[str]:  # fmt: skip
    """Write one batch of labelled face crops as curation and annotation would have: the tables a
    release reads, with the given scores as pre-labels and affect scores. Returns the face_ids."""
    now = datetime.now(UTC)
    images, rows, ids, scores = [], [], [], []
    identity_of: dict[int, str] = {}
    seen: set[str] = set()
    for face in faces:
        image_id = hashlib.sha256(face.png).hexdigest()
        if image_id in seen:  # the same bytes twice: ingest keeps the first copy only
            continue
        seen.add(image_id)
        face_id = f"{image_id[:16]}_0"
        identity = identity_of.setdefault(face.person, f"idn_{face_id}")
        crop = layout.crop_path(face_id)
        atomic_write_bytes(crop, face.png, fsync=False)
        with Image.open(io.BytesIO(face.png)) as im:
            w, h = im.size
        images.append(dict(image_id=image_id, path=layout.relative(crop), source_uri=face.source_uri, batch=batch,
                           format="PNG", mode="RGB", width=w, height=h, exif_orientation=1, bytes=len(face.png),
                           ingested_at=now))  # fmt: skip
        rows.append(dict(face_id=face_id, image_id=image_id, batch=batch, domain=domain, face_index=0,
                         detector="whole_image", bbox_x0=0.0, bbox_y0=0.0, bbox_x1=float(w), bbox_y1=float(h),
                         crop_path=layout.relative(crop), crop_phash=0, face_px=float(w), sharpness=100.0,
                         brightness=128.0, out_of_frame=0.0, quality_ok=True, reject_reason=""))  # fmt: skip
        ids.append(dict(face_id=face_id, identity_id=identity, duplicate_of=None, distance=0.0, batch=batch,
                        assigned_at=now))  # fmt: skip
        scores.append(dict(face_id=face_id, source="model", n_annotators=0, agreement=None,
                           model_version=model_version, **face.scores))  # fmt: skip
    tables.write_partition(layout, "images", batch, images)
    tables.write_partition(layout, "faces", batch, rows)
    tables.write_partition(layout, "identities", batch, ids)
    # Pre-labels as the annotation stage writes them, and the affect scores they give without
    # human annotations (so storage-level tests need not run the annotation stage).
    prelabels = [{k: r[k] for k in ("face_id", "model_version", *CATEGORIES)} | {"batch": batch} for r in scores]
    tables.write_partition(layout, "prelabels", batch, prelabels)
    previous = tables.read_table(layout, "affect_scores").to_pylist()
    tables.write_partition(layout, "affect_scores", "all", previous + scores)
    return [r["face_id"] for r in rows]


def write_sample_tables(
    layout: Layout,
    *,
    batch: str = "batch-sample0",
    identities: int = 20,
    faces_per_identity: int = 5,
    crop_px: int = 32,
    seed: int = 0,
    domain: str = "real",
    photo: bool = False,
) -> list[str]:
    """Add one batch of made-up faces; returns their face_ids."""
    rng = np.random.default_rng([seed, int(hashlib.sha256(batch.encode()).hexdigest()[:8], 16)])
    faces = [
        LabelledFace(p, _png(rng, crop_px, photo), _scores(rng, k), f"sample://{batch}/{p}/{k}.png")
        for p in range(identities)
        for k in range(faces_per_identity)
    ]
    return write_labelled_faces(layout, batch, faces, domain=domain)
