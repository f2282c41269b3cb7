"""The vision-language judge: the answer parser survives what models write; the judge's plumbing
(local folder, prompt with the image, generation, parsing) runs on a tiny random Qwen2.5-VL."""

from __future__ import annotations

import numpy as np
import pytest

from pixelsmile.bench.judges import SyntheticJudge
from pixelsmile.bench.vlm import VLMJudge, build_tiny_vlm, parse_scores
from pixelsmile.synthetic import random_identity, render
from storage.schemas import CATEGORIES


def at(scores: np.ndarray, category: str) -> float:
    return float(scores[CATEGORIES.index(category)])


def test_clean_json_and_json_inside_chatter():
    clean = '{"happy": 0.8, "sad": 0, "angry": 0.1, "fear": 0.2, "surprised": 0.65, "disgust": 0, "confused": 0,' \
            ' "contempt": 0, "confident": 0.3, "shy": 0, "sleepy": 0, "anxious": 0.05}'  # fmt: skip
    s = parse_scores(clean)
    assert s.shape == (12,) and at(s, "happy") == 0.8 and at(s, "surprised") == 0.65
    chatty = f'Let me look. First guess {{"happy": 0.1}} -- no.\n```json\n{clean}\n```\nHope this helps!'
    assert np.array_equal(parse_scores(chatty), s)  # the last object, not the draft


def test_synonyms_percentages_ten_point_scales_and_missing_keys():
    s = parse_scores("Happiness: 70%, sadness: 5%, anger=2, surprise: '40', fear: 0.3, disgust: 0, joy: 0.9")
    assert at(s, "happy") == 0.7 and at(s, "sad") == 0.05 and at(s, "angry") == 0.2 and at(s, "surprised") == 0.4
    assert at(s, "fear") == 0.3 and at(s, "shy") == 0.0  # left out: 0; "joy" after "happiness": the first wins
    assert parse_scores("I cannot rate faces.") is None
    assert parse_scores('{"happy": 0.5, "sad": 0.1}') is None  # too few categories to trust


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-qwen2.5-vl")


def test_the_judge_runs_a_local_model_and_says_why_a_junk_answer_gives_no_scores(tiny_vlm):
    judge = VLMJudge(tiny_vlm, identity=SyntheticJudge(), max_new_tokens=12)
    face = render(random_identity(np.random.default_rng(0)), np.zeros(12), 64)
    answer = judge.answer(face)
    assert isinstance(answer, str)  # random weights: random tokens
    reading = judge.read(face)
    assert reading.scores is None and reading.reason.startswith("no scores in the VLM's answer")
    assert reading.identity is not None and judge.similarity(reading.identity, reading.identity) == 1.0
    assert judge.version == "tiny-qwen2.5-vl+synthetic-exact"  # the model, and who reads identity


def test_a_wrong_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a model folder"):
        VLMJudge(tmp_path)


def test_the_vlm_pre_labels_faces_under_its_own_version(tiny_vlm, tmp_path):
    """The annotation stage's scorer can be the VLM (the paper scored FFE with one): each face is
    read by it, its version is what the pre-labels record; a junk answer leaves the face unscored
    (for people to label), never a made-up score."""
    import pyarrow.parquet as pq

    from annotation.scores import prelabel_batch
    from curation.batches import manifests
    from pipelines.build import build
    from pipelines.resources import PrelabelScorerResource
    from pixelsmile.synthetic import write_world_input
    from storage.layout import Layout

    folder = write_world_input(tmp_path / "input", people=1, faces_per_person=2)
    (folder / "labels.csv").unlink()  # unlabelled: the scorer decides
    layout = Layout.at(tmp_path / "w")
    assert build(layout, tmp_path / "input", "+key:faces", echo=lambda _: None, pre_cropped=True).ok
    (batch,) = [m.batch for m in manifests(layout)]
    scorer = PrelabelScorerResource(scorer="vlm", vlm_path=str(tiny_vlm)).build()
    scorer.judge.max_new_tokens = 12
    info = prelabel_batch(layout, batch, scorer)
    assert info["model_version"] == "vlm@tiny-qwen2.5-vl"
    assert info["faces"] + info["unscored"] == 2
    rows = pq.read_table(layout.table_file("prelabels", batch)).to_pylist()
    assert all(r["model_version"] == "vlm@tiny-qwen2.5-vl" for r in rows)
