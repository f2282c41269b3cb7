"""The Qwen-Image-Edit backbone for training: the `Backbone` contract over diffusers' pipeline parts.

- images -> the VAE's latents, normalised with the VAE's latents_mean/std and packed into 2x2
  patches as the pipeline packs them: (B, h/2 * w/2, 4C);
- prompts -> the multimodal encoder's embeddings with the source image (as the reference does);
- velocity -> the transformer on [noisy target tokens, source tokens], the target's part of the output;
- only the LoRA on the transformer trains (rank 64, alpha 128 by default); the VAE and the text
  encoder are frozen; decoding (for L_SC and L_ID) lets gradients through the frozen VAE.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixelsmile.conditioning import Embedding, prompt
from pixelsmile.lora import add_lora, save_lora
from pixelsmile.qwen import encode_prompt, image_areas, load_pipeline


def to_pil(pixels: torch.Tensor) -> Image.Image:
    arr = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr))


class QwenBackbone(torch.nn.Module):
    name = "qwen"

    def __init__(self, config):
        super().__init__()
        if not config.model_path:
            raise ValueError("backbone qwen needs model_path: a local Qwen-Image-Edit folder")
        dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float32
        self.pipe = load_pipeline(config.model_path, dtype=dtype)
        self.transformer = self.pipe.transformer
        self.pipe.vae.requires_grad_(False)
        self.pipe.text_encoder.requires_grad_(False)
        self.lora = add_lora(self.transformer, rank=config.lora_rank, alpha=config.lora_alpha)
        for p in self.lora:  # trainable weights in float32 even when the base runs in bf16
            p.data = p.data.float()
        if config.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.resolution = config.resolution
        self.condition_area = int(config.extra.get("condition_area", min(384, config.resolution) ** 2))
        vae = self.pipe.vae.config
        self.register_buffer("mean", torch.tensor(vae.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(vae.latents_std).view(1, -1, 1, 1, 1), persistent=False)
        self._grid: tuple[int, int] = (0, 0)
        self._prompts: dict[tuple[str, str], Embedding] = {}
        self.cache_size = int(config.extra.get("prompt_cache_size", 100_000))

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.vae.dtype

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            lat = self.pipe.vae.encode(pixels.to(self.dtype).unsqueeze(2)).latent_dist.mode()
        lat = (lat - self.mean.to(lat)) / self.std.to(lat)
        b, c, _, h, w = lat.shape
        self._grid = (h, w)
        return self.pipe._pack_latents(lat, b, c, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        h, w = self._grid
        b, n, cc = latents.shape
        lat = latents.view(b, h // 2, w // 2, cc // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, cc // 4, 1, h, w)
        lat = lat * self.std.to(lat) + self.mean.to(lat)
        return self.pipe.vae.decode(lat.to(self.dtype)).sample[:, :, 0].float().clamp(-1, 1)

    @torch.no_grad()
    def encode_prompts(self, expressions: list[str], sources: torch.Tensor) -> Embedding:
        """Per sample, the instruction's embedding with its source image. The frozen encoder gives the
        same embedding for the same (source, instruction) every epoch: they are cached (in memory,
        up to `cache_size`) and encoded once."""
        parts = []
        with image_areas(self.resolution * self.resolution, self.condition_area):
            for e, s in zip(expressions, sources, strict=True):
                key = (hashlib.sha1(s.detach().cpu().numpy().tobytes()).hexdigest(), e)
                if key not in self._prompts:
                    if len(self._prompts) >= self.cache_size:
                        self._prompts.pop(next(iter(self._prompts)))
                    emb = encode_prompt(self.pipe, prompt(e), to_pil(s), condition_area=self.condition_area)
                    self._prompts[key] = emb
                parts.append(self._prompts[key])
        length = max(p.length for p in parts)
        padded = [p.padded(length) for p in parts]
        return Embedding(torch.cat([p.embeds for p in padded]), torch.cat([p.mask for p in padded]))

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, source_latents: torch.Tensor,
                 cond: Embedding) -> torch.Tensor:  # fmt: skip
        h, w = self._grid
        shapes = [[(1, h // 2, w // 2), (1, h // 2, w // 2)]] * x_t.shape[0]
        hidden = torch.cat([x_t, source_latents], dim=1).to(self.dtype)
        out = self.transformer(hidden_states=hidden, timestep=sigma.to(self.dtype), guidance=None,
                               encoder_hidden_states=cond.embeds.to(self.dtype), encoder_hidden_states_mask=cond.mask,
                               img_shapes=shapes, return_dict=False)[0]  # fmt: skip
        return out[:, : x_t.shape[1]].float()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.lora

    def save_weights(self, folder: Path) -> Path:
        return save_lora(self.transformer, folder)
