"""The `faces` step for one batch: every ingested image -> its faces (rows + aligned crops) or a
`no_face` failure. Resumable by staged chunks, parallel by worker processes (each loads its models
once), each image decoded once."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter

import cv2

from curation.batches import load_manifest
from curation.faces import FaceSettings, describe, face_models, find_faces
from curation.imageio import load_rgb
from curation.parallel import ordered_map, worker_count
from storage import tables
from storage.atomic import atomic_write_bytes
from storage.errors import StorageError
from storage.failures import Isolated, fail_if_all_failed, failure_row
from storage.failures import describe as describe_error
from storage.layout import Layout
from storage.staging import ChunkWriter, Staging

STAGE = "faces"


@dataclass(frozen=True)
class CurationRun:
    """What a worker needs besides the image: settings and the batch's domain."""

    settings: FaceSettings
    domain: str
    pre_cropped: bool
    whole_images: bool = False


@dataclass
class FacesSummary:
    batch: str
    images: int = 0
    faces: int = 0
    quality_ok: int = 0
    resumed: int = 0
    failures: Counter = field(default_factory=Counter)
    rejects: Counter = field(default_factory=Counter)

    def as_metadata(self) -> dict:
        return {
            "images": self.images,
            "faces": self.faces,
            "quality_ok": self.quality_ok,
            "images_without_face": self.failures.get("no_face", 0),
            "failures_by_reason": dict(sorted(self.failures.items())),
            "quality_rejects": dict(sorted(self.rejects.items())),
            "resumed_from_staging": self.resumed,
        }


def failures_partition(batch: str) -> str:
    return tables.failures_partition(STAGE, batch)


def face_id_for(image_id: str, index: int) -> str:
    return f"{image_id[:16]}_{index:02d}"


def _curate_one(layout: Layout, run: CurationRun, batch: str, image: dict) -> tuple[list[dict], dict | None]:
    """In a worker: decode once, find and describe faces, store the crops. Returns face rows, or a
    failure row when there is no usable face."""
    image_id = image["image_id"]

    def failure(reason: str, detail: str) -> tuple[list[dict], dict]:
        return [], failure_row(STAGE, batch, image_id, reason, detail)

    try:
        rgb = load_rgb(layout.root / image["path"])
    except OSError as err:  # the stored original is gone or damaged since ingest
        return failure("unreadable_original", f"{image['path']}: {err}")
    except Exception as err:  # any other decoding problem of this one file
        return failure("unreadable_original", f"{image['path']} ({image['source_uri']}): {describe_error(err)}")
    models = face_models(run.settings)
    seen: dict = {}
    found = find_faces(rgb, models, run.settings, pre_cropped=run.pre_cropped, whole=run.whole_images, seen=seen)
    if not found and seen.get("unconfirmed"):  # a detector saw something no landmarker could place
        size = f"{rgb.shape[1]}x{rgb.shape[0]}"
        detail = (f"{seen['unconfirmed']} face-like region(s) in {image['source_uri']} ({size}), "
                  "none confirmed: too small, blurred or turned away?")  # fmt: skip
        return failure("unconfirmed_face", detail)
    if not found:
        return failure("no_face", f"no face found in {image['source_uri']} ({rgb.shape[1]}x{rgb.shape[0]})")
    rows = []
    for index, f in enumerate(found):
        d = describe(rgb, f, run.settings)
        face_id = face_id_for(image_id, index)
        path = layout.crop_path(face_id)
        ok, png = cv2.imencode(".png", cv2.cvtColor(d.crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        try:
            atomic_write_bytes(path, png.tobytes(), fsync=False)
        except OSError as err:
            raise StorageError(f"cannot store the crop of {face_id} at {path}: {err.strerror or err}") from None
        rows.append(
            dict(
                face_id=face_id,
                image_id=image_id,
                batch=batch,
                domain=run.domain,
                face_index=index,
                crop_path=layout.relative(path),
                **d.fields,
            )
        )
    return rows, None


def curate_batch(
    layout: Layout,
    batch: str,
    settings: FaceSettings = FaceSettings(),
    *,
    workers: int = 0,
    chunk_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> FacesSummary:
    """Find and describe the faces of every image that `raw_images` ingested for `batch`."""
    settings.validate()
    manifest = load_manifest(layout, batch)
    face_models(settings)  # a missing or broken model fails here, once, before any work
    run = CurationRun(settings, manifest.domain, manifest.pre_cropped, manifest.whole_images)
    images = tables.read_partition(layout, "images", batch).select(["image_id", "path", "source_uri"]).to_pylist()

    staging = Staging(layout, STAGE, batch, ["faces", "failures"])
    done = set(staging.read("faces").column("image_id").to_pylist()) | set(
        staging.read("failures").column("item").to_pylist()
    )
    todo = [im for im in images if im["image_id"] not in done]
    summary = FacesSummary(batch=batch, images=len(images), resumed=len(images) - len(todo))
    writer = ChunkWriter(staging, chunk_size, total=len(images), done=summary.resumed, progress=progress)
    one = Isolated(functools.partial(_curate_one, layout, run, batch), STAGE, batch, itemgetter("image_id"))
    try:
        with writer.finishing():
            for result, unexpected in ordered_map(one, todo, worker_count(workers, len(todo), 16), chunksize=2):
                rows, fail = result if unexpected is None else ([], unexpected)
                for row in rows:
                    writer.add("faces", row)
                if fail is not None:
                    writer.add("failures", fail)
                writer.item_done()
    except StorageError as err:
        raise StorageError(f"{err} (finished images of {batch} are kept; rerun to resume)") from None

    written = staging.publish({"faces": batch, "failures": failures_partition(batch)})
    faces = written["faces"]
    summary.faces = faces.num_rows
    summary.quality_ok = sum(faces.column("quality_ok").to_pylist())
    summary.failures = Counter(written["failures"].column("reason").to_pylist())
    summary.rejects = Counter(r for rr in faces.column("reject_reason").to_pylist() for r in rr.split(",") if r)
    fail_if_all_failed(STAGE, batch, len(images), written["failures"].to_pylist())
    return summary
