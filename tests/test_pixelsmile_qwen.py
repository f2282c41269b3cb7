"""The Qwen-Image-Edit backbone on a tiny random model built in the real layout: load, edit, sweep,
blend, LoRA round trip, and clear errors for wrong folders and files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelsmile.cli import main
from pixelsmile.infer import EditSettings, conditioning, edit, parse_sweep
from pixelsmile.lora import LoraError, add_lora, load_lora, save_lora
from pixelsmile.qwen import ModelFolderError, build_tiny, load_pipeline

TINY = EditSettings(steps=2, size=64, condition_area=56 * 56)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("models") / "tiny-qwen-image-edit")


@pytest.fixture(scope="module")
def face() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()[30:230, 150:330]).resize((64, 64))


def test_a_tiny_edit_gives_an_image_of_the_right_size(tiny_model, face):
    pipe = load_pipeline(tiny_model)
    out = edit(pipe, face, {"surprised": 0.4}, TINY)
    assert out.size == (64, 64) and out.mode == "RGB"
    again = edit(pipe, face, {"surprised": 0.4}, TINY)
    assert np.array_equal(np.asarray(out), np.asarray(again))  # same seed, same image


def test_conditioning_interpolates_between_neutral_and_target(tiny_model, face):
    pipe = load_pipeline(tiny_model)
    zero, one, half = (conditioning(pipe, face, {"fear": a}, TINY) for a in (0.0, 1.0, 0.5))
    assert torch.allclose(half.embeds, (zero.embeds + one.embeds) / 2, atol=1e-5)
    assert not torch.allclose(zero.embeds, one.embeds)


def test_lora_round_trip_in_diffusers_format(tiny_model, face, tmp_path):
    pipe = load_pipeline(tiny_model)
    params = add_lora(pipe.transformer, rank=4, alpha=8)
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in pipe.transformer.named_parameters() if "lora" not in n)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.5)  # a trained adapter, in effect
    trained = np.asarray(edit(pipe, face, {"happy": 1.0}, TINY))
    path = save_lora(pipe.transformer, tmp_path / "lora")
    assert path.name == "pytorch_lora_weights.safetensors"

    fresh = load_pipeline(tiny_model)
    base = np.asarray(edit(fresh, face, {"happy": 1.0}, TINY))
    load_lora(fresh, tmp_path / "lora")  # as QwenImageEditPlusPipeline.load_lora_weights does
    assert np.array_equal(np.asarray(edit(fresh, face, {"happy": 1.0}, TINY)), trained)
    assert not np.array_equal(base, trained)


def test_a_lora_saved_as_the_reference_saves_it_loads_as_the_pipeline_loads_it(tiny_model, face, tmp_path):
    """The reference writes its LoRA with convert_state_dict_to_diffusers + save_lora_weights and no
    adapter metadata (the published preview LoRA is such a file); our loader gives the same edit as
    the pipeline's own load_lora_weights on it."""
    from diffusers import QwenImageEditPlusPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    pipe = load_pipeline(tiny_model)
    params = add_lora(pipe.transformer, rank=4, alpha=8)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.transformer, adapter_name="pixelsmile"))
    QwenImageEditPlusPipeline.save_lora_weights(tmp_path / "ref", transformer_lora_layers=layers)
    ours, theirs = load_pipeline(tiny_model), load_pipeline(tiny_model)
    load_lora(ours, tmp_path / "ref")
    theirs.load_lora_weights(str(tmp_path / "ref"))
    edited = np.asarray(edit(ours, face, {"surprised": 0.6}, TINY))
    assert np.array_equal(edited, np.asarray(edit(theirs, face, {"surprised": 0.6}, TINY)))
    assert not np.array_equal(edited, np.asarray(edit(load_pipeline(tiny_model), face, {"surprised": 0.6}, TINY)))


def test_wrong_folders_and_lora_files_are_one_clear_error(tiny_model, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="no model_index.json"):
        load_pipeline(tmp_path / "empty")
    pipe = load_pipeline(tiny_model)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoraError, match="cannot load LoRA .*junk.safetensors"):
        load_lora(pipe, tmp_path / "junk.safetensors")
    with pytest.raises(LoraError, match="does not exist"):
        load_lora(pipe, tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"transformer.other_model.lora_A.weight": torch.zeros(4, 8)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LoraError, match="other.safetensors"):
        load_lora(pipe, tmp_path / "other.safetensors")


def test_cli_edit_sweep_and_blend(tiny_model, face, tmp_path, capsys):
    src = tmp_path / "face.png"
    face.save(src)
    common = ["--model", str(tiny_model), "--image", str(src), "--steps", "2", "--size", "64", "--device", "cpu"]
    assert main(["edit", *common, "--expression", "surprised", "--scale", "0.4", "--out", str(tmp_path / "a.png")]) == 0
    assert Image.open(tmp_path / "a.png").size == (64, 64)
    assert main(["edit", *common, "--expression", "fear", "--sweep", "0:1.5:4", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size == (64 * 5, 64 + 18)  # the source, then 4 intensities
    assert main(["edit", *common, "--blend", "happy=0.6,surprised=0.4", "--out", str(tmp_path / "b.png")]) == 0
    assert main(["edit", *common, "--expression", "joy", "--out", str(tmp_path / "x.png")]) == 1
    assert "unknown expression 'joy'" in capsys.readouterr().err
    assert parse_sweep("0:1.5:7") == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
