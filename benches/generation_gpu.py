"""Generation at full size on a GPU (where a session is lent one): the Qwen-Image-Edit architecture
with random weights (the 20B transformer, the VAE, a 7B Qwen2.5-VL text encoder; the offline
byte-level tokenizer and image processor of the tests), bf16, 512 px, built in memory (no download).
Variants per second through our generators (the call, the PNG, the variant key) against the bare
calls on the same inputs, for PixelSmile (interpolated conditioning) and a prompted editor.
Target as benches/generation.py: at least 0.9x. Curation's tables and the batch registration are
timed on the CPU by benches/generation.py.

    python benches/generation_gpu.py [--tiny]     (--tiny: the same code at test size, on the CPU)
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benches.common import report  # noqa: E402

STEPS = 20


def pipeline(device: str, dtype: torch.dtype, tiny: bool):
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from pixelsmile.qwen import SPECIAL_TOKENS, tiny_vision_language_model

    _, processor = tiny_vision_language_model()  # its tokenizer and image processor: offline
    ids = processor.tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    if tiny:
        text = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2, mrope=[1, 1, 2])  # fmt: skip
        vision = dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                      fullatt_block_indexes=[1])  # fmt: skip
        transformer_kw = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
                              num_attention_heads=3, joint_attention_dim=16, axes_dims_rope=(8, 4, 4))  # fmt: skip
        vae_kw = dict(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
                      latents_mean=[0.0] * 4, latents_std=[1.0] * 4)  # fmt: skip
    else:  # Qwen-Image-Edit-2511's published shapes
        text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, mrope=[16, 24, 24])  # fmt: skip
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                      fullatt_block_indexes=[7, 15, 23, 31])  # fmt: skip
        transformer_kw, vae_kw = {}, {}
    mrope = text.pop("mrope")
    config = Qwen2_5_VLConfig(
        text_config=dict(**text, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
                         rope_scaling={"type": "mrope", "mrope_section": mrope, "rope_type": "default"},
                         bos_token_id=None, eos_token_id=ids[0], pad_token_id=ids[0]),
        vision_config=dict(**vision, window_size=112, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           in_chans=3),
        image_token_id=ids[5], video_token_id=ids[6], vision_start_token_id=ids[3], vision_end_token_id=ids[4],
        vocab_size=152064,
    )  # fmt: skip
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
            transformer = QwenImageTransformer2DModel(**transformer_kw)
            vae = AutoencoderKLQwenImage(**vae_kw)
    finally:
        torch.set_default_dtype(before)
    pipe = QwenImageEditPlusPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                                     text_encoder=text_encoder, tokenizer=processor.tokenizer, processor=processor,
                                     transformer=transformer)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from curation.generation import variant_key
    from pixelsmile.generate import CONDITION_AREA, TEMPLATES, PixelSmileGenerator, PromptedGenerator
    from pixelsmile.infer import EditSettings, edit
    from pixelsmile.qwen import image_areas
    from pixelsmile.synthetic import random_identity, render

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("benches/generation_gpu.py needs a GPU (or --tiny)")
    device, dtype = ("cpu", torch.float32) if args.tiny else ("cuda", torch.bfloat16)
    size, steps, repeats = (64, 2, 2) if args.tiny else (512, STEPS, 3)
    start = time.perf_counter()
    pipe = pipeline(device, dtype, args.tiny)
    built = time.perf_counter() - start
    source = render(random_identity(np.random.default_rng(0)), np.zeros(12), size)
    generators = {
        "pixelsmile": PixelSmileGenerator(pipe, "pixelsmile:random", "0", steps, size),
        "qwen-image-edit": PromptedGenerator(
            pipe, "qwen-image-edit:random", "0", TEMPLATES["qwen-image-edit"], steps, size, qwen=True
        ),  # fmt: skip
    }

    def bare(kind):
        if kind == "pixelsmile":
            return lambda: edit(pipe, source, {"surprised": 0.6}, EditSettings(steps=steps, seed=0, size=size))

        def call():
            with torch.no_grad(), image_areas(size * size, CONDITION_AREA):
                pipe(image=source, prompt=generators[kind].prompt("surprised", 0.6), num_inference_steps=steps,
                     height=size, width=size, output_type="pil", true_cfg_scale=1.0,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip

        return call

    def ours(kind):
        gen = generators[kind]

        def call():
            image = gen(source, "surprised", 0.6, 0)
            variant_key("face", gen, gen.prompt("surprised", 0.6), 0)
            image.save(io.BytesIO(), "PNG")

        return call

    results = {}
    for kind in generators:
        ours(kind)()  # warm-up
        b, o = seconds(bare(kind), repeats), seconds(ours(kind), repeats)
        results[kind] = {"bare_s_per_variant": round(b, 3), "ours_s_per_variant": round(o, 3),
                         "variants_per_s": round(1 / o, 3), "ratio_vs_bare": round(b / o, 3)}  # fmt: skip
        print(kind, results[kind], flush=True)
    worst = min(r["ratio_vs_bare"] for r in results.values())
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "cpu"
    report("generation_gpu", args.tiny, {
        "bench": "generation_gpu", "device": device_name, "size": size, "steps": steps, "build_s": round(built, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device == "cuda" else None,
        "generators": results, "target": 0.9, "meets_target": worst >= 0.9,
    })  # fmt: skip


if __name__ == "__main__":
    main()
