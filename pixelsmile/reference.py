"""The PixelSmile reference's training data: `train.jsonl`, one triplet per line:
{"src": {"image": PATH}, "dst": [{"image": PATH, "category": C, "scores": {C: s, ...}}, {...}]}
with image paths relative to the file's folder (or absolute); optional "subject" and "boxes" are
accepted (boxes are not used: FFE crops are already aligned)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import torch

from storage.loader import decode_image
from storage.schemas import CATEGORIES


class JsonlTriplets(torch.utils.data.IterableDataset):
    """The same items as `storage.loader.TripletStream`, from a train.jsonl, shuffled per epoch."""

    def __init__(self, path: str | Path, *, resolution: int = 512, seed: int = 0, epoch: int = 0):
        super().__init__()
        self.path = Path(path)
        self.resolution, self.seed, self.epoch = resolution, seed, epoch
        self.records = [self._check(i, line) for i, line in enumerate(self.path.read_text().splitlines(), 1)
                        if line.strip()]  # fmt: skip

    def _check(self, number: int, line: str) -> dict:
        where = f"{self.path}:{number}"
        try:
            rec = json.loads(line)
            src, (a, b) = rec["src"]["image"], rec["dst"]
            for d in (a, b):
                if d["category"] not in CATEGORIES:
                    raise ValueError(f"unknown category {d['category']!r}")
                float(d["scores"][d["category"]])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{where}: not a PixelSmile triplet ({err})") from None
        del src
        return rec

    def _image(self, rel: str) -> torch.Tensor:
        path = Path(rel) if Path(rel).is_absolute() else self.path.parent / rel
        try:
            return decode_image(path.read_bytes(), self.resolution)
        except OSError as err:
            raise ValueError(f"{self.path}: cannot read image {path}: {err}") from None

    def __iter__(self) -> Iterator[dict]:
        order = list(range(len(self.records)))
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        info = torch.utils.data.get_worker_info()
        if info is not None:
            order = order[info.id :: info.num_workers]
        for i in order:
            rec = self.records[i]
            a, b = rec["dst"]
            yield {
                "identity_id": rec.get("identity_id", f"line-{i + 1}"),
                "source": self._image(rec["src"]["image"]),
                "target_a": self._image(a["image"]),
                "target_b": self._image(b["image"]),
                "category_a": a["category"],
                "category_b": b["category"],
                "alpha_a": float(a["scores"][a["category"]]),
                "alpha_b": float(b["scores"][b["category"]]),
            }
