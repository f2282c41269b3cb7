"""Generators: expression variants of a source face from an editing model, reproducibly.

One interface for every generator:

    generator.prompt(category, intensity)            the instruction it is given (recorded)
    generator(source, category, intensity, seed)     the variant, a PIL image

with `name` (the kind and the model folder) and `version` (a digest of the model's configuration
and the LoRA's bytes) recorded with each variant, so that a variant is known by (source, generator,
prompt, seed) and never made twice (curation/generation.py keeps that record).

Kinds:
- `pixelsmile`: a Qwen-Image-Edit folder, with or without a trained PixelSmile LoRA; the intensity
  is continuous (textual latent interpolation, pixelsmile.infer); the prompt recorded is the
  reference's instruction and the intensity it was interpolated to.
- `qwen-image-edit`, `flux-kontext`, `instruct-pix2pix`, `generic`: any diffusers pipeline from a
  local folder that takes `image` and `prompt`; text editors know no continuous intensity, so the
  prompt says it in words, FFE's way (arXiv 2603.25728: a global category instruction and the
  category's local facial attributes), from a template per kind.
- `pixel`: the synthetic world's pixel-space model (pixelsmile.pixel), for the proving ground and the
  embedded default.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from pixelsmile.conditioning import SUBJECTS
from pixelsmile.conditioning import prompt as pixelsmile_prompt
from pixelsmile.infer import EditSettings, edit
from pixelsmile.qwen import image_areas
from storage.schemas import CATEGORIES

# The local half of FFE's two-part prompt: what each expression does to a face.
ATTRIBUTES = {
    "happy": "raised cheeks, lip corners pulled up, a smile",
    "sad": "inner brows raised, lip corners pulled down, downcast eyes",
    "angry": "brows lowered and drawn together, glaring eyes, lips pressed tight",
    "fear": "brows raised and drawn together, upper eyelids raised, lips stretched back",
    "surprised": "brows raised high, eyes wide open, jaw dropped",
    "disgust": "nose wrinkled, upper lip raised",
    "confused": "one brow raised, the other lowered, head slightly tilted, lips pursed",
    "contempt": "one lip corner raised and tightened, a one-sided smirk",
    "confident": "chin slightly raised, steady gaze, a slight closed-mouth smile",
    "shy": "gaze averted downward, a small restrained smile, head lowered",
    "sleepy": "drooping eyelids, relaxed face, a yawn starting",
    "anxious": "brows drawn up and together, tense lips, a worried gaze",
}

# Words for intensities (upper bound, word), for editors that take text only.
ADVERBS = ((0.25, "faintly"), (0.5, "slightly"), (0.75, "clearly"), (1.0, "very"), (float("inf"), "extremely"))

TEMPLATES = {
    "qwen-image-edit": "Edit the {subject} to show a {adverb} {category} expression: {attributes}. "
    "Keep the identity, pose, lighting and background unchanged.",
    "flux-kontext": "Change the {subject}'s facial expression to {adverb} {category} ({attributes}), "
    "keeping the same identity, pose, lighting and background.",
    "instruct-pix2pix": "make the {subject} look {adverb} {category}, {attributes}",
    "generic": "Edit the {subject} to show a {adverb} {category} expression: {attributes}",
}
KINDS = ("pixelsmile", *TEMPLATES, "pixel")
CONDITION_AREA = EditSettings.condition_area  # what the multimodal encoder sees, as PixelSmile's edits


class GenerationError(RuntimeError):
    """A generator cannot be built or run (a missing model folder, a pipeline of the wrong kind)."""


class Generator(Protocol):
    name: str
    version: str

    def prompt(self, category: str, intensity: float) -> str: ...
    def __call__(self, source: Image.Image, category: str, intensity: float, seed: int) -> Image.Image: ...


def adverb(intensity: float) -> str:
    return next(word for bound, word in ADVERBS if intensity <= bound)


def render_template(template: str, category: str, intensity: float, subject: str = "human") -> str:
    if category not in CATEGORIES:
        raise ValueError(f"unknown expression {category!r}; known: {', '.join(CATEGORIES)}")
    return template.format(subject=SUBJECTS[subject], category=category, adverb=adverb(intensity),
                           attributes=ATTRIBUTES[category], intensity=f"{intensity:.2f}")  # fmt: skip


def model_version(folder: Path, lora: Path | None = None) -> str:
    """A digest of what makes a model folder this model: every JSON config in it, the names and
    sizes of its weight files (hashing 40 GB of weights per run would cost minutes), and the LoRA's
    bytes (small, and what changes between trainings)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        h.update(rel.encode())
        h.update(f.read_bytes() if f.suffix == ".json" else str(f.stat().st_size).encode())
    if lora is not None:
        files = sorted(p for p in lora.rglob("*") if p.is_file()) if lora.is_dir() else [lora]
        for f in files:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


@dataclass
class PixelSmileGenerator:
    """Qwen-Image-Edit with textual latent interpolation (and a PixelSmile LoRA, when given)."""

    pipe: object
    name: str
    version: str
    steps: int = 50
    size: int = 512
    subject: str = "human"

    def prompt(self, category: str, intensity: float) -> str:
        return f"{pixelsmile_prompt(category, self.subject)} @ {intensity:.2f}"

    def __call__(self, source: Image.Image, category: str, intensity: float, seed: int) -> Image.Image:
        settings = EditSettings(steps=self.steps, seed=seed, size=self.size, subject=self.subject)
        return edit(self.pipe, source, {category: float(intensity)}, settings)


@dataclass
class PromptedGenerator:
    """Any diffusers editing pipeline called with the source image and a text instruction."""

    pipe: object
    name: str
    version: str
    template: str
    steps: int = 30
    size: int = 512
    subject: str = "human"
    qwen: bool = False  # a Qwen-Image-Edit pipeline: its input areas are set to our size

    def prompt(self, category: str, intensity: float) -> str:
        return render_template(self.template, category, intensity, self.subject)

    def __call__(self, source: Image.Image, category: str, intensity: float, seed: int) -> Image.Image:
        kwargs = {"image": source.convert("RGB"), "prompt": self.prompt(category, intensity),
                  "num_inference_steps": self.steps, "generator": _seeded(seed), "height": self.size,
                  "width": self.size, "output_type": "pil", "true_cfg_scale": 1.0}  # fmt: skip
        accepted = inspect.signature(self.pipe.__call__).parameters
        # Left alone, Qwen-Image-Edit encodes its input at a megapixel whatever the output size.
        areas = image_areas(self.size * self.size, CONDITION_AREA) if self.qwen else contextlib.nullcontext()
        with torch.no_grad(), areas:
            out = self.pipe(**{k: v for k, v in kwargs.items() if k in accepted})
        return out.images[0]


@dataclass
class PixelGenerator:
    """The synthetic world's pixel-space model, at its training resolution."""

    backbone: object
    name: str
    version: str
    steps: int = 20
    size: int = 32

    def prompt(self, category: str, intensity: float) -> str:
        return f"pixel:{category}@{intensity:.2f}"

    def __call__(self, source: Image.Image, category: str, intensity: float, seed: int) -> Image.Image:
        from pixelsmile.bench.run import pixel_editor

        (out,) = pixel_editor(self.backbone, steps=self.steps, seed=seed, size=self.size)(source, category, [intensity])
        return out


@dataclass(frozen=True)
class GeneratorSpec:
    """What a run config names: the kind, the local model folder, an optional LoRA, sampling."""

    kind: str = "pixelsmile"
    model_path: str = ""
    lora: str = ""
    steps: int = 30
    size: int = 512
    subject: str = "human"
    template: str = ""  # overrides the kind's prompt template
    device: str = "cpu"

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise GenerationError(f"unknown generator kind {self.kind!r}; kinds: {', '.join(KINDS)}")
        if not self.model_path:
            raise GenerationError(f"generator {self.kind} needs model_path (a local model folder)")
        folder = Path(self.model_path).expanduser()
        if not folder.is_dir():
            raise GenerationError(f"generator model folder {folder} does not exist (models load from local "
                                  "folders only: copy or mount it there)")  # fmt: skip
        if self.lora and not Path(self.lora).expanduser().exists():
            raise GenerationError(f"generator LoRA {self.lora} does not exist")
        if self.subject not in SUBJECTS:
            raise GenerationError(f"unknown subject {self.subject!r}; known: {', '.join(SUBJECTS)}")


def load_generator(spec: GeneratorSpec) -> Generator:
    """Build the generator a spec names, from local files only."""
    spec.validate()
    folder = Path(spec.model_path).expanduser()
    lora = Path(spec.lora).expanduser() if spec.lora else None
    version = model_version(folder, lora)
    name = f"{spec.kind}:{folder.name}" + (f"+{lora.stem}" if lora else "")
    if spec.kind == "pixel":
        return _pixel_generator(folder, name, version, spec)
    dtype = torch.bfloat16 if spec.device.startswith("cuda") else torch.float32
    if spec.kind in ("pixelsmile", "qwen-image-edit"):
        # Our loader: it reads the multimodal processor without the video half that diffusers'
        # generic loader insists on (and that needs torchvision).
        from pixelsmile.lora import load_lora
        from pixelsmile.qwen import load_pipeline

        pipe = load_pipeline(folder, dtype=dtype, device=spec.device)
        if lora is not None:
            load_lora(pipe, lora)
        if spec.kind == "pixelsmile":
            return PixelSmileGenerator(pipe, name, version, spec.steps, spec.size, spec.subject)
    else:
        from diffusers import DiffusionPipeline

        try:
            pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype, local_files_only=True)
        except (OSError, ValueError, ImportError) as err:
            raise GenerationError(f"{folder} cannot be loaded as a diffusers pipeline: {err}") from None
        pipe = pipe.to(spec.device)
        pipe.set_progress_bar_config(disable=True)
        if lora is not None:
            pipe.load_lora_weights(str(lora))
    template = spec.template or TEMPLATES[spec.kind]
    return PromptedGenerator(pipe, name, version, template, spec.steps, spec.size, spec.subject,
                             qwen=spec.kind == "qwen-image-edit")  # fmt: skip


def _pixel_generator(folder: Path, name: str, version: str, spec: GeneratorSpec) -> PixelGenerator:
    """A pixel model's training folder (config.yaml and final/), as the loop leaves it."""
    from pixelsmile.pixel import PixelBackbone
    from storage import yamlfile

    config_file, weights = folder / "config.yaml", folder / "final"
    if not config_file.is_file() or not weights.is_dir():
        raise GenerationError(f"{folder} is not a finished pixel-model training run (config.yaml and final/)")
    config = yamlfile.loads(config_file.read_text())
    backbone = PixelBackbone(config["pixel_channels"], config["pixel_blocks"], seed=config["seed"])
    backbone.load_weights(weights)
    return PixelGenerator(backbone.eval(), name, version, min(spec.steps, 50), config["resolution"])


def build_tiny_instruct_pix2pix(folder: str | Path, seed: int = 0) -> Path:
    """A random-weight InstructPix2Pix folder of the real classes (a 2-level UNet, a 1-level VAE, a
    1-layer CLIP text encoder, an offline byte-level CLIP tokenizer): the generic diffusers path's
    test model."""
    import json
    import tempfile

    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(seed)
    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"])}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)
    end = vocab["<|endoftext|>"]
    text = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, vocab_size=len(vocab), max_position_embeddings=77,
                                        bos_token_id=vocab["<|startoftext|>"], eos_token_id=end,
                                        pad_token_id=end))  # fmt: skip
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=8,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4)  # fmt: skip
    vae = AutoencoderKL(block_out_channels=(8,), latent_channels=4, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), norm_num_groups=4)  # fmt: skip
    pipe = StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                                  scheduler=EulerAncestralDiscreteScheduler(), safety_checker=None,
                                                  feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder
