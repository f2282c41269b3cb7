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

Beside the paper's, three readings that a lenient pooled CLS can hide (docs/bench.md):
- CLS-12/task: the correlation within each task (one source toward one category over the alpha
  grid), averaged: a model that moves some people and not others scores low here.
- |I-a|: the mean absolute gap between judged intensity and alpha over alpha in [0, 1] (a judge's
  scale ends at 1): an on/off switch has a high CLS but a large gap.
- Acc-12@1: accuracy at alpha = 1 alone (at small alpha every category looks neutral).

Intervals: `bootstrap` resamples the bench's sources (people) with replacement; `paired_bootstrap`
resamples the same sources for two models and gives the interval of their difference.
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
    source: str = ""  # the source face (person) edited: what the bootstrap resamples

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


def cls_per_task(edits: Sequence[Edit], categories: Sequence[str] = CATEGORIES) -> float:
    """The mean over tasks (source, target) of the correlation between alpha and judged intensity."""
    tasks: dict[tuple[str, str], list[Edit]] = {}
    for e in edits:
        if e.target in categories:
            tasks.setdefault((e.source, e.target), []).append(e)
    values = [cls(task, categories) for task in tasks.values() if len({e.alpha for e in task}) >= 3]
    return float(np.mean(values)) if values else float("nan")


def intensity_error(edits: Sequence[Edit]) -> float:
    """Mean |judged target intensity - alpha| over the edits with alpha in [0, 1]."""
    gaps = [abs(e.intensity - e.alpha) for e in edits if 0 <= e.alpha <= 1]
    return float(np.mean(gaps)) if gaps else float("nan")


def intensity_curves(edits: Sequence[Edit], categories: Sequence[str], alphas: Sequence[float]) -> dict[str, list]:
    """Per category, the mean judged target intensity at each alpha (NaN where no edit): CLS plots."""
    return {c: [float(np.mean([e.intensity for e in edits if e.target == c and e.alpha == a] or [np.nan]))
                for a in alphas] for c in categories}  # fmt: skip


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
        "CLS-12/task": cls_per_task(edits),
        "|I-a|": intensity_error(edits),
        "Acc-12@1": accuracy([e for e in edits if e.alpha == 1.0]),
    }


HEADLINE = ("mSCR", "Acc-12", "CLS-12", "ID Sim", "HES")

# Which way is better, and what each metric measures in one line (report.html, `ffe bench show`).
LOWER_IS_BETTER = frozenset({"mSCR", "|I-a|"})
DEFINITIONS: dict[str, str] = {
    "mSCR": "mean over confusable pairs of how often an edit toward one reads as the other (0.5: the pair collapsed)",
    "Acc-6": "share of edits (alpha > 0) whose dominant judged expression is the target, Ekman's six",
    "Acc-12": "share of edits (alpha > 0) whose dominant judged expression is the target, all twelve",
    "CLS-6": "correlation of requested alpha with judged target intensity, pooled over Ekman's six",
    "CLS-12": "correlation of requested alpha with judged target intensity, pooled over all twelve",
    "ID Sim": "mean identity similarity of each edit to its source",
    "S_E": "mean judged intensity of the target over edits at alpha > 0",
    "HES": "harmonic mean of S_E and ID Sim: expression gained without losing the person",
    "CLS-12/task": "CLS within each task (one source, one category), averaged",
    "|I-a|": "mean |judged target intensity - alpha| for alpha in [0, 1]",
    "Acc-12@1": "Acc-12 at alpha = 1 only",
}
# What guessing gives: a uniformly random dominant expression among all twelve (the dominant
# expression is taken over all twelve for Acc-6 too; only the targets are Ekman's six).
CHANCE = {"Acc-6": 1 / len(CATEGORIES), "Acc-12": 1 / len(CATEGORIES), "Acc-12@1": 1 / len(CATEGORIES)}


def better(name: str) -> str:
    """"lower" or "higher": which way a metric improves."""
    return "lower" if name in LOWER_IS_BETTER else "higher"


def per_category(edits: Sequence[Edit], categories: Sequence[str] = CATEGORIES) -> dict[str, dict[str, float]]:
    """Per target category: Acc (alpha > 0), CLS (pooled over its edits) and the mean judged intensity
    of the target at alpha > 0 (its S_E); NaN where a category has no edits."""
    out = {}
    for c in categories:
        mine = [e for e in edits if e.target == c]
        positive = [e.intensity for e in mine if e.alpha > 0]
        out[c] = {"Acc": accuracy(mine, (c,)), "CLS": cls(mine, (c,)),
                  "S_E": float(np.mean(positive)) if positive else float("nan"), "edits": len(mine)}  # fmt: skip
    return out


class _Weighted:
    """Every metric of `summary` over the same edits with a weight per source: a bootstrap draw is a
    weight vector (how often each source was drawn), so no edit list is rebuilt per draw. Equal to
    `summary` of the correspondingly repeated edits (tests/test_metrics.py checks it)."""

    def __init__(self, edits: Sequence[Edit], sources: Sequence[str], pairs: Sequence[tuple[str, str]]):
        index = {s: k for k, s in enumerate(sources)}
        self.src = np.array([index[e.source] for e in edits], dtype=np.int64)
        self.target = np.array([CATEGORIES.index(e.target) for e in edits], dtype=np.int64)
        self.dom = np.array([int(np.argmax(e.scores)) for e in edits], dtype=np.int64)
        self.alpha = np.array([e.alpha for e in edits], dtype=np.float64)
        self.intensity = np.array([e.intensity for e in edits], dtype=np.float64)
        self.id_sim = np.array([e.id_sim for e in edits], dtype=np.float64)
        six = [CATEGORIES.index(c) for c in CATEGORIES_6]
        self.in_six = np.isin(self.target, six)
        self.pairs = [(CATEGORIES.index(a), CATEGORIES.index(b)) for a, b in pairs]
        tasks: dict[tuple[str, str], list[Edit]] = {}
        for e in edits:
            tasks.setdefault((e.source, e.target), []).append(e)
        kept = [(index[src], cls(t)) for (src, _), t in tasks.items() if len({e.alpha for e in t}) >= 3]
        self.task_src = np.array([k for k, _ in kept], dtype=np.int64)
        self.task_cls = np.array([v for _, v in kept], dtype=np.float64)

    @staticmethod
    def _mean(values: np.ndarray, w: np.ndarray) -> float:
        total = w.sum()
        return float((values * w).sum() / total) if total > 0 else float("nan")

    @staticmethod
    def _pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
        total = w.sum()
        if total < 3:
            return float("nan")
        mx, my = (w * x).sum() / total, (w * y).sum() / total
        vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
        if vx <= 1e-24 or vy <= 1e-24:
            return 0.0  # nothing moves: no linear control
        return float((w * (x - mx) * (y - my)).sum() / np.sqrt(vx * vy))

    def summary(self, source_weights: np.ndarray) -> dict[str, float]:
        w = source_weights[self.src].astype(np.float64)
        positive = self.alpha > 0
        hit = (self.dom == self.target).astype(np.float64)
        wp = w * positive
        counts = np.bincount(self.target * 12 + self.dom, weights=wp, minlength=144).reshape(12, 12)
        totals = counts.sum(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.where(totals > 0, counts / totals, np.nan)
        bcrs = [(c[i, j] + c[j, i]) / 2 for i, j in self.pairs]
        bcrs = [b for b in bcrs if not np.isnan(b)]
        s_e, s_id = self._mean(self.intensity, wp), self._mean(self.id_sim, w)
        unit = (self.alpha >= 0) & (self.alpha <= 1)
        task_w = source_weights[self.task_src].astype(np.float64)
        return {
            "mSCR": float(np.mean(bcrs)) if bcrs else float("nan"),
            "Acc-6": self._mean(hit, wp * self.in_six),
            "Acc-12": self._mean(hit, wp),
            "CLS-6": self._pearson(self.alpha, self.intensity, w * self.in_six),
            "CLS-12": self._pearson(self.alpha, self.intensity, w),
            "ID Sim": s_id,
            "S_E": s_e,
            "HES": hes(s_e, s_id),
            "CLS-12/task": self._mean(self.task_cls, task_w),
            "|I-a|": self._mean(np.abs(self.intensity - self.alpha), w * unit),
            "Acc-12@1": self._mean(hit, w * (self.alpha == 1.0)),
        }


def _interval(values: Sequence[float]) -> list[float]:
    return [round(float(v), 4) for v in np.nanpercentile(np.asarray(values, dtype=float), [2.5, 97.5])]


ALL = ("mSCR", "Acc-6", "Acc-12", "CLS-6", "CLS-12", "ID Sim", "S_E", "HES", "CLS-12/task", "|I-a|", "Acc-12@1")


def bootstrap(edits: Sequence[Edit], n: int = 1000, seed: int = 0, names: Sequence[str] = ALL,
              pairs: Sequence[tuple[str, str]] = CONFUSABLE_PAIRS) -> dict[str, list[float]]:  # fmt: skip
    """95% intervals of `names` (default: every metric of `summary`), resampling the sources with
    replacement `n` times."""
    return paired_bootstrap({"": edits}, n, seed, names, pairs)[""]


def paired_bootstrap(arms: dict[str, Sequence[Edit]], n: int = 1000, seed: int = 0,
                     names: Sequence[str] = HEADLINE, pairs: Sequence[tuple[str, str]] = CONFUSABLE_PAIRS,
                     baseline: str | None = None) -> dict:  # fmt: skip
    """Per arm, 95% intervals of `names`; with `baseline`, also of each arm's difference to it on the
    same resampled sources (`minus_<baseline>`). The arms must have edited the same sources."""
    per_arm = {arm: sorted({e.source for e in edits}) for arm, edits in arms.items()}
    sources = next(iter(per_arm.values()))
    if any(s != sources for s in per_arm.values()):
        raise ValueError("paired bootstrap: the arms edited different sources")
    weighted = {arm: _Weighted(edits, sources, pairs) for arm, edits in arms.items()}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[dict]] = {arm: [] for arm in arms}
    for _ in range(n):
        weights = np.bincount(rng.integers(0, len(sources), len(sources)), minlength=len(sources))
        for arm, arrays in weighted.items():
            draws[arm].append(arrays.summary(weights))
    out: dict[str, dict] = {}
    for arm in arms:
        out[arm] = {m: _interval([d[m] for d in draws[arm]]) for m in names}
        if baseline is not None and arm != baseline:
            out[arm][f"minus_{baseline}"] = {
                m: _interval([d[m] - b[m] for d, b in zip(draws[arm], draws[baseline], strict=True)]) for m in names
            }  # fmt: skip
    return out
