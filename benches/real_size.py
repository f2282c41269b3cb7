"""The real-size parts of a PixelSmile training step, built from their configs with random weights
(no download): the Qwen-Image transformer (60 layers, 20B parameters) with our LoRA, the full
Qwen-Image VAE decoder, and CLIP ViT-L/14 (L_SC's feature encoder; also standing in for L_ID's face
embedder, an upper bound: ArcFace's iresnet100 costs less). `benches/train.py` counts their FLOPs on
the meta device; `benches/train_gpu.py` times them on a GPU.

Per target, plain flow matching costs one transformer forward and backward (on [target, source]
tokens, prompt tokens beside); PixelSmile adds a decode of the prediction and two encoders, each
forward and backward (their gradients reach the LoRA through the prediction).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def parts(device: str, dtype: torch.dtype, side: int = 512, text_tokens: int = 220,
          gradient_checkpointing: bool = False) -> tuple[Callable[[], None], ...]:  # fmt: skip
    """(transformer_step, decode_step, clip_step): each runs one sample forward and backward."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from pixelsmile.lora import add_lora

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in their training dtype: 20B parameters in bf16 is 40 GB
    try:
        with torch.device(device):
            transformer, vae = QwenImageTransformer2DModel(), AutoencoderKLQwenImage()
            clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                patch_size=14, image_size=224, projection_dim=768))  # fmt: skip
    finally:
        torch.set_default_dtype(before)
    for m in (transformer, vae, clip):
        m.requires_grad_(False)
    add_lora(transformer, rank=64, alpha=128)
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    tokens = (side // 16) ** 2  # 8x VAE downsampling, then 2x2 packing

    def transformer_step():
        x = torch.randn(1, 2 * tokens, 64, device=device, dtype=dtype)
        text = torch.randn(1, text_tokens, 3584, device=device, dtype=dtype)
        shapes = [[(1, side // 16, side // 16)] * 2]
        out = transformer(hidden_states=x, timestep=torch.ones(1, device=device, dtype=dtype),
                          encoder_hidden_states=text,
                          encoder_hidden_states_mask=torch.ones(1, text_tokens, dtype=torch.long, device=device),
                          img_shapes=shapes, return_dict=False)[0]  # fmt: skip
        out[:, :tokens].float().pow(2).mean().backward()

    def decode_step():
        lat = torch.randn(1, 16, 1, side // 8, side // 8, device=device, dtype=dtype, requires_grad=True)
        vae.decode(lat).sample.float().mean().backward()

    def clip_step():
        x = torch.randn(1, 3, 224, 224, device=device, dtype=dtype, requires_grad=True)
        clip(pixel_values=x).image_embeds.float().mean().backward()

    return transformer_step, decode_step, clip_step
