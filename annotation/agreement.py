"""Agreement between raters: Krippendorff's alpha (interval) and the intraclass correlation.

Both take a units x raters matrix of scores with NaN where a rater did not score a unit.
"""

from __future__ import annotations

import math

import numpy as np


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
