"""A small sample input folder built from pictures that scikit-image ships, so the demo and the tests
have real images and no photo of unknown licence enters the repository.

Sources: `astronaut` (Eileen Collins, NASA, public domain), `camera` (CC0), `chelsea` (a cat, CC0),
`coffee` (CC0), `rocket` (SpaceX, public domain). Alongside the good pictures it writes one broken
file of each kind that ingest must reject, named after the reason it should get.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# File name -> the ingest failure reason it must produce (tests and the demo check these).
BROKEN = {
    "empty.jpg": "empty_file",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "notes.jpg": "not_an_image",
    "bomb.png": "too_large",
    "icon.ico": "unsupported_format",
    "animation.gif": "unsupported_format",
    "moved_away.jpg": "unreadable",
    "astronaut_copy.jpg": "duplicate",
}


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of `width` x `height` black pixels: tiny on disk, huge decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def good_images() -> dict[str, bytes]:
    """Real pictures: one face in many guises, a few without any face."""
    from skimage import data

    astro = Image.fromarray(data.astronaut())
    w, h = astro.size
    files = {
        "astronaut.jpg": _jpeg(astro),
        "astronaut.png": _png(astro),  # same picture, other bytes: not a byte duplicate
        "astronaut_flipped.jpg": _jpeg(astro.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        "astronaut_face_crop.jpg": _jpeg(astro.crop((130, 10, 330, 250))),
        "astronaut_rotated_90.jpg": _jpeg(astro.rotate(90, expand=True)),
        "astronaut_tilted_15.jpg": _jpeg(astro.rotate(15, resample=Image.Resampling.BICUBIC)),
        "astronaut_small.jpg": _jpeg(astro.resize((w // 4, h // 4), Image.Resampling.LANCZOS)),
        "astronaut_grey.png": _png(astro.convert("L")),
        "astronaut_alpha.png": _png(astro.convert("RGBA")),
        "astronaut.webp": _webp(astro),
        "camera.png": _png(Image.fromarray(data.camera())),
        "chelsea_cat.jpg": _jpeg(Image.fromarray(data.chelsea())),
        "coffee.jpg": _jpeg(Image.fromarray(data.coffee())),
        "rocket.jpg": _jpeg(Image.fromarray(data.rocket())),
    }
    # Stored sideways with EXIF orientation 6 ("rotate 90 CW to display"): viewers show it upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    files["astronaut_exif_rotated.jpg"] = _jpeg(astro.transpose(Image.Transpose.ROTATE_90), exif=exif)
    return files


def _webp(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=85)
    return buf.getvalue()


def broken_files(good: dict[str, bytes]) -> dict[str, bytes]:
    jpg, png = good["astronaut.jpg"], good["astronaut.png"]
    ico, gif = io.BytesIO(), io.BytesIO()
    small = Image.open(io.BytesIO(jpg)).resize((64, 64))
    small.save(ico, "ICO")
    frames = [small.rotate(a) for a in (0, 10, 20)]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return {
        "empty.jpg": b"",
        "truncated.jpg": jpg[: len(jpg) // 2],
        "truncated.png": png[: len(png) // 2],
        "notes.jpg": b"These are notes, not a picture.\n" * 20,
        "bomb.png": png_bomb(12_000, 12_000),  # 144 MP: over our cap, under PIL's own
        "icon.ico": ico.getvalue(),
        "animation.gif": gif.getvalue(),
        "astronaut_copy.jpg": jpg,
    }


def write_variants(folder: str | Path, n: int, size: tuple[int, int] = (256, 192), seed: int = 0) -> list[Path]:
    """`n` distinct JPEGs of the astronaut at `size`, each with its own faint noise (so its own
    hash): volume for benchmarks and the kill-and-rerun test."""
    from skimage import data

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = np.asarray(Image.fromarray(data.astronaut()).resize(size), dtype=np.int16)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        noisy = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"variant_{i:05d}.jpg"
        path.write_bytes(_jpeg(Image.fromarray(noisy)))
        paths.append(path)
    return paths


def write_sample(folder: str | Path) -> list[Path]:
    """Write the sample into `folder` (created if needed); return the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = good_images()
    written = []
    for name, data in {**good, **broken_files(good)}.items():
        path = folder / name
        path.write_bytes(data)
        written.append(path)
    link = folder / "moved_away.jpg"  # a link whose target is gone: an unreadable file
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(folder / "no_such_file.jpg")
    written.append(link)
    return written
