"""Consensus scores from several raters: a reliability-weighted mean that one outlier cannot drag.

For each face and category, the centre starts at the weighted median of the ratings; each rating's
weight is then its rater's reliability times a Cauchy factor 1 / (1 + (r / scale)^2) of its distance r
from the centre, and the centre becomes the weighted mean; three rounds settle it. With raters who
agree, this is their weighted mean; a single rating far from the others gets almost no weight.
"""

from __future__ import annotations

import numpy as np

SCALE = 0.15  # distance (on the 0-1 scale) at which a rating's weight halves


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    half = cum[-1] / 2
    i = int(np.searchsorted(cum, half))
    if np.isclose(cum[i], half) and i + 1 < len(v):  # an even split: the middle of the two
        return float((v[i] + v[i + 1]) / 2)
    return float(v[i])


def robust_mean(values, reliability=None, scale: float = SCALE, rounds: int = 3) -> float:
    """The consensus of one face's ratings of one category (NaN ratings are ignored)."""
    values = np.asarray(values, dtype=np.float64)
    base = np.ones_like(values) if reliability is None else np.asarray(reliability, dtype=np.float64)
    keep = ~np.isnan(values) & (base > 0)
    values, base = values[keep], base[keep]
    if len(values) == 0:
        return float("nan")
    centre = weighted_median(values, base)
    for _ in range(rounds):
        w = base / (1.0 + ((values - centre) / scale) ** 2)
        centre = float((w * values).sum() / w.sum())
    return centre


def consensus(ratings: np.ndarray, reliability: np.ndarray | None = None) -> np.ndarray:
    """raters x categories ratings (NaN = not rated) -> one consensus per category."""
    ratings = np.atleast_2d(np.asarray(ratings, dtype=np.float64))
    return np.array([robust_mean(ratings[:, c], reliability) for c in range(ratings.shape[1])])
