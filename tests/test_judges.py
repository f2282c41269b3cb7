"""Judges behind one interface: the synthetic world's exact judge and the face judge built on the
dataset's own scorer read faces back; a picture without a face is a reading with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixelsmile.bench.judges import FaceJudge, SyntheticJudge
from pixelsmile.synthetic import random_identity, render
from storage.schemas import CATEGORIES


def test_the_synthetic_judge_reads_intensity_and_identity():
    judge = SyntheticJudge()
    person = random_identity(np.random.default_rng(0))
    s = np.zeros(len(CATEGORIES))
    s[CATEGORIES.index("surprised")] = 0.8
    edited, neutral = judge.read(render(person, s, 64)), judge.read(render(person, np.zeros(12), 64))
    assert edited.scores.shape == (12,) and abs(edited.scores[CATEGORIES.index("surprised")] - 0.8) < 0.15
    assert judge.similarity(edited.identity, neutral.identity) > 0.95
    other = judge.read(render(random_identity(np.random.default_rng(5)), np.zeros(12), 64))
    assert judge.similarity(other.identity, neutral.identity) < judge.similarity(edited.identity, neutral.identity)


@pytest.fixture(scope="module")
def face_judge():
    return FaceJudge()


def test_the_face_judge_scores_a_smile_and_knows_the_same_person(face_judge):
    from skimage import data

    rgb = data.astronaut()
    face = Image.fromarray(rgb[20:260, 120:360])
    reading = face_judge.read(face)
    assert reading.reason is None and reading.scores.shape == (12,)
    assert ((reading.scores >= 0) & (reading.scores <= 1)).all()
    assert CATEGORIES[int(np.argmax(reading.scores))] in ("happy", "confident")  # she smiles
    mirrored = face_judge.read(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert face_judge.similarity(reading.identity, mirrored.identity) > 0.9
    assert "+" in face_judge.version


def test_the_face_judge_says_why_it_cannot_read(face_judge):
    blank = Image.new("RGB", (256, 256), (120, 160, 200))
    reading = face_judge.read(blank)
    assert reading.scores is None and reading.reason == "no face with landmarks found"
