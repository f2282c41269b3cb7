"""Frozen, differentiable image encoders for the losses: image features for L_SC (CLIP ViT-L/14 in
the paper) and face embeddings for L_ID (ArcFace in the paper), loaded from local paths.

A path is either a transformers CLIP folder (config.json + weights: `CLIPVisionModelWithProjection`)
or a TorchScript file (`torch.jit.save` of any module mapping images in [-1, 1], (B, 3, H, W), to
(B, D)): how to bring an ArcFace or an anime CLIP. `small_encoder` builds a tiny random one for tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EncoderError(ValueError):
    """A missing or unusable encoder path: the message names it."""


class ClipImageFeatures(nn.Module):
    def __init__(self, folder: Path):
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        self.model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
        self.size = self.model.config.image_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((pixels + 1) / 2, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(pixel_values=(x - self.mean) / self.std).image_embeds


def load_encoder(path: str | Path) -> nn.Module:
    """A frozen encoder (parameters without gradients; gradients still flow to its input)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EncoderError(f"encoder {path} does not exist")
    try:
        module = ClipImageFeatures(path) if path.is_dir() else torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise EncoderError(f"cannot load encoder {path}: {' '.join(str(err).split())[:300]}") from None
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class SmallEncoder(nn.Module):
    def __init__(self, out_dim: int = 32, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * width * 16, out_dim),
        )  # fmt: skip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


def small_encoder(path: str | Path, out_dim: int = 32, seed: int = 0, module: nn.Module | None = None) -> Path:
    """Save `module` (default: a tiny random conv encoder) as TorchScript at `path`."""
    torch.manual_seed(seed)
    module = (module or SmallEncoder(out_dim)).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(path))
    return path
