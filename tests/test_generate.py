"""Generators: a tiny random Qwen-Image-Edit as PixelSmile (interpolated intensity) and as a plain
diffusers editing pipeline (an instruction in words); both reproducible by seed, both named and
versioned; clear errors for a missing folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from curation.generation import variant_key
from pixelsmile.generate import (
    ATTRIBUTES,
    TEMPLATES,
    GenerationError,
    GeneratorSpec,
    adverb,
    build_tiny_instruct_pix2pix,
    load_generator,
    model_version,
    render_template,
)
from pixelsmile.qwen import build_tiny
from storage.schemas import CATEGORIES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("models") / "tiny-qwen-image-edit")


@pytest.fixture(scope="module")
def face():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def test_every_category_has_attributes_and_every_template_renders():
    assert set(ATTRIBUTES) == set(CATEGORIES)
    for template in TEMPLATES.values():
        text = render_template(template, "surprised", 0.6, "anime")
        assert "surprised" in text and "character" in text and "{" not in text
    assert [adverb(a) for a in (0.1, 0.4, 0.7, 1.0, 1.4)] == ["faintly", "slightly", "clearly", "very", "extremely"]
    with pytest.raises(ValueError, match="unknown expression"):
        render_template(TEMPLATES["generic"], "bored", 0.5)


@pytest.mark.parametrize("kind", ["pixelsmile", "qwen-image-edit"])
def test_a_generator_is_reproducible_by_seed_and_records_its_prompt(tiny, face, kind):
    gen = load_generator(GeneratorSpec(kind=kind, model_path=str(tiny), steps=2, size=64))
    assert gen.name == f"{kind}:{tiny.name}" and gen.version == model_version(tiny)
    a, b, c = gen(face, "fear", 0.4, seed=1), gen(face, "fear", 0.4, seed=1), gen(face, "fear", 0.4, seed=2)
    assert a.size == (64, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))
    text = gen.prompt("fear", 0.4)
    if kind == "pixelsmile":
        assert text == "Edit the person to show a fear expression @ 0.40"  # interpolated, not worded
    else:
        assert "slightly fear" in text and ATTRIBUTES["fear"] in text
    key = variant_key("face_0", gen, text, 1)
    assert key == variant_key("face_0", gen, text, 1) != variant_key("face_0", gen, text, 2)


def test_any_diffusers_editing_pipeline_from_a_folder_edits_with_the_kinds_template(tmp_path, face):
    """The generic path: InstructPix2Pix loaded by diffusers from a local folder, given its own
    kind's prompt; a folder of another kind is one clear error."""
    folder = build_tiny_instruct_pix2pix(tmp_path / "tiny-instruct-pix2pix")
    gen = load_generator(GeneratorSpec(kind="instruct-pix2pix", model_path=str(folder), steps=2, size=64))
    assert gen.prompt("happy", 0.5) == f"make the person look slightly happy, {ATTRIBUTES['happy']}"
    a, b = gen(face, "happy", 0.5, seed=3), gen(face, "happy", 0.5, seed=3)
    assert a.size == (64, 64) and np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(GenerationError, match="cannot be loaded as a diffusers pipeline"):
        load_generator(GeneratorSpec(kind="flux-kontext", model_path=str(tmp_path)))


def test_missing_folders_and_unknown_kinds_are_clear_errors(tmp_path, tiny):
    with pytest.raises(GenerationError, match="does not exist"):
        load_generator(GeneratorSpec(model_path=str(tmp_path / "nowhere")))
    with pytest.raises(GenerationError, match="needs model_path"):
        load_generator(GeneratorSpec())
    with pytest.raises(GenerationError, match="unknown generator kind"):
        load_generator(GeneratorSpec(kind="dall-e", model_path=str(tiny)))
    with pytest.raises(GenerationError, match="LoRA"):
        load_generator(GeneratorSpec(model_path=str(tiny), lora=str(tmp_path / "none.safetensors")))
    with pytest.raises(GenerationError, match="not a finished pixel-model"):
        load_generator(GeneratorSpec(kind="pixel", model_path=str(tiny)))


def test_the_version_follows_the_lora_and_the_config(tmp_path, tiny):
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"one")
    v1 = model_version(tiny, lora)
    lora.write_bytes(b"two")
    assert model_version(tiny, lora) != v1 and model_version(tiny) not in (v1, model_version(tiny, lora))
