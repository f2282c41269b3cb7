"""Conditioning: prompt embeddings, textual latent interpolation and blending.

The paper edits on a continuum by interpolating prompt embeddings rather than images:
e(a) = e_neutral + a (e_target - e_neutral), a = the target's intensity (a > 1 extrapolates), and
blends several expressions as e = e_neutral + sum_i a_i (e_i - e_neutral). The neutral and target
prompts encode to sequences of different lengths: both are zero-padded to the longer one and the
result attends to the union of their masks (the target's mask whenever the target prompt is at least
as long, which is the reference's "score_one_all" rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from storage.schemas import CATEGORIES

SUBJECTS = {"human": "person", "real": "person", "anime": "character"}


def prompt(category: str, subject: str = "human") -> str:
    """The reference's instruction for `category` ("neutral" for the source side)."""
    if category != "neutral" and category not in CATEGORIES:
        raise ValueError(f"unknown expression {category!r}; known: neutral, {', '.join(CATEGORIES)}")
    try:
        word = SUBJECTS[subject]
    except KeyError:
        raise ValueError(f"unknown subject {subject!r}; known: {', '.join(SUBJECTS)}") from None
    return f"Edit the {word} to show a {category} expression"


@dataclass(frozen=True)
class Embedding:
    """Prompt embeddings (B, L, D) and their attention mask (B, L) of 0/1."""

    embeds: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.embeds.dim() != 3 or self.mask.shape != self.embeds.shape[:2]:
            raise ValueError(f"embeds (B, L, D) and mask (B, L) expected, got {tuple(self.embeds.shape)} "
                             f"and {tuple(self.mask.shape)}")  # fmt: skip

    @property
    def length(self) -> int:
        return self.embeds.shape[1]

    def padded(self, length: int) -> Embedding:
        extra = length - self.length
        if extra < 0:
            raise ValueError(f"cannot pad a sequence of {self.length} to {length}")
        if extra == 0:
            return self
        e = torch.nn.functional.pad(self.embeds, (0, 0, 0, extra))
        return Embedding(e, torch.nn.functional.pad(self.mask, (0, extra)))


def _alpha(a: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    if a.dim() == 0:
        return a
    if a.dim() != 1 or a.shape[0] != like.shape[0]:
        raise ValueError(f"alpha must be a number or one per sample ({like.shape[0]}), got shape {tuple(a.shape)}")
    return a.view(-1, 1, 1)


def blend(neutral: Embedding, targets: Sequence[Embedding], alphas: Sequence[float | torch.Tensor]) -> Embedding:
    """e = e_neutral + sum_i a_i (e_i - e_neutral) on sequences padded to one length."""
    if len(targets) != len(alphas):
        raise ValueError(f"{len(targets)} target embeddings but {len(alphas)} intensities")
    length = max([neutral.length, *(t.length for t in targets)])
    base = neutral.padded(length)
    e, mask = base.embeds, base.mask.clone()
    for target, a in zip(targets, alphas, strict=True):
        t = target.padded(length)
        e = e + _alpha(a, e) * (t.embeds - base.embeds)
        mask = torch.maximum(mask, t.mask)
    return Embedding(e, mask)


def interpolate(neutral: Embedding, target: Embedding, alpha: float | torch.Tensor) -> Embedding:
    """e(a) = e_neutral + a (e_target - e_neutral); a per sample or one for all."""
    return blend(neutral, [target], [alpha])


def parse_blend(text: str) -> dict[str, float]:
    """ "happy=0.6,surprised=0.4" -> {"happy": 0.6, "surprised": 0.4}, with clear errors."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"blend part {part!r} must read CATEGORY=INTENSITY")
        name = name.strip()
        if name not in CATEGORIES:
            raise ValueError(f"unknown expression {name!r} in blend; known: {', '.join(CATEGORIES)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"intensity of {name} must be a number, got {value!r}") from None
    if not out:
        raise ValueError("empty blend: give CATEGORY=INTENSITY[,CATEGORY=INTENSITY...]")
    return out
