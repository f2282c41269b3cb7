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
