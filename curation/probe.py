"""Decide whether a file's bytes are an image we accept, and describe it.

`probe` fully decodes the pixels (a header can look fine over a broken body) and never trusts the
file's extension. Each rejection carries a reason code, the same across the project:

    empty_file          zero bytes
    not_an_image        no image format recognised (text, HTML, an archive ...)
    unsupported_format  an image, but of a format or kind we do not ingest (ICO, GIF, animation)
    too_large           more pixels than the configured cap (decompression bombs); not decoded
    too_small           shorter side under the configured minimum
    truncated           the data ends early
    corrupt             the data is damaged in some other way
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from curation.imageio import HEIF, read_orientation

# EXIF orientations 5-8 turn the image a quarter: width and height swap for display.
_QUARTER_TURNS = {5, 6, 7, 8}

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif", "HEIF": "heic",
              "AVIF": "avif"}  # fmt: skip
# ISO base media files (HEIF, AVIF) say what they hold in their `ftyp` box: major and compatible brands.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class Rejected(Exception):
    """A file we do not ingest, with a reason code (see the module doc) and a detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mode: str
    width: int  # as displayed, after the EXIF orientation
    height: int
    exif_orientation: int | None  # None: a damaged value (see `notes`), shown as stored
    notes: str | None = None  # what a viewer would not tell (a damaged orientation ...)

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.format, self.format.lower())


def sniff_format(data: bytes) -> str | None:
    """The format that the first bytes announce, whatever the decoder later makes of them."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        size = int.from_bytes(data[:4], "big")
        brands = {data[8:12]} | {data[k : k + 4] for k in range(16, min(size, 64), 4)}
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    return None


def _looks_cut_short(data: bytes, fmt: str | None) -> bool:
    """Cheap structural test for a file whose end is missing."""
    if fmt == "JPEG":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" not in data[-16:]
    if fmt == "WEBP" and len(data) >= 8:
        (riff_size,) = struct.unpack("<I", data[4:8])
        return len(data) < riff_size + 8
    return False


def _decode_error(data: bytes, fmt: str | None, err: Exception) -> Rejected:
    message = str(err) or type(err).__name__
    if "truncated" in message.lower() or isinstance(err, EOFError) or _looks_cut_short(data, fmt):
        return Rejected("truncated", f"{fmt or 'image'} data ends early ({message})")
    return Rejected("corrupt", f"{fmt or 'image'} data cannot be decoded ({message})")


def probe(
    data: bytes,
    *,
    formats: frozenset[str] | set[str],
    max_megapixels: float,
    min_side: int = 1,
) -> ImageInfo:
    """Validate `data` by decoding it; return what we record of it or raise `Rejected`."""
    if not data:
        raise Rejected("empty_file", "the file has zero bytes")
    sniffed = sniff_format(data)
    with warnings.catch_warnings():
        # We enforce our own pixel cap below; PIL's warning about its own would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            raise Rejected("too_large", f"decompression bomb refused by the decoder: {err}") from None
        except UnidentifiedImageError:
            if sniffed == "HEIF" and not HEIF:
                raise Rejected("unsupported_format", "HEIF/HEIC (install pillow-heif to ingest it)") from None
            if sniffed:
                raise _decode_error(data, sniffed, ValueError("unreadable header")) from None
            raise Rejected("not_an_image", "no known image format in the file's bytes") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
            raise _decode_error(data, sniffed, err) from None

        with img:
            fmt = img.format or sniffed or "unknown"
            if fmt not in formats:
                raise Rejected("unsupported_format", f"{fmt} is not ingested (accepted: {', '.join(sorted(formats))})")
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise Rejected("unsupported_format", f"{fmt} with {frames} frames (animations are not ingested)")
            w, h = img.size
            megapixels = w * h / 1e6
            if megapixels > max_megapixels:
                raise Rejected("too_large", f"{w}x{h} is {megapixels:.1f} MP, over the cap of {max_megapixels:g} MP")
            try:
                img.load()
            except Exception as err:  # decoders raise a zoo of types: OSError, SyntaxError, ...
                raise _decode_error(data, fmt, err) from None
            orientation, note = read_orientation(img)  # the loader reads it the same way (curation/imageio.py)
            if orientation in _QUARTER_TURNS:
                w, h = h, w
            if min(w, h) < min_side:
                raise Rejected("too_small", f"{w}x{h} has a side under {min_side} px")
            return ImageInfo(format=fmt, mode=img.mode, width=w, height=h, exif_orientation=orientation,
                             notes=note or None)  # fmt: skip
