"""The Qwen-Image-Edit backbone on a tiny random model built in the real layout: load, edit, sweep,
blend, LoRA round trip, and clear errors for wrong folders and files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pixelsmile.cli import main
from pixelsmile.infer import EditSettings, conditioning, edit, parse_sweep
from pixelsmile.lora import LoraError, add_lora, load_lora, read_lora, save_lora
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


def _deltas(transformer, adapter: str) -> dict[str, torch.Tensor]:
    """module -> the weight change its LoRA makes (scaling * B @ A)."""
    out = {}
    for name, module in transformer.named_modules():
        if hasattr(module, "lora_A") and adapter in module.lora_A:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            out[name] = (b @ a) * module.scaling[adapter]
    return out


@pytest.fixture(scope="module")
def trained_lora(tiny_model):
    """A LoRA trained at the reference's ratio (alpha / rank = 2): its state dict (peft names) and
    the weight change of every module."""
    from peft.utils import get_peft_model_state_dict

    pipe = load_pipeline(tiny_model)
    params = add_lora(pipe.transformer, rank=4, alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.5)
    state = get_peft_model_state_dict(pipe.transformer, adapter_name="pixelsmile")
    return state, _deltas(pipe.transformer, "pixelsmile")


def _write(path, tensors: dict, metadata: dict | None = None):
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _layouts(state: dict, tmp_path) -> dict:
    """The trained LoRA written the ways other trainers write it."""
    import json

    from diffusers.utils import convert_state_dict_to_diffusers

    reference = convert_state_dict_to_diffusers(state)  # <m>.lora.down/up.weight, no alpha anywhere
    kohya, flat = {}, {}
    for k, v in state.items():
        m = k.removesuffix(".lora_A.weight").removesuffix(".lora_B.weight")
        kohya[f"transformer.{m}.{'lora_down' if '.lora_A.' in k else 'lora_up'}.weight"] = v
        kohya[f"transformer.{m}.alpha"] = torch.tensor(8.0)
        flat_m = "lora_transformer_" + m.replace(".", "_")
        flat[f"{flat_m}.{'lora_down' if '.lora_A.' in k else 'lora_up'}.weight"] = v
        flat[f"{flat_m}.alpha"] = torch.tensor(8.0)
    peft_dir = tmp_path / "peft-adapter"
    _write(peft_dir / "adapter_model.safetensors", {f"base_model.model.{k}": v for k, v in state.items()})
    (peft_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    metadata = {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 8})}
    return {
        "reference (lora.down/up, no alpha)": _write(tmp_path / "reference.safetensors", reference),
        "diffusers without the transformer. prefix": _write(tmp_path / "noprefix.safetensors", state, metadata),
        "DiffSynth default_0 names": _write(tmp_path / "diffsynth.safetensors", {
            k.replace(".lora_A.", ".lora_A.default_0.").replace(".lora_B.", ".lora_B.default_0."): v
            for k, v in state.items()}, metadata),
        "dotted lora_down/lora_up/alpha with transformer. prefix": _write(tmp_path / "kohya.safetensors", kohya),
        "a peft adapter folder": peft_dir,
        "kohya flat names (lora_transformer_..._to_q.lora_down)": _write(tmp_path / "flat.safetensors", flat),
    }  # fmt: skip


def test_loras_of_other_trainers_load_every_layer_at_their_training_scale(tiny_model, trained_lora, tmp_path):
    """Found: the reference's own files loaded with to_q/to_k/to_v/to_out unadapted (a peft warning
    only); DiffSynth names, prefix-less diffusers keys, dotted lora_down/lora_up/alpha and peft
    adapter folders were refused with misleading messages. Each now gives the exact weight change."""
    state, expected = trained_lora
    for name, path in _layouts(state, tmp_path).items():
        pipe = load_pipeline(tiny_model)
        loaded = load_lora(pipe, path)
        got = _deltas(pipe.transformer, "pixelsmile")
        assert sorted(got) == sorted(expected) and len(loaded.matched) == len(expected) and not loaded.unmatched, name
        assert all(torch.allclose(got[m], expected[m], atol=1e-5) for m in expected), name
    assert "reference" in load_lora(load_pipeline(tiny_model), tmp_path / "reference.safetensors").scale_source


def test_a_lora_with_modules_the_model_lacks_is_refused_or_loaded_when_allowed(tiny_model, trained_lora, tmp_path):
    """Found: a file whose modules only partly exist in the model loaded with no word (1 of 3 applied)."""
    state, expected = trained_lora
    extra = {**state, **{k.replace("transformer_blocks.0", "transformer_blocks.7"): v for k, v in state.items()
                         if k.startswith("transformer_blocks.0.")}}  # fmt: skip
    path = _write(tmp_path / "partial.safetensors", extra)
    with pytest.raises(LoraError, match=r"partial.safetensors: \d+ of \d+ module\(s\) are not in this transformer"):
        load_lora(load_pipeline(tiny_model), path)
    loaded = load_lora(load_pipeline(tiny_model), path, allow_unmatched=True)
    assert len(loaded.matched) == len(expected) and len(loaded.unmatched) == len(extra) // 2 - len(expected)


def test_a_lora_that_changes_nothing_says_so(tiny_model, trained_lora, tmp_path, capsys):
    """Found: a LoRA whose up-weights are all zero was accepted and edited nothing, silently."""
    state, _ = trained_lora
    zero = _write(tmp_path / "zero.safetensors", {k: torch.zeros_like(v) if ".lora_B." in k else v
                                                  for k, v in state.items()})  # fmt: skip
    with pytest.warns(UserWarning, match=r"its update is zero \(up-weights all zero, or alpha 0\): it edits nothing"):
        assert load_lora(load_pipeline(tiny_model), zero).zero_update
    alpha0 = {**state, **{k.replace(".lora_A.weight", ".alpha"): torch.tensor(0.0) for k in state if ".lora_A." in k}}
    with pytest.warns(UserWarning, match="it edits nothing"):
        assert load_lora(load_pipeline(tiny_model), _write(tmp_path / "alpha0.safetensors", alpha0)).zero_update


def test_lora_folders_and_adapter_configs_that_do_not_say_what_to_load(tiny_model, trained_lora, tmp_path):
    """Found: a folder with two .safetensors files loaded the first in sort order; a bad
    adapter_config.json raised JSONDecodeError or AttributeError without naming the file."""
    state, _ = trained_lora
    two = tmp_path / "two"
    _write(two / "a.safetensors", state)
    _write(two / "b.safetensors", state)
    with pytest.raises(LoraError, match=r"two holds 2 \.safetensors files \(a.safetensors, b.safetensors\)"):
        read_lora(two)
    for text, message in [("{not json", r"cannot read \S+adapter_config.json"), ("[1, 2]", r"is a JSON list")]:
        folder = tmp_path / f"peft-{len(text)}"
        _write(folder / "adapter_model.safetensors", {f"base_model.model.{k}": v for k, v in state.items()})
        (folder / "adapter_config.json").write_text(text)
        with pytest.raises(LoraError, match=message):
            read_lora(folder)


def test_kohya_text_encoder_keys_are_modules_this_model_lacks(tiny_model, trained_lora, tmp_path):
    """Found: a kohya file with `lora_te1_` keys beside the transformer's was refused as two layouts."""
    state, expected = trained_lora
    flat = {}
    for k, v in state.items():
        m = "lora_transformer_" + k.removesuffix(".lora_A.weight").removesuffix(".lora_B.weight").replace(".", "_")
        flat[f"{m}.{'lora_down' if '.lora_A.' in k else 'lora_up'}.weight"] = v
    flat["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 8)
    flat["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(8, 4)
    path = _write(tmp_path / "with-te.safetensors", flat)
    with pytest.raises(LoraError, match=r"1 of \d+ module\(s\) are not in this transformer \(e\.g\. lora_te1_text"):
        load_lora(load_pipeline(tiny_model), path)
    loaded = load_lora(load_pipeline(tiny_model), path, allow_unmatched=True)
    assert len(loaded.matched) == len(expected) and loaded.unmatched == ["lora_te1_text_model_encoder_layers_0_mlp_fc1"]


def _damaged(state: dict, kind: str) -> tuple[dict, dict | None]:
    """The trained LoRA's state dict (diffusers names) damaged one way, and its metadata."""
    a_keys = sorted(k for k in state if ".lora_A." in k)
    if kind == "alpha_on_some_modules":
        return {**state, a_keys[0].replace(".lora_A.weight", ".alpha"): torch.tensor(8.0)}, None
    if kind == "two_layouts":
        b = a_keys[0].replace(".lora_A.", ".lora_B.")
        rest = {k: v for k, v in state.items() if k not in (a_keys[0], b)}
        m = a_keys[0].removesuffix(".lora_A.weight")
        return {**rest, f"{m}.lora_down.weight": state[a_keys[0]], f"{m}.lora_up.weight": state[b]}, None
    if kind == "module_twice":
        return {**state, "transformer." + a_keys[0]: state[a_keys[0]]}, None
    if kind == "metadata_not_json":
        return state, {"lora_adapter_metadata": "{not json"}
    if kind == "alpha_not_a_number":
        return state, {"lora_adapter_metadata": '{"transformer.lora_alpha": "eight", "transformer.r": 4}'}
    if kind == "alpha_of_two_numbers":
        return {**state, **{k.replace(".lora_A.weight", ".alpha"): torch.tensor([8.0, 8.0]) for k in a_keys}}, None
    if kind == "nan_up_weight":
        b = a_keys[0].replace(".lora_A.", ".lora_B.")
        return {**state, b: torch.full_like(state[b], float("nan"))}, None
    if kind == "ranks_differ":
        return {**state, a_keys[0]: torch.cat([state[a_keys[0]], state[a_keys[0]][:1]])}, None
    if kind == "nan_alpha_in_metadata":  # json.dumps writes NaN
        return state, {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": math.nan})}
    if kind == "alpha_a_bool":
        return state, {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": True})}
    if kind == "rank_pattern_disagrees":
        meta = {"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.rank_pattern": {"to_q": 8}}
        return state, {"lora_adapter_metadata": json.dumps(meta)}
    if kind == "integer_weights":
        return {k: (v * 100).to(torch.int64) for k, v in state.items()}, None
    if kind == "alpha_too_large_for_fp16":
        half = {k: v.half() for k, v in state.items()}
        return {**half, **{k.replace(".lora_A.weight", ".alpha"): torch.tensor(1e9) for k in a_keys}}, None
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("alpha_on_some_modules", r"alpha keys for 1 of \d+ modules \(none for e\.g\. \S+\): their scale cannot"),
        ("two_layouts", r"mixes key layouts \(lora_A/lora_B; lora_down/lora_up \(kohya-style\)\)"),
        ("module_twice", r"module \S+ is given twice \(\S+ and \S+\)"),
        ("metadata_not_json", r"its lora_adapter_metadata is not a JSON object"),
        ("alpha_not_a_number", r"the file's adapter metadata: lora_alpha is 'eight', not a finite number"),
        ("alpha_of_two_numbers", r"alpha has shape \(2,\), not one number"),
        ("nan_up_weight", r"its B weight holds NaN or infinity"),
        ("ranks_differ", r"down \(5, \d+\) and up \(\d+, 4\) do not make a LoRA"),
        ("nan_alpha_in_metadata", r"lora_alpha is nan, not a finite number"),
        ("alpha_a_bool", r"lora_alpha is True, not a finite number"),
        ("rank_pattern_disagrees", r"rank_pattern gives \S+to_q rank 8, its weights have rank 4"),
        ("integer_weights", r"weights of type torch.int64 / torch.int64, not floating point"),
        ("alpha_too_large_for_fp16", r"times its scale 2.5e\+08 are not finite in torch.float16"),
    ],
)
def test_a_lora_file_that_cannot_be_read_as_trained_names_the_file_and_why(tiny_model, trained_lora, tmp_path,
                                                                          kind, message):  # fmt: skip
    """Found by a new user: these loaded with a silent scale of 1.0 or the wrong module, or raised a
    raw JSONDecodeError / ValueError / a peft error blaming lora_A."""
    state, _ = trained_lora
    tensors, metadata = _damaged(state, kind)
    path = _write(tmp_path / f"{kind}.safetensors", tensors, metadata)
    with pytest.raises(LoraError, match=rf"LoRA \S*{kind}\.safetensors.*{message}"):
        load_lora(load_pipeline(tiny_model), path)


def test_keys_of_no_lora_layout_are_named_in_the_description(tiny_model, trained_lora, tmp_path):
    state, expected = trained_lora
    path = _write(tmp_path / "extra.safetensors", {**state, "text_encoder.some_embedding": torch.zeros(3)})
    loaded = load_lora(load_pipeline(tiny_model), path)
    assert loaded.ignored_keys == ["text_encoder.some_embedding"] and len(loaded.matched) == len(expected)
    assert "1 key(s) of no LoRA layout ignored (e.g. text_encoder.some_embedding)" in loaded.describe()


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
