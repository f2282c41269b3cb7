"""The Qwen-Image-Edit backbone for training: the `Backbone` contract over diffusers' pipeline parts.

- images -> the VAE's latents, normalised with the VAE's latents_mean/std and packed into 2x2
  patches as the pipeline packs them: (B, h/2 * w/2, 4C);
- prompts -> the multimodal encoder's embeddings with the source image (as the reference does);
- velocity -> the transformer on [noisy target tokens, source tokens], the target's part of the output;
- only the LoRA on the transformer trains (rank 64, alpha 128 by default); the VAE and the text
  encoder are frozen; decoding (for L_SC and L_ID) lets gradients through the frozen VAE.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pixelsmile.cache import EncodingCache, tensor_key
from pixelsmile.conditioning import Embedding, prompt
from pixelsmile.lora import add_lora, save_lora
from pixelsmile.qwen import encode_prompt, image_areas, load_pipeline
from storage.loader import tensor_to_image


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
        # Latents and prompt embeddings, on disk under <output_dir>/encoded (a resumed run reuses them).
        self.cache = EncodingCache(config.extra.get("cache_dir") or Path(config.output_dir) / "encoded",
                                   memory_items=int(config.extra.get("cache_memory_items", 100_000)))  # fmt: skip

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.vae.dtype

    @torch.no_grad()
    def _latent(self, pixels: torch.Tensor) -> torch.Tensor:
        lat = self.pipe.vae.encode(pixels[None].to(self.dtype).unsqueeze(2)).latent_dist.mode()
        return ((lat - self.mean.to(lat)) / self.std.to(lat))[0].cpu()

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE's normalised latents, packed; each image encoded once (the cache)."""
        lat = torch.stack([self.cache.get(tensor_key(p, "vae"), lambda p=p: self._latent(p)) for p in pixels])
        lat = lat.to(pixels.device)
        b, c, _, h, w = lat.shape
        return self.pipe._pack_latents(lat, b, c, h, w)

    @property
    def latent_side(self) -> int:
        """Latent pixels per side: images are `resolution` square (the loader makes them so)."""
        return self.resolution // self.pipe.vae_scale_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        lat = self.pipe._unpack_latents(latents, self.resolution, self.resolution, self.pipe.vae_scale_factor)
        lat = lat * self.std.to(lat) + self.mean.to(lat)
        return self.pipe.vae.decode(lat.to(self.dtype)).sample[:, :, 0].float().clamp(-1, 1)

    @torch.no_grad()
    def encode_prompts(self, expressions: list[str], sources: torch.Tensor) -> Embedding:
        """Per sample, the instruction's embedding with its source image; the frozen encoder gives the
        same one for the same (source, instruction) every epoch, so each is encoded once (the cache)."""

        def encode(text: str, source: torch.Tensor) -> Embedding:
            emb = encode_prompt(self.pipe, prompt(text), tensor_to_image(source), condition_area=self.condition_area)
            return Embedding(emb.embeds.cpu(), emb.mask.cpu())

        with image_areas(self.resolution * self.resolution, self.condition_area):
            parts = [self.cache.get(tensor_key(s, "prompt", e), lambda e=e, s=s: encode(e, s))
                     for e, s in zip(expressions, sources, strict=True)]  # fmt: skip
        length = max(p.length for p in parts)
        padded = [p.padded(length) for p in parts]
        device = sources.device
        return Embedding(
            torch.cat([p.embeds for p in padded]).to(device), torch.cat([p.mask for p in padded]).to(device)
        )

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, source_latents: torch.Tensor,
                 cond: Embedding) -> torch.Tensor:  # fmt: skip
        side = self.latent_side // 2  # tokens per side after 2x2 packing
        shapes = [[(1, side, side), (1, side, side)]] * x_t.shape[0]
        hidden = torch.cat([x_t, source_latents], dim=1).to(self.dtype)
        out = self.transformer(hidden_states=hidden, timestep=sigma.to(self.dtype), guidance=None,
                               encoder_hidden_states=cond.embeds.to(self.dtype), encoder_hidden_states_mask=cond.mask,
                               img_shapes=shapes, return_dict=False)[0]  # fmt: skip
        return out[:, : x_t.shape[1]].float()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.lora

    def save_weights(self, folder: Path) -> Path:
        return save_lora(self.transformer, folder)
