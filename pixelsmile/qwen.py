"""The Qwen-Image-Edit backbone: diffusers' `QwenImageEditPlusPipeline` from a local folder.

A model folder has diffusers' layout (model_index.json, scheduler/, text_encoder/, tokenizer/,
processor/, transformer/, vae/), as Qwen-Image-Edit-2511 ships. Two traps of this stack are handled
here, once:

- transformers' Qwen2-VL processor insists on a video processor, whose class needs torchvision,
  which cannot be installed beside torch 2.13: `ImageOnlyQwenProcessor` skips it (FFE has no video),
  and the image processor is the PIL one.
- The pipeline resizes every input image to a fixed area (module constants `VAE_IMAGE_SIZE`,
  1024^2, and `CONDITION_IMAGE_SIZE`, 384^2) whatever the output size: `image_areas` sets them for a
  block (512^2 for FFE's crops; tiny for tiny models).

`build_tiny` writes a random-weight model of the same classes (a 264-token byte-level tokenizer, a
2-layer Qwen2.5-VL, a 2-layer transformer, a small VAE) in the same layout: tests load it exactly as
they would load the real one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from pixelsmile.conditioning import Embedding

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>"]  # fmt: skip
# LoRA targets of the reference config: attention projections of both streams and the MLPs.
LORA_TARGETS = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out",
                "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2"]  # fmt: skip


class ModelFolderError(ValueError):
    """A model folder that is missing or does not hold what it should: the message names it."""


def _processor_class():
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwenProcessor(Qwen2VLProcessor):
        """Qwen2-VL's processor without a video processor (its class needs torchvision)."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyQwenProcessor


def load_processor(folder: Path):
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    sub = folder / "processor"
    source = sub if (sub / "preprocessor_config.json").is_file() else folder
    tokenizer_dir = sub if (sub / "tokenizer_config.json").is_file() else folder / "tokenizer"
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(source)
    tokenizer = Qwen2Tokenizer.from_pretrained(tokenizer_dir)
    return _processor_class()(image_processor=image_processor, tokenizer=tokenizer, video_processor=None)


def load_pipeline(folder: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """`QwenImageEditPlusPipeline` from a local model folder, with clear errors for a wrong folder."""
    from diffusers import QwenImageEditPlusPipeline

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist")
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelFolderError(f"{folder} is not a diffusers model folder (no model_index.json)")
    cls = json.loads(index.read_text()).get("_class_name", "")
    if not cls.startswith("QwenImageEdit"):
        raise ModelFolderError(f"{folder} holds a {cls or 'unnamed'} pipeline, not Qwen-Image-Edit")
    missing = [c for c in ("transformer", "vae", "text_encoder", "scheduler") if not (folder / c).is_dir()]
    if missing:
        raise ModelFolderError(f"{folder} lacks {', '.join(missing)}")
    pipe = QwenImageEditPlusPipeline.from_pretrained(folder, processor=load_processor(folder), dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@contextlib.contextmanager
def image_areas(vae: int = 512 * 512, condition: int = 384 * 384) -> Iterator[None]:
    """Within the block, the pipeline resizes inputs to these areas (pixels) for the VAE and for the
    multimodal text encoder."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_plus

    saved = edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE
    edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE = vae, condition
    try:
        yield
    finally:
        edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE = saved


def condition_image(pipe, image: Image.Image, area: int) -> Image.Image:
    """The source image as the multimodal encoder sees it (resized as the pipeline does)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

    w, h = calculate_dimensions(area, image.width / image.height)
    return pipe.image_processor.resize(image, h, w)


@torch.no_grad()
def encode_prompt(pipe, text: str, image: Image.Image, *, condition_area: int = 384 * 384) -> Embedding:
    """The embedding (1, L, D) of one instruction, from the multimodal encoder with the source image,
    as the reference encodes it."""
    cond = condition_image(pipe, image, condition_area)
    embeds, mask = pipe.encode_prompt(prompt=[text], image=[cond], device=pipe._execution_device)
    if mask is None:  # the pipeline drops an all-ones mask
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return Embedding(embeds, mask)


def _tiny_tokenizer():
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    return tokenizer


def tiny_vision_language_model():
    """A random-weight Qwen2.5-VL (the Qwen-Image-Edit text encoder's class) and its image-only
    processor, with an offline byte-level tokenizer: (model, processor)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=2048,
                         rope_theta=1e6,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2], "rope_type": "default"},
                         bos_token_id=None, eos_token_id=ids[0], pad_token_id=ids[0]),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[1], window_size=112, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, in_chans=3),
        image_token_id=ids[5], video_token_id=ids[6], vision_start_token_id=ids[3], vision_end_token_id=ids[4],
        vocab_size=len(tokenizer),
    )  # fmt: skip
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    processor = _processor_class()(image_processor=image_processor, tokenizer=tokenizer, video_processor=None)
    return text_encoder, processor


def build_tiny(folder: str | Path, seed: int = 0, *, layers: int = 2, heads: int = 3, vae_dim: int = 24) -> Path:
    """Write a random-weight Qwen-Image-Edit of the real classes, small enough for a CPU test
    (`layers` transformer blocks of `heads` x 16 wide; a VAE of base width `vae_dim`)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    text_encoder, processor = tiny_vision_language_model()
    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=layers,
                                              attention_head_dim=16, num_attention_heads=heads, joint_attention_dim=16,
                                              axes_dims_rope=(8, 4, 4))  # fmt: skip
    vae = AutoencoderKLQwenImage(base_dim=vae_dim, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4,
                                 latents_std=[1.0] * 4)  # fmt: skip
    pipe = QwenImageEditPlusPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                     tokenizer=tokenizer, processor=None, transformer=transformer)  # fmt: skip
    pipe.save_pretrained(folder)
    # The processor is saved by hand (its save_pretrained wants the video processor) where the real
    # model keeps it, and model_index.json names it as the real one does.
    image_processor.save_pretrained(folder / "processor")
    tokenizer.save_pretrained(folder / "processor")
    index = json.loads((folder / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    del processor
    return folder
