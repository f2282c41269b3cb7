"""A vision-language judge from a local model folder, as the paper scores FFE with a VLM: the image
and a prompt asking for the 12 intensities as JSON; the answer parsed by `parse_scores`, which
survives junk around the JSON, synonyms, percentages and missing keys. Identity comes from another
judge (a VLM gives no embedding): the face judge by default.

Qwen2-VL / Qwen2.5-VL folders (a config, weights, the tokenizer and `preprocessor_config.json`) load
with the image-only processor (transformers' own needs torchvision for its video half); other
image-text models through `AutoProcessor`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from pixelsmile.bench.judges import Judge, Reading
from storage.schemas import CATEGORIES

PROMPT = (
    "Rate how strongly this face shows each expression, from 0.00 (not at all) to 1.00 (extreme). "
    "Judge the face only: mouth, eyes, brows, cheeks, head. Fear and surprise both open the eyes and "
    "mouth (fear adds tension and raised inner brows); anger and disgust both lower the brows (disgust "
    "wrinkles the nose and raises the upper lip). Answer with JSON only, every key present: "
    + json.dumps({c: 0.0 for c in CATEGORIES})
)

SYNONYMS = {"happiness": "happy", "joy": "happy", "sadness": "sad", "anger": "angry", "afraid": "fear",
            "fearful": "fear", "scared": "fear", "surprise": "surprised", "disgusted": "disgust",
            "confusion": "confused", "contemptuous": "contempt", "confidence": "confident", "shyness": "shy",
            "sleepiness": "sleepy", "tired": "sleepy", "anxiety": "anxious", "worried": "anxious"}  # fmt: skip

_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)
_PAIR = re.compile(r"[\"']?([A-Za-z]+)[\"']?\s*[:=]\s*[\"']?(-?\d+(?:\.\d+)?)\s*(%?)")


def parse_scores(text: str, min_keys: int = 6) -> np.ndarray | None:
    """The 12 intensities in a model's answer, or None when fewer than `min_keys` categories can be
    read. Reads the last JSON-like object (models often think aloud first), or loose `key: value`
    pairs; maps synonyms; a value over 1 is read as a percentage (or a 0-10 scale) and rescaled;
    categories the answer leaves out score 0."""
    candidates = _OBJECT.findall(text)[::-1] + [text]
    for chunk in candidates:
        found: dict[str, float] = {}
        for key, value, percent in _PAIR.findall(chunk):
            name = SYNONYMS.get(key.lower(), key.lower())
            if name in CATEGORIES and name not in found:
                v = float(value)
                found[name] = v / 100 if percent or v > 10 else v / 10 if v > 1 else v
        if len(found) >= min_keys:
            return np.clip(np.array([found.get(c, 0.0) for c in CATEGORIES]), 0.0, 1.0)
    return None


def _is_qwen_vl(folder: Path) -> bool:
    config = json.loads((folder / "config.json").read_text())
    return config.get("model_type", "").startswith(("qwen2_vl", "qwen2_5_vl"))


def load_vlm(folder: str | Path):
    """(model, processor) from a local folder, with one clear error for a wrong one."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(f"VLM judge: {folder} is not a model folder (no config.json)")
    try:
        model = AutoModelForImageTextToText.from_pretrained(folder).eval()
        if _is_qwen_vl(folder):
            from transformers import Qwen2Tokenizer
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            from pixelsmile.qwen import _processor_class

            images, tokenizer = Qwen2VLImageProcessorPil.from_pretrained(folder), Qwen2Tokenizer.from_pretrained(folder)
            processor = _processor_class()(image_processor=images, tokenizer=tokenizer, video_processor=None)
        else:
            processor = AutoProcessor.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ValueError(f"VLM judge: cannot load {folder}: {' '.join(str(err).split())[:300]}") from None
    return model, processor


class VLMJudge:
    name = "vlm"

    def __init__(self, folder: str | Path, identity: Judge | None = None, max_new_tokens: int = 160):
        self.model, self.processor = load_vlm(folder)
        self.identity = identity
        self.max_new_tokens = max_new_tokens
        self.version = Path(folder).name + (f"+{identity.name}" if identity else "")

    def answer(self, image: Image.Image) -> str:
        import torch

        text = (f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{PROMPT}<|im_end|>\n"
                "<|im_start|>assistant\n")  # fmt: skip
        inputs = self.processor(text=[text], images=[image.convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def read(self, image: Image.Image) -> Reading:
        answer = self.answer(image)
        scores = parse_scores(answer)
        identity = self.identity.read(image).identity if self.identity is not None else None
        if scores is None:
            return Reading(None, identity, f"no scores in the VLM's answer: {' '.join(answer.split())[:80]!r}")
        return Reading(scores, identity)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        if self.identity is None:
            raise ValueError("the VLM judge was given no identity judge")
        return self.identity.similarity(a, b)


def build_tiny_vlm(folder: str | Path, seed: int = 0) -> Path:
    """A random-weight Qwen2.5-VL folder in the real layout, for tests of the plumbing."""
    import torch

    from pixelsmile.qwen import tiny_vision_language_model

    torch.manual_seed(seed)
    model, processor = tiny_vision_language_model()
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    return folder
