"""Pre-labels per batch, and the affect score of every face: the consensus of its human
annotations where it has any, else its model pre-label."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from annotation.agreement import Agreement, alpha_interval, icc
from annotation.classifier import VERSION as CLASSIFIER_VERSION
from annotation.classifier import classifier
from annotation.consensus import consensus
from annotation.prelabels import MODEL_VERSION, scores_from_blendshapes
from curation.labels import IMPORTED, labels_by_face
from storage import tables
from storage.blobs import read_crop
from storage.errors import StorageError
from storage.failures import fail_if_all_failed, row_for
from storage.layout import Layout
from storage.releases.plan import release_eligible
from storage.schemas import CATEGORIES

ALL = "all"  # the single partition file of tables that span every batch


CLASSIFIER_WEIGHT = 0.5  # share of the classifier in the six categories it knows


def with_classifier(scores: dict[str, float], model, crop_rgb: np.ndarray) -> dict[str, float]:
    """The blendshape scores with the classifier's probabilities blended into the six it knows."""
    blended = dict(scores)
    for cat, p in model.probabilities(crop_rgb).items():
        blended[cat] = (1 - CLASSIFIER_WEIGHT) * scores[cat] + CLASSIFIER_WEIGHT * p
    return blended


def scorer_version(model) -> str:
    return MODEL_VERSION if model is None else f"{MODEL_VERSION}+{CLASSIFIER_VERSION}"


def prelabel_batch(layout: Layout, batch: str, scorer=None) -> dict:
    """Write `prelabels/<batch>`. A face whose image came labelled gets its imported scores; the
    others are scored by `scorer` when one is given (an object with `version` and
    `scores(crop: PIL image) -> dict | None`: the synthetic world's exact judge, a vision-language
    model), else by the face scorer: blendshapes, with the expression classifier's probabilities
    blended into the six basic categories where it is installed (faces without blendshapes, taken
    whole, get none: people must label them)."""
    faces = tables.read_partition(layout, "faces", batch).select(["face_id", "blendshapes", "crop_path"])
    model = classifier() if scorer is None else None
    version = scorer_version(model) if scorer is None else scorer.version
    imported = {f: label["scores"] for f, label in labels_by_face(layout, [batch]).items() if label["scores"]}
    rows, skipped, failed = [], 0, []
    for face in faces.to_pylist():
        if face["face_id"] in imported:  # the collection's own label (curation/labels.py)
            rows.append(dict(face_id=face["face_id"], batch=batch, model_version=IMPORTED, **imported[face["face_id"]]))
            continue
        try:
            scores = _score(layout, face, scorer, model)
        except StorageError:
            raise
        except Exception as err:  # this face's problem (a crop gone, a scorer error): the rest go on
            failed.append(row_for(PRELABEL_STAGE, batch, face["face_id"], err))
            continue
        if scores is None:
            skipped += 1  # nothing to read: people must label it
            continue
        rows.append(dict(face_id=face["face_id"], batch=batch, model_version=version, **scores))
    tables.write_partition(layout, "prelabels", batch, rows)
    tables.write_partition(layout, "failures", tables.failures_partition(PRELABEL_STAGE, batch), failed)
    fail_if_all_failed(PRELABEL_STAGE, batch, faces.num_rows - len(imported), failed)
    return {"faces": len(rows), "unscored": skipped, "failed": len(failed), "model_version": version,
            "imported": len(imported)}  # fmt: skip


PRELABEL_STAGE = "prelabels"


def _score(layout: Layout, face: dict, scorer, model) -> dict | None:
    if scorer is not None:
        return scorer.scores(read_crop(layout, face))
    scores = scores_from_blendshapes(face["blendshapes"])
    if scores is not None and model is not None:
        scores = with_classifier(scores, model, np.asarray(read_crop(layout, face)))
    return scores


@dataclass
class ScoreReport:
    faces: int
    human: int
    model: int
    eligible: int  # faces that can enter a release: in an identity and not a duplicate
    covered: int  # eligible faces with a score
    alpha: dict[str, float]  # per category, over faces with two or more human ratings
    alpha_detail: dict[str, Agreement]  # the same, with why an alpha is undefined or not evaluable
    icc2: dict[str, float]  # per category, ICC(2,1) of the two busiest annotators on their shared faces

    @property
    def coverage(self) -> float:
        return self.covered / self.eligible if self.eligible else 1.0


def human_ratings(layout: Layout) -> dict[str, list[tuple[str, np.ndarray]]]:
    """face_id -> [(annotator, 12 scores, NaN where that slider was not rated)] for submitted annotations."""
    out: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for r in tables.read_table(layout, "annotations").to_pylist():
        if r["status"] == "submitted":
            out[r["face_id"]].append((r["annotator"], np.array([r[c] for c in CATEGORIES], dtype=np.float64)))
    return out


def build_affect_scores(layout: Layout, reliability: dict[str, float] | None = None) -> ScoreReport:
    """Write `affect_scores/all` from every batch's pre-labels and the synced annotations, each
    annotator weighted by their gold reliability (`annotator_quality`) unless `reliability` is given."""
    if reliability is None:
        reliability = {
            r["annotator"]: r["reliability"] for r in tables.read_table(layout, "annotator_quality").to_pylist()
        }
    prelabels = {r["face_id"]: r for r in tables.read_table(layout, "prelabels").to_pylist()}
    human = human_ratings(layout)
    rows = []
    for face_id in sorted(prelabels.keys() | human.keys()):
        pre = prelabels.get(face_id)
        version = pre["model_version"] if pre else ""
        if face_id in human:
            raters = human[face_id]
            matrix = np.stack([s for _, s in raters])
            weights = np.array([(reliability or {}).get(a, 1.0) for a, _ in raters])
            centre = consensus(matrix, weights)
            unrated = np.isnan(centre)  # no annotator set that slider: the pre-label's value stands
            if unrated.any():
                if pre is None:
                    continue  # nothing to fill it with: not scored until someone rates it
                centre[unrated] = [pre[c] for c, u in zip(CATEGORIES, unrated, strict=True) if u]
            spread = float(np.nanmean(np.abs(matrix - centre)))
            rows.append(dict(face_id=face_id, source="human", n_annotators=len(raters),
                             agreement=1.0 - spread, model_version=version,
                             **dict(zip(CATEGORIES, centre.tolist(), strict=True))))  # fmt: skip
        else:
            rows.append(dict(face_id=face_id, source="model", n_annotators=0, agreement=None,
                             model_version=version, **{c: pre[c] for c in CATEGORIES}))  # fmt: skip
    tables.write_partition(layout, "affect_scores", ALL, rows)

    eligible = release_eligible(layout)
    scored = {r["face_id"] for r in rows}
    return ScoreReport(
        faces=len(rows),
        human=sum(r["source"] == "human" for r in rows),
        model=sum(r["source"] == "model" for r in rows),
        eligible=len(eligible),
        covered=len(eligible & scored),
        alpha=alpha_per_category(human),
        alpha_detail=agreement_per_category(human),
        icc2=icc_per_category(human),
    )


def agreement_per_category(human: dict[str, list[tuple[str, np.ndarray]]]) -> dict[str, Agreement]:
    """Krippendorff's alpha (interval) per category over faces x annotators, with its reason where
    undefined or not evaluable (annotation.agreement)."""
    annotators = sorted({a for raters in human.values() for a, _ in raters})
    col = {a: i for i, a in enumerate(annotators)}
    cube = np.full((len(human), max(len(annotators), 1), len(CATEGORIES)), np.nan)
    for i, raters in enumerate(human.values()):
        for a, s in raters:
            cube[i, col[a]] = s
    return {c: alpha_interval(cube[:, :, k]) for k, c in enumerate(CATEGORIES)}


def alpha_per_category(human: dict[str, list[tuple[str, np.ndarray]]]) -> dict[str, float]:
    """Krippendorff's alpha (interval) per category; NaN where undefined (`agreement_per_category` says why)."""
    return {c: a.value for c, a in agreement_per_category(human).items()}


def icc_per_category(human: dict[str, list[tuple[str, np.ndarray]]]) -> dict[str, float]:
    """ICC(2,1) per category between the two annotators who rated most faces, on the faces both
    rated (ICC needs a complete faces x raters table); NaN with fewer than two such faces."""
    counts: dict[str, int] = defaultdict(int)
    for raters in human.values():
        for a, _ in raters:
            counts[a] += 1
    pair = sorted(counts, key=lambda a: (-counts[a], a))[:2]
    both = [dict(raters) for raters in human.values() if len(pair) == 2 and set(pair) <= {a for a, _ in raters}]
    if len(both) < 2:
        return dict.fromkeys(CATEGORIES, math.nan)
    return {c: icc(np.array([[r[a][k] for a in pair] for r in both]))["ICC2"] for k, c in enumerate(CATEGORIES)}
