"""Inference: edit a face to an expression at a continuous intensity, sweep intensities, blend.

The conditioning is built as in training: the neutral and the target instructions are encoded by the
multimodal encoder with the source image, then interpolated (or blended) and given to the pipeline
as `prompt_embeds`; no classifier-free guidance, as in the reference (50 steps by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from pixelsmile.conditioning import Embedding, blend, prompt
from pixelsmile.qwen import encode_prompt, image_areas


@dataclass(frozen=True)
class EditSettings:
    steps: int = 50
    seed: int = 0
    size: int = 512  # output side in pixels (FFE crops are 512)
    condition_area: int = 384 * 384  # what the multimodal encoder sees of the source
    subject: str = "human"  # human | anime


def conditioning(pipe, image: Image.Image, targets: dict[str, float], settings: EditSettings) -> Embedding:
    """e = e_neutral + sum_i a_i (e_i - e_neutral) for the requested expressions and intensities."""
    with image_areas(settings.size * settings.size, settings.condition_area):
        neutral = encode_prompt(
            pipe, prompt("neutral", settings.subject), image, condition_area=settings.condition_area
        )
        encoded = [encode_prompt(pipe, prompt(c, settings.subject), image, condition_area=settings.condition_area)
                   for c in targets]  # fmt: skip
    return blend(neutral, encoded, list(targets.values()))


@torch.no_grad()
def edit(pipe, image: Image.Image, targets: dict[str, float], settings: EditSettings = EditSettings()) -> Image.Image:
    """The source face edited toward `targets` ({category: intensity}); the same seed gives the same
    noise for every intensity, so a sweep changes only what the intensity changes."""
    image = image.convert("RGB")
    cond = conditioning(pipe, image, targets, settings)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    with image_areas(settings.size * settings.size, settings.condition_area):
        out = pipe(image=image, prompt_embeds=cond.embeds, prompt_embeds_mask=cond.mask, true_cfg_scale=1.0,
                   num_inference_steps=settings.steps, height=settings.size, width=settings.size,
                   generator=generator, output_type="pil")  # fmt: skip
    return out.images[0]


def parse_sweep(text: str) -> list[float]:
    """ "0:1.5:7" -> 7 intensities from 0 to 1.5 inclusive."""
    try:
        start, stop, count = text.split(":")
        n = int(count)
        values = np.linspace(float(start), float(stop), n)
    except ValueError:
        raise ValueError(f"sweep {text!r} must read START:STOP:COUNT, e.g. 0:1.5:7") from None
    if n < 2:
        raise ValueError(f"sweep {text!r} needs a COUNT of at least 2")
    return [round(float(v), 6) for v in values]


def sweep(pipe, image: Image.Image, category: str, scales: list[float],
          settings: EditSettings = EditSettings()) -> list[Image.Image]:  # fmt: skip
    return [edit(pipe, image, {category: s}, settings) for s in scales]


def strip(images: list[Image.Image], labels: list[str], source: Image.Image | None = None) -> Image.Image:
    """One row: the source (if given) then each image, a label under each."""
    tiles = ([source.convert("RGB").resize(images[0].size)] if source is not None else []) + images
    names = (["source"] if source is not None else []) + labels
    w, h = images[0].size
    out = Image.new("RGB", (w * len(tiles), h + 18), "white")
    draw = ImageDraw.Draw(out)
    for i, (tile, name) in enumerate(zip(tiles, names, strict=True)):
        out.paste(tile.resize((w, h)), (i * w, 0))
        draw.text((i * w + 4, h + 3), name, fill="black")
    return out
