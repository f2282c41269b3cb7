"""Triplets: one source face and two targets of one confusable pair, all of one identity.

The source is the identity's most neutral face (the lowest top score). A target of category c is a
face whose dominant score is c and at least `min_target_score` (its `category` in the release).
For each pair (a, b) with targets on both sides, an identity gives up to `max_triplets_per_pair`
triplets; each side's targets are taken round-robin over intensity bins (shuffled within a bin),
so low, mid and high intensities appear alike where the data has them. The same function makes
the release's fixed `triplets.jsonl` (seeded per release) and the loader's fresh triplets per epoch
(seeded per epoch). Pure Python: the loader's workers import it cheaply.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from storage.schemas import CATEGORIES


@dataclass(frozen=True)
class Face:
    face_id: str
    image: str  # path in the release, or the tar member's name in a shard
    scores: Mapping[str, float]
    category: str | None
    intensity: float
    bin: int


@dataclass(frozen=True)
class Triplet:
    identity_id: str
    source: Face
    target_a: Face  # category == pair[0]
    target_b: Face  # category == pair[1]

    @property
    def pair(self) -> tuple[str, str]:
        return (self.target_a.category, self.target_b.category)  # type: ignore[return-value]


def source_face(faces: Sequence[Face]) -> Face:
    return min(faces, key=lambda f: (f.intensity, f.face_id))


def _balanced(faces: list[Face], rng: random.Random) -> list[Face]:
    by_bin: dict[int, list[Face]] = defaultdict(list)
    for f in sorted(faces, key=lambda f: f.face_id):
        by_bin[f.bin].append(f)
    bins = sorted(by_bin)
    for b in bins:
        rng.shuffle(by_bin[b])
    start = rng.randrange(len(bins))
    bins = bins[start:] + bins[:start]
    out: list[Face] = []
    for i in range(max(len(v) for v in by_bin.values())):
        out += [by_bin[b][i] for b in bins if i < len(by_bin[b])]
    return out


def identity_triplets(
    identity_id: str,
    faces: Sequence[Face],
    pairs: Sequence[tuple[str, str]],
    *,
    max_per_pair: int,
    seed: str | int,
) -> list[Triplet]:
    """The triplets of one identity; `seed` (e.g. f"{release_seed}:{epoch}") fixes the choice."""
    if len(faces) < 3:
        return []
    rng = random.Random(f"{seed}:{identity_id}")  # str seeds hash with sha512: stable across runs
    src = source_face(faces)
    by_cat: dict[str, list[Face]] = defaultdict(list)
    for f in faces:
        if f is not src and f.category is not None:
            by_cat[f.category].append(f)
    out = []
    for a, b in pairs:
        if not by_cat.get(a) or not by_cat.get(b):
            continue
        side_a, side_b = _balanced(by_cat[a], rng), _balanced(by_cat[b], rng)
        for k in range(min(max(len(side_a), len(side_b)), max_per_pair)):
            out.append(Triplet(identity_id, src, side_a[k % len(side_a)], side_b[k % len(side_b)]))
    return out


def correlated_pairs(
    scores: np.ndarray, known: Sequence[tuple[str, str]], *, extra: int, min_correlation: float
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Up to `extra` category pairs, not in `known`, whose scores correlate most (Pearson, at
    least `min_correlation`) over the rows of `scores` (faces x 12); and the correlation matrix."""
    n = len(CATEGORIES)
    corr = np.full((n, n), np.nan)
    if len(scores) >= 3:
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(scores, rowvar=False)
    seen = {frozenset(p) for p in known}
    candidates = [
        (float(corr[i, j]), CATEGORIES[i], CATEGORIES[j])
        for i in range(n)
        for j in range(i + 1, n)
        if np.isfinite(corr[i, j])
        and corr[i, j] >= min_correlation
        and frozenset((CATEGORIES[i], CATEGORIES[j])) not in seen
    ]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(a, b) for _, a, b in candidates[:extra]], corr


SUBJECT = {"real": "human", "anime": "anime"}  # the reference's subject word per domain

# One line of triplets.jsonl: the PixelSmile reference's training format plus our ids.
TRIPLET_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "FFE triplet (PixelSmile train.jsonl line)",
    "type": "object",
    "required": ["src", "dst"],
    "properties": {
        "src": {
            "type": "object",
            "required": ["image"],
            "properties": {"image": {"type": "string", "minLength": 1}, "face_id": {"type": "string"}},
        },
        "dst": {
            "type": "array",
            "minItems": 2,
            "maxItems": 2,
            "items": {
                "type": "object",
                "required": ["image", "category", "scores"],
                "properties": {
                    "image": {"type": "string", "minLength": 1},
                    "category": {"enum": list(CATEGORIES)},
                    "scores": {
                        "type": "object",
                        "required": list(CATEGORIES),
                        "additionalProperties": False,
                        "properties": {c: {"type": "number", "minimum": 0, "maximum": 1} for c in CATEGORIES},
                    },
                    "face_id": {"type": "string"},
                },
            },
        },
        "subject": {"enum": sorted(SUBJECT.values())},
        "identity_id": {"type": "string"},
    },
}


def jsonl_record(t: Triplet, domain: str) -> dict:
    def dst(f: Face) -> dict:
        return {"image": f.image, "category": f.category, "scores": dict(f.scores), "face_id": f.face_id}

    return {
        "src": {"image": t.source.image, "face_id": t.source.face_id},
        "dst": [dst(t.target_a), dst(t.target_b)],
        "subject": SUBJECT[domain],
        "identity_id": t.identity_id,
    }
