"""Content-addressed originals: a file's bytes live at images/<sha[:2]>/<sha>.<ext>, written once."""

from __future__ import annotations

import hashlib
from pathlib import Path

from storage.atomic import atomic_write_bytes
from storage.layout import Layout


def content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256, size) of a file, read in 1 MB pieces (files of any size)."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _complete_copy_exists(path: Path, size: int) -> bool:
    """A copy of the wrong size (a torn write after power loss with fsync off) does not count."""
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def put_image(layout: Layout, data: bytes, image_id: str, ext: str, *, fsync: bool = False) -> Path:
    """Store `data` under its hash unless a complete copy is already there; return the path."""
    path = layout.image_path(image_id, ext)
    if not _complete_copy_exists(path, len(data)):
        atomic_write_bytes(path, data, fsync=fsync, temp_dir=layout.images_temp)
    return path


def read_crop(layout: Layout, face: dict):
    """A face's aligned crop (`face_id`, `crop_path` as the faces table holds them) as an RGB image;
    an ItemError (`unreadable_crop`) naming the face when the file is gone or damaged: that face's
    problem, not the work folder's."""
    from PIL import Image

    from storage.failures import ItemError

    path = layout.root / face["crop_path"]
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as err:
        detail = f"crop of {face['face_id']} is missing or unreadable ({path}): {err}"
        raise ItemError("unreadable_crop", detail) from None
