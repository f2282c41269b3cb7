"""Agreement between raters: Krippendorff's alpha (interval) and the intraclass correlation.

Both take a units x raters matrix of scores with NaN where a rater did not score a unit. Where a
coefficient is undefined it says why (`Agreement.reason`), beside how many raters and pairable values
it saw:

    single_rater              no unit has two ratings: nobody rated a face someone else rated
    too_few_pairable_values   fewer than two values in units with two or more ratings
    no_variance               every pairable value is the same: agreement is perfect but unmeasurable
    low_variance              the values hardly vary (variance < MIN_VARIANCE, e.g. a category almost
                              always 0): alpha is computed, but a gate must not read it (it is the
                              ratio of two tiny numbers: raters who agree on "0" score about 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_VARIANCE = 0.005  # of the pairable values (scores in [0, 1]): below, agreement is not evaluable


@dataclass(frozen=True)
class Agreement:
    value: float  # NaN when undefined
    reason: str | None  # why it is undefined or not evaluable (module doc); None: a number to judge by
    raters: int  # raters with at least one pairable value
    pairable: int  # values in units that two or more raters scored
    variance: float  # of the pairable values (NaN without any)

    @property
    def evaluable(self) -> bool:
        """Whether a gate may judge by it (defined, and the values vary enough to mean something)."""
        return self.reason is None

    def as_dict(self, digits: int = 4) -> dict:
        return {"value": None if math.isnan(self.value) else round(self.value, digits), "reason": self.reason,
                "raters": self.raters, "pairable": self.pairable,
                "variance": None if math.isnan(self.variance) else round(self.variance, 6)}  # fmt: skip


def alpha_interval(data: np.ndarray) -> Agreement:
    """Krippendorff's alpha (interval), with why it is undefined (see the module doc)."""
    data = np.asarray(data, dtype=np.float64)
    rated = ~np.isnan(data)
    pairable_units = rated.sum(axis=1) >= 2
    raters = int(rated[pairable_units].any(axis=0).sum()) if data.ndim == 2 and data.size else 0
    values = data[pairable_units][rated[pairable_units]] if data.size else np.array([])
    variance = float(values.var()) if len(values) else math.nan
    value = krippendorff_alpha_interval(data)
    if not pairable_units.any():
        reason = "single_rater"
    elif len(values) < 2:
        reason = "too_few_pairable_values"
    elif np.ptp(values) == 0:
        reason = "no_variance"
    elif variance < MIN_VARIANCE:
        reason = "low_variance"
    else:
        reason = None
    return Agreement(value, reason, raters, len(values), variance)


def krippendorff_alpha_interval(data: np.ndarray) -> float:
    """Krippendorff's alpha with the interval metric (squared differences), missing values allowed.

    alpha = 1 - D_o / D_e, from the coincidences of pairable values: units with at least two values
    (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"). NaN when undefined (fewer
    than two pairable values, or no variation at all)."""
    data = np.asarray(data, dtype=np.float64)
    units = [row[~np.isnan(row)] for row in data]
    units = [u for u in units if len(u) >= 2]
    n = sum(len(u) for u in units)
    if n < 2:
        return math.nan
    # Observed disagreement: within units, each pair weighted by 1 / (m_u - 1).
    d_o = sum(((u[:, None] - u[None, :]) ** 2).sum() / (len(u) - 1) for u in units) / n
    values = np.concatenate(units)
    # Expected disagreement: between all pairable values.
    d_e = ((values[:, None] - values[None, :]) ** 2).sum() / (n * (n - 1))
    if d_e == 0:
        return math.nan
    return float(1.0 - d_o / d_e)


def icc(data: np.ndarray) -> dict[str, float]:
    """Shrout & Fleiss (1979) intraclass correlations on the units that every rater scored.

    ICC(1,1), ICC(2,1), ICC(3,1) (single rater) and ICC(1,k), ICC(2,k), ICC(3,k) (mean of the k
    raters); ICC(2,*) is the usual choice for raters drawn from a pool. NaN where undefined."""
    data = np.asarray(data, dtype=np.float64)
    data = data[~np.isnan(data).any(axis=1)]
    n, k = data.shape if data.ndim == 2 else (0, 0)
    keys = ("ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k")
    if n < 2 or k < 2:
        return dict.fromkeys(keys, math.nan)
    grand = data.mean()
    ss_total = ((data - grand) ** 2).sum()
    ss_rows = k * ((data.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((data.mean(axis=0) - grand) ** 2).sum()
    ss_err = ss_total - ss_rows - ss_cols
    bms = ss_rows / (n - 1)  # between targets
    wms = (ss_total - ss_rows) / (n * (k - 1))  # within targets
    jms = ss_cols / (k - 1)  # between judges
    ems = ss_err / ((n - 1) * (k - 1))  # residual

    def ratio(num: float, den: float) -> float:
        return float(num / den) if den != 0 else math.nan

    return {
        "ICC1": ratio(bms - wms, bms + (k - 1) * wms),
        "ICC2": ratio(bms - ems, bms + (k - 1) * ems + k * (jms - ems) / n),
        "ICC3": ratio(bms - ems, bms + (k - 1) * ems),
        "ICC1k": ratio(bms - wms, bms),
        "ICC2k": ratio(bms - ems, bms + (jms - ems) / n),
        "ICC3k": ratio(bms - ems, bms),
    }
