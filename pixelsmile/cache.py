"""A cache of what the frozen encoders make of each image and instruction (VAE latents, prompt
embeddings): computed on first use, kept in memory and, with a folder, on disk, so that a resumed
or repeated run encodes nothing twice. The reference precomputes both before training; computing
them lazily gives the same saving without a separate pass, and a killed run keeps what it encoded
(each entry is written atomically)."""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from storage.atomic import atomic_write_bytes


def tensor_key(*parts: torch.Tensor | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.detach().cpu().contiguous().numpy().tobytes() if isinstance(p, torch.Tensor) else p.encode())
        h.update(b"\0")
    return h.hexdigest()


class EncodingCache:
    def __init__(self, folder: str | Path | None = None, memory_items: int = 100_000):
        self.folder = Path(folder) if folder else None
        self.memory: OrderedDict[str, Any] = OrderedDict()
        self.memory_items = memory_items
        self.computed = 0  # how many entries this process had to compute

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key]
        value = None
        if self.folder is not None and self._path(key).is_file():
            value = torch.load(self._path(key), map_location="cpu", weights_only=False)
        if value is None:
            value = compute()
            self.computed += 1
            if self.folder is not None:
                buf = io.BytesIO()
                torch.save(value, buf)
                atomic_write_bytes(self._path(key), buf.getvalue(), fsync=False)
        self.memory[key] = value
        if len(self.memory) > self.memory_items:
            self.memory.popitem(last=False)
        return value
