"""FFE-Bench metrics as the paper defines them (`../shared/paper-facts.md`), on judged edits.

An edit is (target category, alpha, judged 12 scores, identity similarity to its source).

- Directed confusion C(i -> j): the share of edits toward i whose dominant judged expression is j.
- BCR(i, j) = (C(i -> j) + C(j -> i)) / 2; mSCR = mean BCR over the confusable pairs (lower is better;
  0.5 means the pair collapsed into one expression).
- Acc-6 / Acc-12: the share of edits whose dominant expression is the target (over Ekman's six, or all).
- CLS: Pearson correlation between alpha and the judged intensity of the target. Our choice where the
  paper is silent: pooled over all edits of the categories in question (one correlation over every
  (alpha, intensity) pair), not averaged per task.
- ID Sim: the mean identity similarity of edits to their sources.
- HES = 2 S_E S_ID / (S_E + S_ID), S_E the mean judged target intensity, S_ID the mean ID Sim.

Confusion and accuracy count edits at alpha > 0 only (an edit at alpha 0 asks for no expression).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from storage.schemas import CATEGORIES, CATEGORIES_6, CONFUSABLE_PAIRS


@dataclass(frozen=True)
class Edit:
    target: str
    alpha: float
    scores: np.ndarray  # the judge's 12 intensities of the edited image
    id_sim: float

    @property
    def dominant(self) -> str:
        return CATEGORIES[int(np.argmax(self.scores))]

    @property
    def intensity(self) -> float:
        return float(self.scores[CATEGORIES.index(self.target)])


def confusion(edits: Sequence[Edit]) -> np.ndarray:
    """12 x 12: row i, column j = C(i -> j); rows without edits are NaN."""
    counts = np.zeros((len(CATEGORIES), len(CATEGORIES)))
    for e in edits:
        if e.alpha > 0:
            counts[CATEGORIES.index(e.target), CATEGORIES.index(e.dominant)] += 1
    totals = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore"):
        return np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)


def bcr(c: np.ndarray, a: str, b: str) -> float:
    i, j = CATEGORIES.index(a), CATEGORIES.index(b)
    return float((c[i, j] + c[j, i]) / 2)


def mscr(edits: Sequence[Edit], pairs: Sequence[tuple[str, str]] = CONFUSABLE_PAIRS) -> float:
    c = confusion(edits)
    values = [bcr(c, a, b) for a, b in pairs]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def accuracy(edits: Sequence[Edit], categories: Sequence[str] = CATEGORIES) -> float:
    chosen = [e for e in edits if e.alpha > 0 and e.target in categories]
    return float(np.mean([e.dominant == e.target for e in chosen])) if chosen else float("nan")


def cls(edits: Sequence[Edit], categories: Sequence[str] = CATEGORIES) -> float:
    chosen = [e for e in edits if e.target in categories]
    if len(chosen) < 3:
        return float("nan")
    alphas = np.array([e.alpha for e in chosen])
    judged = np.array([e.intensity for e in chosen])
    if alphas.std() == 0 or judged.std() == 0:
        return 0.0  # nothing moves: no linear control
    return float(np.corrcoef(alphas, judged)[0, 1])


def hes(s_e: float, s_id: float) -> float:
    return 2 * s_e * s_id / (s_e + s_id) if s_e + s_id > 0 else 0.0


def summary(edits: Sequence[Edit], pairs: Sequence[tuple[str, str]] = CONFUSABLE_PAIRS) -> dict[str, float]:
    positive = [e for e in edits if e.alpha > 0]
    s_e = float(np.mean([e.intensity for e in positive])) if positive else float("nan")
    s_id = float(np.mean([e.id_sim for e in edits])) if edits else float("nan")
    return {
        "mSCR": mscr(edits, pairs),
        "Acc-6": accuracy(edits, CATEGORIES_6),
        "Acc-12": accuracy(edits),
        "CLS-6": cls(edits, CATEGORIES_6),
        "CLS-12": cls(edits),
        "ID Sim": s_id,
        "S_E": s_e,
        "HES": hes(s_e, s_id),
    }
