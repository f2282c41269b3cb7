"""FFE-Bench metrics on hand-made judged edits."""

from __future__ import annotations

import numpy as np
import pytest

from pixelsmile.metrics import Edit, bcr, confusion, hes, summary
from storage.schemas import CATEGORIES

ALPHAS = (0.0, 0.5, 1.0, 1.5)


def one_hot(category: str, level: float) -> np.ndarray:
    s = np.zeros(len(CATEGORIES))
    s[CATEGORIES.index(category)] = level
    return s


def test_a_perfect_editor_scores_msc_0_accuracy_1_cls_1():
    edits = [Edit(c, a, one_hot(c, min(a, 1.0) * 0.6 + 0.01), 0.7) for c in CATEGORIES for a in ALPHAS]
    m = summary(edits)
    assert m["mSCR"] == 0.0 and m["Acc-6"] == m["Acc-12"] == 1.0
    alphas = np.tile(ALPHAS, 12)
    assert m["CLS-12"] == pytest.approx(np.corrcoef(alphas, np.minimum(alphas, 1.0))[0, 1])  # saturates above 1
    linear = [Edit(c, a, one_hot(c, a / 1.5), 0.7) for c in CATEGORIES for a in ALPHAS]
    assert summary(linear)["CLS-6"] == pytest.approx(1.0)


def test_the_no_edit_baseline_keeps_identity_and_has_no_control():
    neutral = np.full(len(CATEGORIES), 0.02)
    edits = [Edit(c, a, neutral, 1.0) for c in CATEGORIES for a in ALPHAS]
    m = summary(edits)
    assert m["ID Sim"] == 1.0 and m["CLS-12"] == 0.0 and m["Acc-12"] == pytest.approx(1 / 12)


def test_a_collapsed_pair_has_bcr_one_half_and_hes_follows_its_formula():
    # Every edit toward fear or surprised comes out surprised.
    edits = [Edit(c, 1.0, one_hot("surprised", 0.8), 0.6) for c in ("fear", "surprised")]
    c = confusion(edits)
    assert bcr(c, "fear", "surprised") == 0.5
    assert c[CATEGORIES.index("fear"), CATEGORIES.index("surprised")] == 1.0
    assert np.isnan(c[CATEGORIES.index("happy")]).all()
    assert hes(0.5, 0.7) == pytest.approx(2 * 0.5 * 0.7 / 1.2)
    m = summary(edits)
    assert m["HES"] == pytest.approx(hes(m["S_E"], m["ID Sim"]))


def test_per_task_cls_and_the_intensity_gap_catch_what_pooled_cls_hides():
    """An on/off switch (nothing below alpha 0.5, full above) scores a high pooled CLS but a visible
    gap to alpha; a model that moves only half the people scores a per-task CLS of one half."""
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    switch = [Edit("happy", a, one_hot("happy", float(a >= 0.5)), 1.0, "p") for a in grid]
    m = summary(switch)
    assert m["CLS-12"] > 0.85 and m["|I-a|"] == pytest.approx(np.mean([0, 0.25, 0.5, 0.25, 0]))
    linear = [Edit("happy", a, one_hot("happy", a), 1.0, "p") for a in grid]
    assert summary(linear)["|I-a|"] == pytest.approx(0.0)
    half = linear + [Edit("happy", a, one_hot("happy", 0.0), 1.0, "q") for a in grid]
    assert summary(half)["CLS-12/task"] == pytest.approx(0.5)  # 1 for p, 0 for q (nothing moves)
    at_one = [Edit("fear", 1.0, one_hot("fear", 0.9), 1.0), Edit("fear", 0.25, one_hot("surprised", 0.2), 1.0)]
    assert summary(at_one)["Acc-12@1"] == 1.0 and summary(at_one)["Acc-12"] == 0.5


def test_bootstrap_intervals_resample_people_and_pair_the_arms():
    from pixelsmile.metrics import bootstrap, paired_bootstrap

    rng = np.random.default_rng(0)
    edits = [Edit(c, a, one_hot(c, a * rng.uniform(0.5, 1.0)), rng.uniform(0.8, 1.0), f"person-{p}")
             for p in range(8) for c in ("fear", "surprised") for a in (0.0, 0.5, 1.0)]  # fmt: skip
    ci = bootstrap(edits, n=200, seed=1)
    point = summary(edits)
    for name in ("CLS-12", "ID Sim"):
        assert ci[name][0] <= point[name] <= ci[name][1] and ci[name][0] < ci[name][1]
    same = paired_bootstrap({"a": edits, "b": list(edits)}, n=50, seed=1, baseline="b")
    assert same["a"]["minus_b"]["ID Sim"] == [0.0, 0.0]  # the same people resampled for both arms
    with pytest.raises(ValueError, match="different sources"):
        paired_bootstrap({"a": edits, "b": edits[:-6]}, n=5)


def test_the_bootstrap_s_weighted_metrics_equal_summary_of_the_repeated_edits():
    from pixelsmile.metrics import _Weighted

    rng = np.random.default_rng(3)
    people = [f"p{k}" for k in range(6)]
    categories, alphas = ("fear", "surprised", "happy", "confused"), (0.0, 0.5, 1.0, 1.5)
    edits = [Edit(c, a, rng.uniform(0, 1, len(CATEGORIES)) * (1 + a), rng.uniform(0.5, 1), p)
             for p in people for c in categories for a in alphas]  # fmt: skip
    weights = np.array([0, 2, 1, 3, 0, 1])
    # A person drawn twice is two people of the resample (two tasks each, for the per-task CLS).
    repeated = [Edit(e.target, e.alpha, e.scores, e.id_sim, f"{p}#{copy}") for k, p in enumerate(people)
                for copy in range(weights[k]) for e in edits if e.source == p]  # fmt: skip
    fast = _Weighted(edits, people, [("fear", "surprised"), ("happy", "confident")]).summary(weights)
    slow = summary(repeated, [("fear", "surprised"), ("happy", "confident")])
    assert fast.keys() == slow.keys()
    for name in slow:
        assert fast[name] == pytest.approx(slow[name], abs=1e-12, nan_ok=True), name
