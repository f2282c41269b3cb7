"""The synthetic world: faces with known identity and intensities, and the judge that reads them back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixelsmile.synthetic import (
    CATEGORIES,
    D,
    identity_similarity,
    judge,
    random_identity,
    render,
    write_world,
)


def test_every_category_moves_the_face_its_own_way():
    assert np.linalg.matrix_rank(D) == len(CATEGORIES)  # intensities can be read back uniquely
    a, b = D[CATEGORIES.index("fear")], D[CATEGORIES.index("surprised")]
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert 0.6 < cos < 0.95  # a confusable pair: close, not the same


def test_the_judge_reads_back_intensities_and_identity():
    rng = np.random.default_rng(7)
    errors, right, same, other = [], 0, [], []
    people = [random_identity(rng) for _ in range(40)]
    for i, person in enumerate(people):
        s = np.zeros(len(CATEGORIES))
        s[i % 12] = rng.uniform(0.4, 1.0)
        j = judge(render(person, s, 64))
        errors.append(np.abs(j.scores - s).mean())
        right += j.dominant == CATEGORIES[i % 12]
        same.append(identity_similarity(j.identity, person.vector()))
        other.append(identity_similarity(j.identity, people[(i + 1) % len(people)].vector()))
    assert np.mean(errors) < 0.08
    assert right / len(people) >= 0.8
    assert np.mean(same) > 0.9 and np.mean(same) > np.mean(other) + 0.2
    neutral = judge(render(people[0], np.zeros(len(CATEGORIES)), 64))
    assert neutral.scores.max() < 0.2


def test_judged_intensity_rises_with_the_true_one():
    person = random_identity(np.random.default_rng(3))
    for cat in ("happy", "surprised", "angry", "shy"):
        k = CATEGORIES.index(cat)
        judged = []
        for a in np.linspace(0, 1, 6):
            s = np.zeros(len(CATEGORIES))
            s[k] = a
            judged.append(judge(render(person, s, 64)).scores[k])
        assert np.corrcoef(np.linspace(0, 1, 6), judged)[0, 1] > 0.95, cat


def test_a_perfect_editor_scores_near_the_top_through_the_judge_at_the_models_size():
    """The judge's ceiling: fresh people rendered with exactly the asked intensity, as the 64 px
    models see them, read back over the proving ground's alpha grid. Every arm's number is read
    against this one."""
    from pixelsmile import metrics
    from pixelsmile.proving import ProvingSettings, flat, perfect_editor

    ceiling = metrics.summary(flat(perfect_editor(12, ProvingSettings())))
    assert ceiling["Acc-12"] >= 0.97 and ceiling["CLS-12"] >= 0.97, ceiling
    assert ceiling["mSCR"] <= 0.03 and ceiling["ID Sim"] >= 0.99, ceiling


@pytest.mark.slow
def test_a_synthetic_world_becomes_a_release_with_exact_labels(tmp_path):
    from storage.layout import Layout
    from storage.releases.build import build_release
    from storage.releases.config import ReleaseConfig
    from storage.releases.plan import plan_release, release_dir, write_plan
    from storage.releases.shards import write_shards

    layout = Layout.at(tmp_path / "w")
    write_world(layout, people=12, faces_per_person=5, size=48)
    plan = plan_release(layout, ReleaseConfig(shard_target_bytes=200_000))
    write_plan(layout, plan)
    build_release(layout, plan.version)
    manifest = write_shards(layout, plan.version)
    assert manifest["complete"] and manifest["counts"]["faces"] == 60
    line = (release_dir(layout, plan.version) / "triplets.jsonl").read_text().splitlines()[0]
    t = json.loads(line)
    assert t["dst"][0]["category"] in CATEGORIES and t["src"]["image"].startswith("images/")
