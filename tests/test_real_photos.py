"""Real photo collections (issue 16): no file can stall a batch, orientation is read once and
applied the same everywhere, and each odd file of a camera or phone gets its face or its reason.
Every input is made here from scikit-image's astronaut (public domain)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curation.imageio import load_rgb, read_orientation
from curation.probe import probe
from tests.exif import exif_block

FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF"})


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def jpeg(img: Image.Image, exif: bytes | None = None, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **({"exif": exif} if exif else {}))
    return buf.getvalue()


# Orientation 6 (or 3) beside one standard tag of the wrong type: Pillow's exif_transpose raises on
# these when it rewrites the block (struct.error / TypeError), which failed the whole `faces` step.
WRONG_TYPES = [
    (0x0128, "ASCII", "2"),  # ResolutionUnit as text
    (0x0128, "SSHORT", -3),
    (0x0128, "LONG", 70000),
    (0x011A, "ASCII", "72"),  # XResolution as text
]


@pytest.mark.parametrize("orientation", [6, 3])
@pytest.mark.parametrize("bad", WRONG_TYPES, ids=lambda b: f"{b[0]:#x}-{b[1]}")
def test_a_wrongly_typed_tag_beside_the_orientation_loads_upright(tmp_path, astronaut, orientation, bad):
    stored = astronaut.resize((256, 192)).transpose(Image.Transpose.ROTATE_90 if orientation == 6 else
                                                    Image.Transpose.ROTATE_180)  # fmt: skip
    data = jpeg(stored, exif_block((0x0112, "SHORT", orientation), bad))
    info = probe(data, formats=FORMATS, max_megapixels=50, min_side=32)
    assert info.exif_orientation == orientation
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    rgb = load_rgb(path)
    assert rgb.shape[:2] == (info.height, info.width) == (192, 256)
    upright = np.asarray(astronaut.resize((256, 192)), dtype=float)
    assert np.abs(rgb.astype(float) - upright).mean() < 6  # the picture as it was taken


@pytest.mark.parametrize(("kind", "value", "expected"), [
    ("RATIONAL", (6, 1), 6), ("SHORT", 6, 6), ("LONG", 6, 6), ("ASCII", "6", 6),
    ("RATIONAL", (13, 2), None), ("SHORT", 0, None), ("SHORT", 9, None), ("SSHORT", -6, None),
])  # fmt: skip
def test_probe_and_loader_read_the_orientation_alike(tmp_path, astronaut, kind, value, expected):
    """Found: an orientation stored as RATIONAL 6/1 read as 1 by probe but applied by the loader:
    `images` said 384x512 while the face boxes were in the 512x384 frame."""
    data = jpeg(astronaut.resize((128, 96)), exif_block((0x0112, kind, value)))
    info = probe(data, formats=FORMATS, max_megapixels=50, min_side=32)
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    rgb = load_rgb(path)
    assert info.exif_orientation == expected and rgb.shape[:2] == (info.height, info.width)
    if expected is None:  # recorded, never silently 1
        assert info.notes and "shown as stored" in info.notes and rgb.shape[:2] == (96, 128)
    with Image.open(path) as img:
        assert read_orientation(img)[0] == expected


# --- one item never fails its partition -----------------------------------------------------------


def _failures(layout, stage: str) -> list[dict]:
    from storage import tables

    return [r for r in tables.read_table(layout, "failures").to_pylist() if r["stage"] == stage]


def _count(layout, table: str) -> int:
    from storage import tables

    return tables.read_table(layout, table).num_rows


@pytest.mark.parametrize("loop", ["ingest", "load", "detect", "describe", "embed", "prelabel"])
def test_an_unexpected_error_for_one_item_fails_that_item_only(tmp_path, sample_dir, monkeypatch, loop):
    """Found: an exception inside one image's processing failed the whole partition, every rerun
    failed the same way, the error named no file and `ffe status` said "failures: none"."""
    import annotation.scores
    import curation.curate
    import curation.embeddings
    import curation.ingest
    from pipelines.build import build
    from storage.layout import Layout

    layout = Layout.at(tmp_path / "w")
    victim = "astronaut_flipped"  # one healthy photo of the sample gets the error

    def boom(*_):
        raise RuntimeError(f"injected failure in {loop}")

    calls = {"n": 0}

    def once(real):
        def wrapped(*args, **kw):  # the first call fails, the others run for real
            calls["n"] += 1
            return boom() if calls["n"] == 1 else real(*args, **kw)

        return wrapped

    if loop == "ingest":
        real = curation.ingest.probe
        monkeypatch.setattr(curation.ingest, "probe", lambda data, **kw: boom() if victim_bytes == data else
                            real(data, **kw))  # fmt: skip
        victim_bytes = (sample_dir / f"{victim}.jpg").read_bytes()
    elif loop == "load":
        real = curation.curate.load_rgb
        monkeypatch.setattr(curation.curate, "load_rgb", once(real))
    elif loop == "detect":
        monkeypatch.setattr(curation.curate, "find_faces", once(curation.curate.find_faces))
    elif loop == "describe":
        monkeypatch.setattr(curation.curate, "describe", once(curation.curate.describe))
    elif loop == "embed":
        real_embedder = curation.embeddings.embedder

        class Flaky:
            def __init__(self, inner):
                self.inner, self.name = inner, inner.name

            def embed(self, *args):
                return once(self.inner.embed)(*args)

        flaky = {}
        monkeypatch.setattr(curation.embeddings, "embedder",
                            lambda s: flaky.setdefault("e", Flaky(real_embedder(s))))  # fmt: skip
    else:
        real = annotation.scores.scores_from_blendshapes
        monkeypatch.setattr(annotation.scores, "scores_from_blendshapes", once(real))

    report = build(layout, sample_dir, echo=lambda s: None)
    assert report.ok, report.failed  # the partition succeeded with the rest
    stage = {"ingest": "raw_images", "embed": "face_embeddings", "prelabel": "prelabels"}.get(loop, "faces")
    (row,) = [r for r in _failures(layout, stage) if r["reason"] in ("unexpected_error", "unreadable_original")]
    assert f"injected failure in {loop}" in row["detail"] and row["item"]
    if loop == "ingest":
        assert row["item"].endswith(f"{victim}.jpg") and _count(layout, "images") == 14
    elif loop in ("load", "detect", "describe"):
        assert _count(layout, "faces") == 10  # 11 faces in the sample; one image's lost, the rest built
    elif loop == "embed":  # embeddings are made for the faces that passed quality
        from storage import tables

        passed = sum(tables.read_table(layout, "faces").column("quality_ok").to_pylist())
        assert _count(layout, "face_embeddings") == passed - 1
    else:
        assert _count(layout, "prelabels") == _count(layout, "faces") - 1
    from pipelines.status import render_status, status

    shown = render_status(status(layout))
    assert stage in shown and row["reason"] in shown  # Found: "failures: none"


def test_a_stage_where_every_item_fails_says_so(tmp_path, sample_dir, monkeypatch):
    import curation.curate
    from pipelines.build import build
    from storage.layout import Layout

    def broken(*_args, **_kw):
        raise RuntimeError("the detector is broken")

    monkeypatch.setattr(curation.curate, "find_faces", broken)
    report = build(Layout.at(tmp_path / "w"), sample_dir, "faces", echo=lambda s: None)
    (error,) = report.failed.values()
    assert "every one of the 15 item(s)" in error and "the detector is broken" in error


# --- phone formats -----------------------------------------------------------------------------------


def _encoded(img: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, fmt, exif=exif.tobytes(), quality=85)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
@pytest.mark.parametrize("orientation", [None, 6])
def test_phone_formats_are_decoded_upright(tmp_path, astronaut, fmt, orientation):
    """Found: HEIC/HEIF bytes were `not_an_image` and AVIF `unsupported_format`; iPhones save HEIC."""
    from curation.ingest import DEFAULT_FORMATS

    upright = astronaut.resize((240, 180))
    stored = upright.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else upright
    data = _encoded(stored, fmt, orientation)
    info = probe(data, formats=frozenset(DEFAULT_FORMATS), max_megapixels=50, min_side=32)
    assert info.format == fmt and (info.width, info.height) == (240, 180)
    path = tmp_path / f"x.{info.extension}"
    path.write_bytes(data)
    rgb = load_rgb(path)
    assert rgb.shape[:2] == (180, 240) and np.abs(rgb.astype(float) - np.asarray(upright, dtype=float)).mean() < 8


@pytest.mark.parametrize("brand", [b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"])
def test_every_heif_brand_is_named_heif_never_not_an_image(brand):
    from curation.probe import Rejected, sniff_format

    data = bytearray(b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00" + brand + b"mif1") + b"\x00" * 64
    assert sniff_format(bytes(data)) == "HEIF"
    with pytest.raises(Rejected) as info:  # ftyp alone: an image that cannot be decoded, named so
        probe(bytes(data), formats=frozenset({"HEIF"}), max_megapixels=50, min_side=32)
    assert info.value.reason in ("corrupt", "truncated") and "HEIF" in info.value.detail
    with pytest.raises(Rejected) as info:  # not accepted by the settings: unsupported, named
        probe(_encoded(Image.new("RGB", (64, 64)), "HEIF"), formats=FORMATS, max_megapixels=50, min_side=32)
    assert info.value.reason == "unsupported_format" and "HEIF" in info.value.detail
