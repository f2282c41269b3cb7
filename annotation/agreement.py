"""Agreement between raters: Krippendorff's alpha (interval) and the intraclass correlation.

Both take a units x raters matrix of scores with NaN where a rater did not score a unit. Where a
coefficient is undefined it says why (`Agreement.reason`), beside how many raters and pairable values
it saw:

    single_rater              no unit has two ratings: nobody rated a face someone else rated
    too_few_pairable_values   fewer than two values in units with two or more ratings
    no_variance               every pairable value is the same: agreement is perfect but unmeasurable
    no_ratings                the matrix holds no rating at all
    not_finite                a score is infinite, or the sums overflow (a broken import): nothing is computed
    too_few_pairable_units    only one unit has two or more ratings: alpha is 0 whatever they are
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
    """Krippendorff's alpha (interval) of a units x raters matrix (NaN: not rated), with why it is
    undefined (see the module doc). ValueError for anything but a 2-D matrix."""
    raw = np.asarray(data, dtype=object if isinstance(data, list) else None)
    if raw.dtype.kind not in "biuf" and not (raw.dtype == object and _all_numbers(raw)):
        raise ValueError(f"agreement needs a units x raters matrix of numbers, got {raw.dtype} of shape {raw.shape}")
    try:
        data = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"agreement needs a units x raters matrix of numbers: {err}") from None
    if data.ndim != 2:
        raise ValueError(f"agreement needs a units x raters matrix, got shape {data.shape}")
    if np.isinf(data).any():
        return Agreement(math.nan, "not_finite", 0, 0, math.nan)
    rated = ~np.isnan(data)
    if not rated.any():
        return Agreement(math.nan, "no_ratings", 0, 0, math.nan)
    pairable_units = rated.sum(axis=1) >= 2
    raters = int(rated[pairable_units].any(axis=0).sum())
    values = data[pairable_units][rated[pairable_units]]
    with np.errstate(over="ignore", invalid="ignore"):
        variance = float(values.var()) if len(values) else math.nan
        value = krippendorff_alpha_interval(data)
    if not pairable_units.any():
        reason = "single_rater"
    elif len(values) < 2:
        reason = "too_few_pairable_values"
    elif values.min() == values.max():
        reason = "no_variance"
    elif not (math.isfinite(value) and math.isfinite(variance)):
        reason = "not_finite"
    elif pairable_units.sum() < 2:
        reason = "too_few_pairable_units"
    elif variance < MIN_VARIANCE:
        reason = "low_variance"
    else:
        reason = None
    return Agreement(value, reason, raters, len(values), variance)


def _all_numbers(raw: np.ndarray) -> bool:
    """An object array (a list of lists) of numbers only (ragged lists fail later, clearly)."""
    try:
        flat = np.array(raw.tolist(), dtype=object).ravel()
    except ValueError:
        return True  # ragged: the float conversion names it
    return all(isinstance(v, int | float | np.number) and not isinstance(v, bool | complex) or v is None
               for v in flat)  # fmt: skip


def krippendorff_alpha_interval(data: np.ndarray) -> float:
    """Krippendorff's alpha with the interval metric (squared differences), missing values allowed.

    alpha = 1 - D_o / D_e, from the coincidences of pairable values: units with at least two values
    (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"). NaN when undefined (fewer
    than two pairable values, or no variation at all).

    With squared differences both sums over pairs have a closed form through sums of squares,
    sum_{i,j} (x_i - x_j)^2 = 2 m SS (m values, SS their squared deviations from their mean), so
    D_o = sum_u 2 m_u SS_u / (m_u - 1) / n and D_e = 2 SS / (n - 1): linear time and memory in the
    ratings (a pairwise matrix of 20,000 units x 3 raters needed 21 GiB)."""
    data = np.atleast_2d(np.asarray(data, dtype=np.float64))
    rated = ~np.isnan(data)
    m = rated.sum(axis=1)
    data, rated, m = data[m >= 2], rated[m >= 2], m[m >= 2]
    n = int(m.sum())
    if n < 2:
        return math.nan
    x = np.where(rated, data, 0.0)
    unit_mean = x.sum(axis=1) / m
    ss_units = (np.where(rated, data - unit_mean[:, None], 0.0) ** 2).sum(axis=1)
    d_o = float((2.0 * m * ss_units / (m - 1)).sum()) / n
    values = data[rated]
    if np.ptp(values) == 0:  # no variation at all (tested exactly: a mean's rounding is not variation)
        return math.nan
    d_e = 2.0 * float(((values - values.mean()) ** 2).sum()) / (n - 1)
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
