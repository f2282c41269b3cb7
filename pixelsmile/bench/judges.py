"""Judges: what reads an edited face back. One interface for every judge:

    judge.read(image) -> Reading(scores, identity, reason)

`scores` are the 12 intensities in [0, 1] (None when the judge cannot read a face: `reason` says
why), `identity` an identity embedding compared by `judge.similarity` (the judge's own measure).
Judges: the synthetic world's exact judge; the face judge built on the dataset's own scorer
(MediaPipe blendshapes + the expression classifier, a face recogniser for identity); a
vision-language judge from a local model folder (pixelsmile/bench/vlm.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Reading:
    scores: np.ndarray | None  # (12,) in CATEGORIES order, or None
    identity: np.ndarray | None
    reason: str | None = None  # why there are no scores


class Judge(Protocol):
    name: str
    version: str

    def read(self, image: Image.Image) -> Reading: ...
    def similarity(self, a: np.ndarray, b: np.ndarray) -> float: ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


class SyntheticJudge:
    """The synthetic world's exact judge (pixelsmile/synthetic.py): it always reads a face. Version 2:
    the ridge calibration and sparsity prior (a perfect editor's Acc-12 at 64 px 0.92 -> 0.98)."""

    name, version = "synthetic-exact", "2"

    def read(self, image: Image.Image) -> Reading:
        from pixelsmile.synthetic import judge

        j = judge(image)
        return Reading(np.asarray(j.scores, dtype=np.float64), np.asarray(j.identity, dtype=np.float64))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        from pixelsmile.synthetic import identity_similarity

        return identity_similarity(a, b)


class FaceJudge:
    """The default judge for real faces, built on the dataset's own scorer: the face found and
    aligned as curation does it, its 12 scores made as the pre-labels are (blendshapes, with the
    expression classifier blended in where installed), its identity embedded as curation does (dlib
    by default, ArcFace from a local model)."""

    name = "face"

    def __init__(self, faces=None, embeddings=None):
        from annotation.classifier import classifier
        from annotation.scores import scorer_version
        from curation.embeddings import EmbeddingSettings, embedder
        from curation.faces import FaceSettings, face_models

        self.faces = faces or FaceSettings()
        self.models = face_models(self.faces)
        self.classifier = classifier()
        self.embedder = embedder(embeddings or EmbeddingSettings())
        self.version = f"{scorer_version(self.classifier)}+{self.embedder.name}"

    def read(self, image: Image.Image) -> Reading:
        from annotation.prelabels import scores_from_blendshapes
        from annotation.scores import with_classifier
        from curation.faces import describe, find_faces
        from storage.schemas import CATEGORIES

        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        found = [f for f in find_faces(rgb, self.models, self.faces, pre_cropped=True) if f.blendshapes is not None]
        if not found:
            return Reading(None, None, "no face with landmarks found")
        face = describe(rgb, found[0], self.faces)
        scores = scores_from_blendshapes(face.fields["blendshapes"])
        if scores is None:
            return Reading(None, None, "no blendshapes")
        if self.classifier is not None:
            scores = with_classifier(scores, self.classifier, face.crop)
        kps5 = np.asarray(face.fields["kps5"], dtype=np.float64).reshape(5, 2)
        identity = np.asarray(self.embedder.embed(face.crop, kps5), dtype=np.float64)
        return Reading(np.array([scores[c] for c in CATEGORIES]), identity)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine(a, b)


JUDGES = ("face", "synthetic", "vlm")


def judge_named(name: str, vlm_path: str = "", *, identity: bool = True) -> Judge:
    """The judge a command or a run config names: face (default), synthetic, or vlm (a local folder;
    its identity readings come from the face judge, loaded only with `identity`)."""
    if name == "vlm":
        from pixelsmile.bench.vlm import VLMJudge

        if not vlm_path:
            raise ValueError("the vlm judge needs a local vision-language model folder (--vlm-path / vlm_path)")
        return VLMJudge(vlm_path, identity=FaceJudge() if identity else None)
    if name == "face":
        return FaceJudge()
    if name == "synthetic":
        return SyntheticJudge()
    raise ValueError(f"unknown judge {name!r}; judges: {', '.join(JUDGES)}")


class JudgeScorer:
    """A judge as the annotation stage's pre-label scorer (the paper scored FFE with a VLM): its
    12 readings as a {category: score} dict, its name and version recorded with each pre-label."""

    def __init__(self, judge: Judge):
        self.judge = judge
        self.version = f"{judge.name}@{judge.version}"

    def scores(self, image: Image.Image) -> dict[str, float] | None:
        from storage.schemas import CATEGORIES

        reading = self.judge.read(image)
        return None if reading.scores is None else dict(zip(CATEGORIES, map(float, reading.scores), strict=True))
