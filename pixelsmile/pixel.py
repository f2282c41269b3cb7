"""A small pixel-space editing model: the proving ground's backbone, and the tests'.

Same contract as the Qwen backbone (`Backbone` in pixelsmile/train.py): images in [-1, 1] are their
own latents, prompt embeddings come from a frozen random token table (the "text encoder": a template
shared by every instruction plus one token for the expression, so interpolation between neutral and a
category moves only what differs, as with a real encoder), and a small conv net predicts the flow
velocity from the noisy image, the source image, the noise level and the pooled conditioning.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from pixelsmile.conditioning import Embedding
from storage.blobs import file_digest
from storage.schemas import CATEGORIES

VOCAB = ("neutral", *CATEGORIES)
TEMPLATE_TOKENS = 6  # "Edit the person to show a ... expression"
SIGMA_FLOOR = 0.05


class TokenTextEncoder(nn.Module):
    """A frozen random embedding of each instruction: TEMPLATE_TOKENS shared vectors, then the
    expression's own vector."""

    def __init__(self, dim: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("template", torch.randn(TEMPLATE_TOKENS, dim, generator=g))
        self.register_buffer("words", torch.randn(len(VOCAB), dim, generator=g))

    @torch.no_grad()
    def forward(self, expressions: list[str]) -> Embedding:
        words = self.words[[VOCAB.index(e) for e in expressions]]
        embeds = torch.cat([self.template.expand(len(expressions), -1, -1), words[:, None]], dim=1)
        return Embedding(embeds, torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device))


def _sigma_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(torch.arange(dim // 2, device=sigma.device) * (-math.log(1000.0) / (dim // 2)))
    angles = sigma[:, None] * 1000.0 * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _Block(nn.Module):
    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(8, channels), nn.GroupNorm(8, channels)
        self.film = nn.Linear(cond_dim, 2 * channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(nn.functional.silu(h))


class PixelEditNet(nn.Module):
    """Velocity of the edited image given (x_t, sigma, source image, conditioning)."""

    def __init__(self, channels: int = 64, text_dim: int = 32, blocks: int = 4):
        super().__init__()
        cond_dim = 128
        self.text = nn.Sequential(nn.Linear(2 * text_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.time = nn.Sequential(nn.Linear(64, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.stem = nn.Conv2d(6, channels, 3, padding=1)
        self.down = nn.Conv2d(channels, channels, 4, stride=2, padding=1)
        self.blocks = nn.ModuleList(_Block(channels, cond_dim) for _ in range(blocks))
        self.up = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
        self.out = nn.Conv2d(2 * channels, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, source: torch.Tensor, cond: Embedding) -> torch.Tensor:
        # The masked mean, and the last token (the expression's word: the template tokens are the same
        # in every instruction, so the mean alone would dilute what differs).
        mask = cond.mask.to(cond.embeds.dtype)[..., None]
        pooled = (cond.embeds * mask).sum(1) / mask.sum(1).clamp(min=1)
        last = cond.embeds[torch.arange(cond.embeds.shape[0]), cond.mask.sum(1).long() - 1]
        c = self.text(torch.cat([pooled, last], dim=1)) + self.time(_sigma_embedding(sigma, 64))
        skip = self.stem(torch.cat([x_t, source], dim=1))
        h = self.down(skip)
        for block in self.blocks:
            h = block(h, c)
        return self.out(torch.cat([self.up(h), skip], dim=1))


class PixelBackbone(nn.Module):
    """The `Backbone` contract over PixelEditNet: images are their own latents."""

    name = "pixel"

    def __init__(self, channels: int = 64, blocks: int = 4, text_dim: int = 32, seed: int = 0):
        super().__init__()
        self.channels, self.blocks, self.text_dim = channels, blocks, text_dim
        self.text_encoder = TokenTextEncoder(text_dim, seed)
        self.net = PixelEditNet(channels, text_dim, blocks)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def encode_prompts(self, expressions: list[str], sources: torch.Tensor) -> Embedding:
        cond = self.text_encoder(expressions)
        return Embedding(cond.embeds.to(sources.device), cond.mask.to(sources.device))

    def velocity(self, x_t, sigma, source_latents, cond: Embedding) -> torch.Tensor:
        # The net predicts the clean edit as the source plus a change (identity is free, only the
        # expression has to be learnt); the velocity follows from it, as in x-prediction with a
        # velocity loss (Li & He, "Back to Basics", 2025), the noise level floored at SIGMA_FLOOR.
        x0 = source_latents + self.net(x_t, sigma, source_latents, cond)
        return (x_t - x0) / sigma.clamp(min=SIGMA_FLOOR).view(-1, 1, 1, 1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def save_weights(self, folder: Path) -> Path:
        """The whole model (the net and its token table) as `<folder>/pixel_edit_net.pt`: loading it
        does not depend on the seed that drew the table."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "pixel_edit_net.pt"
        torch.save(self.state_dict(), path)
        return path

    def load_weights(self, folder: Path) -> None:
        """Weights saved by `save_weights` (or the net alone, as older versions saved it); ValueError
        naming the file when it is missing or cut."""
        path = Path(folder) / "pixel_edit_net.pt"
        state = _read(path, "not a trained pixel model's folder")
        if any(k.startswith("net.") for k in state):
            self.load_state_dict(state)
        else:
            self.net.load_state_dict(state)

    # --- a base editor: a pre-trained model that fine-tuning starts from ----------------------

    def save_base(self, path: Path) -> Path:
        """The model with its shape, as one file that `from_base` reads."""
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"channels": self.channels, "blocks": self.blocks, "text_dim": self.text_dim,
                    "state": self.state_dict()}, path)  # fmt: skip
        return path

    @classmethod
    def from_base(cls, path: str | Path, sha256: str = "") -> PixelBackbone:
        """The base editor saved by `save_base`. With `sha256`, the file must have that hash (the one
        its recipe names). ValueError naming the file when it is missing, cut or another file."""
        path = Path(path)
        if sha256 and path.is_file() and (actual := file_digest(path)[0]) != sha256:
            raise ValueError(f"base editor {path} has sha256 {actual}, not the {sha256} its recipe names: "
                             "another file than the one the recipe was written for")  # fmt: skip
        saved = _read(path, "not a base editor file")
        if not isinstance(saved, dict) or not {"channels", "blocks", "text_dim", "state"} <= set(saved):
            raise ValueError(f"{path} is not a base editor file (written by PixelBackbone.save_base)")
        model = cls(saved["channels"], saved["blocks"], saved["text_dim"])
        model.load_state_dict(saved["state"])
        return model

    @torch.no_grad()
    def generate(self, source: torch.Tensor, cond: Embedding, steps: int = 20, seed: int = 0) -> torch.Tensor:
        """Euler integration of the flow from noise (sigma 1) to the edited image (sigma 0)."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(source.shape, generator=g).to(source.device, source.dtype)
        sigmas = torch.linspace(1.0, 0.0, steps + 1, device=source.device)
        for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            v = self.velocity(x, s.expand(source.shape[0]), source, cond)
            x = x + (s_next - s) * v
        return x.clamp(-1, 1)


def _read(path: Path, what: str):
    try:
        return torch.load(path, map_location="cpu")
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: {what}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder: {what}") from None
    except Exception as err:  # a cut file: torch's error names no file
        raise ValueError(f"cannot load {path}: {' '.join(str(err).split())[:160]}") from None

