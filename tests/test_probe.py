"""Each kind of bad input gets its own reason; good images of every mode are accepted."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from curation.probe import Rejected, probe
from curation.sample import png_bomb

FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF"})


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((200, 160))


def reason(data: bytes, **kw) -> str:
    opts = dict(formats=FORMATS, max_megapixels=50.0, min_side=32) | kw
    with pytest.raises(Rejected) as info:
        probe(data, **opts)
    return info.value.reason


def accept(data: bytes, **kw):
    return probe(data, **(dict(formats=FORMATS, max_megapixels=50.0, min_side=32) | kw))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files_are_truncated(photo, fmt):
    data = encode(photo, fmt)
    assert reason(data[: len(data) // 2]) == "truncated"
    assert reason(data[:40]) in {"truncated", "corrupt"}  # too little to tell a cut from damage


def test_empty_and_non_images(photo):
    assert reason(b"") == "empty_file"
    assert reason(b"<html><body>404</body></html>") == "not_an_image"
    assert reason(b"PK\x03\x04 a zip archive") == "not_an_image"


def test_corrupt_body_is_corrupt_not_truncated(photo):
    data = bytearray(encode(photo, "PNG"))
    data[200:260] = b"\x00" * 60  # damage inside the image data; the end (IEND) is intact
    assert reason(bytes(data)) == "corrupt"


def test_decompression_bombs_are_refused_without_decoding():
    assert reason(png_bomb(4_000, 3_000), max_megapixels=10) == "too_large"  # our cap
    assert reason(png_bomb(30_000, 30_000), max_megapixels=5_000) == "too_large"  # PIL's own
    assert accept(png_bomb(4_000, 3_000), max_megapixels=20).width == 4_000


def test_unsupported_formats_and_animations(photo):
    assert reason(encode(photo, "ICO")) == "unsupported_format"
    assert reason(encode(photo, "GIF")) == "unsupported_format"
    frames = [photo.rotate(a) for a in (0, 5)]
    anim = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    assert reason(anim) == "unsupported_format"
    assert accept(encode(photo, "GIF"), formats=FORMATS | {"GIF"}).format == "GIF"


def test_too_small(photo):
    assert reason(encode(photo.resize((40, 20)), "PNG")) == "too_small"


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("RGB", "JPEG"),
        ("L", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("RGB", "TIFF"),
        ("RGB", "BMP"),
        ("P", "PNG"),
    ],
)
def test_every_common_mode_is_accepted_and_recorded(photo, mode, fmt):
    img = photo.convert("I;16") if mode == "I;16" else photo.convert(mode)
    info = accept(encode(img, fmt))
    assert (info.format, info.mode, info.width, info.height) == (fmt, mode, 200, 160)
    assert info.exif_orientation == 1


@pytest.mark.parametrize("orientation,swapped", [(1, False), (3, False), (6, True), (8, True)])
def test_exif_orientation_gives_the_displayed_size(photo, orientation, swapped):
    exif = Image.Exif()
    exif[0x0112] = orientation
    info = accept(encode(photo, "JPEG", exif=exif))
    assert info.exif_orientation == orientation
    assert (info.width, info.height) == ((160, 200) if swapped else (200, 160))


def test_a_damaged_orientation_tag_is_recorded_never_silently_upright(photo):
    exif = Image.Exif()
    exif[0x0112] = 42
    info = accept(encode(photo, "JPEG", exif=exif))
    assert info.exif_orientation is None and "42" in info.notes and (info.width, info.height) == (200, 160)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_accepted_or_rejected_never_crash(data):
    try:
        accept(data, min_side=1)
    except Rejected as rej:
        assert rej.reason in {
            "empty_file",
            "not_an_image",
            "unsupported_format",
            "too_large",
            "truncated",
            "corrupt",
            "too_small",
        }


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=4000), st.binary(min_size=1, max_size=64))
def test_damaged_real_images_never_crash(cut, garbage):
    img = Image.fromarray(np.full((48, 64, 3), 120, np.uint8))
    data = encode(img, "JPEG")
    damaged = data[: min(cut, len(data))] + garbage
    with contextlib.suppress(Rejected):
        accept(damaged, min_side=1)
