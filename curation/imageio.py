"""Decode a stored original as a viewer shows it: EXIF orientation applied, 8-bit RGB.

The orientation is read in one place (`read_orientation`), by ingest's probe and by the loader, so
the size `images` records and the frame the face boxes live in always agree. It is applied with
`Image.transpose` from the value read: Pillow's `exif_transpose` also rewrites the EXIF block, which
raises on a standard tag of the wrong type (a ResolutionUnit stored as text).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

try:  # HEIC/HEIF through libheif; without the plugin such files are `unsupported_format` (probe)
    from pillow_heif import register_heif_opener

    register_heif_opener()  # it applies the orientation while decoding and resets EXIF's to 1
    HEIF = True
except ImportError:
    HEIF = False

ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (as Pillow's exif_transpose).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def read_orientation(img: Image.Image) -> tuple[int | None, str]:
    """(EXIF orientation 1-8, "") of an opened image; 1 when there is none. A damaged value (not a
    whole number in 1-8, or EXIF that cannot be read) is (None, a note saying what was there): the
    image is then shown as stored, and the note says so. A value stored as a one-element tuple or a
    whole RATIONAL (6/1) counts as that number."""
    try:
        raw = img.getexif().get(ORIENTATION_TAG)
    except Exception as err:  # EXIF parsers raise many types on damaged blocks
        return None, f"EXIF cannot be read ({type(err).__name__}: {err}): shown as stored"
    if raw is None:
        return 1, ""
    value = raw[0] if isinstance(raw, tuple) and len(raw) == 1 else raw
    try:
        number = Fraction(str(value.decode() if isinstance(value, bytes) else value).strip())
    except (ValueError, ZeroDivisionError, TypeError, UnicodeDecodeError):
        number = None
    if number is not None and number.denominator == 1 and 1 <= number.numerator <= 8:
        return int(number), ""
    return None, f"EXIF orientation {raw!r} is not one of 1-8: shown as stored"


def upright(img: Image.Image) -> Image.Image:
    """`img` as a viewer shows it (its EXIF orientation applied, nothing rewritten)."""
    orientation, _ = read_orientation(img)
    return img.transpose(TRANSPOSE[orientation]) if orientation in TRANSPOSE else img


def to_rgb8(img: Image.Image) -> np.ndarray:
    """Any PIL mode as a contiguous HxWx3 uint8 array. Transparency is flattened onto white (a
    cut-out portrait on black would read as a dark photo); 16-bit and float greys are scaled;
    bilevel (mode 1) images are low-passed (1 px Gaussian), as dithering hides faces from detectors."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        grey = np.clip(arr if arr.max() > 1.0 else arr * 255.0, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if img.mode == "1":  # dithered black and white: a light blur gives detectors the greys back
        from PIL import ImageFilter

        img = img.convert("L").filter(ImageFilter.GaussianBlur(1))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB")))


def load_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        return to_rgb8(upright(img))
