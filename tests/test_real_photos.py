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


# --- faces in ordinary camera photos ------------------------------------------------------------------


@pytest.fixture(scope="module")
def face_kit():
    from curation.embeddings import EmbeddingSettings, embedder
    from curation.faces import FaceSettings, face_models

    settings = FaceSettings()
    return settings, face_models(settings), embedder(EmbeddingSettings())


def _one_face(kit, img: Image.Image) -> dict:
    """The photo's single face as curation sees it: detector, rotation, crop, quality, identity
    vector, smile and the pre-label's happy score."""
    from annotation.prelabels import scores_from_blendshapes
    from curation.faces import describe, find_faces
    from curation.imageio import to_rgb8

    settings, models, embed = kit
    rgb = to_rgb8(img)
    found = find_faces(rgb, models, settings)
    assert len(found) == 1, [f.detector for f in found]
    d = describe(rgb, found[0], settings)
    kps5 = np.asarray(d.fields["kps5"]).reshape(5, 2)
    return {"found": found[0], "fields": d.fields, "crop": d.crop.astype(float), "vector": embed.embed(d.crop, kps5),
            "happy": scores_from_blendshapes(d.fields["blendshapes"])["happy"]}  # fmt: skip


@pytest.mark.parametrize(("name", "turn", "rotation"), [
    ("rotated 180, JPEG q95", lambda im: jpeg_image(im.rotate(180), 95), 180),
    ("rotated 150", lambda im: jpeg_image(im.rotate(150), 95), 180),
    ("rotated 270", lambda im: im.rotate(270, expand=True), 90),
    ("rotated 90", lambda im: im.rotate(90, expand=True), 270),
    ("flipped top-bottom", lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM), 180),
])  # fmt: skip
def test_a_turned_photo_gives_the_upright_face(face_kit, astronaut, name, turn, rotation):
    """Found: an upside-down photo gave a partial upside-down "face" (roll 26) that passed every
    check and opened a new identity with sad 0.27 for a smile; a 270-degree turn read the smile 0.45.
    Tolerances against the upright photo: crop within 12 grey levels on average (a mirror image
    excepted), identity distance under 0.3 (dlib: 0.6 is a different person), happy within 0.1."""
    upright = _one_face(face_kit, astronaut)
    got = _one_face(face_kit, turn(astronaut))
    assert got["found"].rotation == rotation and got["fields"]["quality_ok"]
    if "flipped" not in name:  # a top-bottom flip is the upright photo mirrored
        assert np.abs(got["crop"] - upright["crop"]).mean() < 12
    assert np.linalg.norm(got["vector"] - upright["vector"]) < 0.3
    assert abs(got["happy"] - upright["happy"]) < 0.1 and got["happy"] > 0.5


def jpeg_image(img: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(jpeg(img.convert("RGB"), quality=quality)))


def test_a_landmarker_only_face_must_verify(face_kit):
    """The whole-image landmarker's partial face in a rotated photo does not survive re-landmarking
    of its aligned crop; a blank picture has no face at all."""
    from curation.faces import find_faces

    settings, models, _ = face_kit
    assert find_faces(np.full((512, 512, 3), 128, np.uint8), models, settings) == []


def test_a_dithered_bilevel_portrait_is_found(face_kit, astronaut):
    """Found: a mode `1` (dithered black and white) portrait gave `no_face`."""
    got = _one_face(face_kit, astronaut.convert("1"))
    assert got["found"].detector == "dlib_hog" and got["fields"]["quality_ok"]


@pytest.mark.parametrize("frame", [0.77, 0.9])
def test_a_tight_frame_is_padded_not_rejected(face_kit, astronaut, frame):
    """Found: a portrait whose face fills the frame (face ~77% of its width) was `out_of_frame`."""
    upright = _one_face(face_kit, astronaut)
    xs, ys = upright["found"].landmarks[:, 0], upright["found"].landmarks[:, 1]
    width = (xs.max() - xs.min()) / frame
    cx, cy = (xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2
    tight = astronaut.crop((int(cx - width / 2), int(cy - 0.6 * width), int(cx + width / 2), int(cy + 0.6 * width)))
    got = _one_face(face_kit, tight)
    assert got["fields"]["quality_ok"] and got["fields"]["out_of_frame"] > 0.3  # padded, and the share recorded
    assert np.linalg.norm(got["vector"] - upright["vector"]) < 0.3


def test_a_112_px_aligned_crop_is_found_and_upscaled(face_kit, astronaut):
    """Found: a 112x112 aligned crop (ArcFace's template) was `out_of_frame`."""
    from curation import align

    upright = _one_face(face_kit, astronaut)
    arcface = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])
    m = align.similarity(align.five_points(upright["found"].landmarks), arcface)
    import cv2

    small = Image.fromarray(cv2.warpAffine(np.asarray(astronaut), m, (112, 112)))
    got = _one_face(face_kit, small)
    assert got["crop"].shape == (512, 512, 3) and 60 < got["fields"]["face_px"] < 112
    assert "out_of_frame" not in got["fields"]["reject_reason"]


def _big_photo(width: int, height: int, face_px: int, spots: list[tuple[int, int]]) -> np.ndarray:
    """A camera-sized photo (a textured scene: scikit-image's coffee tiled) with astronauts whose
    face is `face_px` wide at `spots`."""
    import cv2
    from skimage import data

    scene = cv2.resize(np.tile(data.coffee(), (4, 4, 1)), (width, height))
    side = int(face_px / 0.19)
    person = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    for x, y in spots:
        scene[y : y + side, x : x + side] = person
    return scene


@pytest.mark.slow
@pytest.mark.parametrize(("width", "height"), [(4000, 3000), (6000, 4000)])
def test_small_faces_in_a_large_photo_are_found(face_kit, width, height):
    """Found: detection saw a copy shrunk to 1024 px, so in a 24 MP photo every face under ~195 px
    was lost (12 MP: ~156 px) and reported as `no_face`. Now any face of at least `min_face_px`
    (64) is found, where it is."""
    from curation.faces import describe, find_faces

    settings, models, _ = face_kit
    spots = [(900, 800), (width // 2, height // 2)]
    rgb = _big_photo(width, height, 90, spots)
    found = find_faces(rgb, models, settings)
    assert len(found) == 2
    for f, (x, y) in zip(sorted(found, key=lambda f: f.box[0]), spots, strict=True):
        fields = describe(rgb, f, settings).fields
        side = int(90 / 0.19)
        assert x < fields["bbox_x0"] < fields["bbox_x1"] < x + side and y < fields["bbox_y0"] < y + side
        assert 80 < fields["face_px"] < 110
        assert fields["quality_ok"]


@pytest.mark.slow
def test_a_real_collection_of_every_kind_builds_with_every_healthy_face(tmp_path, astronaut, capsys):
    """Acceptance: a folder with each kind above beside healthy photos: `ffe build` exits 0, every
    healthy face is curated, and each bad file is in `failures` by name."""
    import json

    import cv2

    from curation import align
    from pipelines.cli import main

    inp = tmp_path / "input"
    inp.mkdir()
    face = astronaut
    (inp / "healthy.jpg").write_bytes(jpeg(face))
    (inp / "healthy_mirror.png").write_bytes(_encoded(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"))
    stored6 = face.resize((384, 384)).transpose(Image.Transpose.ROTATE_90)
    (inp / "exif6_bad_unit.jpg").write_bytes(jpeg(stored6, exif_block((0x0112, "SHORT", 6), (0x0128, "ASCII", "2"))))
    (inp / "exif_rational.jpg").write_bytes(jpeg(stored6, exif_block((0x0112, "RATIONAL", (6, 1)))))
    (inp / "upside_down.jpg").write_bytes(jpeg(face.rotate(180), quality=95))
    (inp / "sideways.jpg").write_bytes(jpeg(face.rotate(270, expand=True)))
    face.convert("1").save(inp / "dithered.png")
    (inp / "iphone.heic").write_bytes(_encoded(face, "HEIF", 1))
    (inp / "web.avif").write_bytes(_encoded(face, "AVIF"))
    arcface = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])
    from curation.faces import FaceSettings, face_models, find_faces

    landmarks = find_faces(np.asarray(face), face_models(FaceSettings()), FaceSettings())[0].landmarks
    m = align.similarity(align.five_points(landmarks), arcface * 2)  # a 224 px aligned crop
    Image.fromarray(cv2.warpAffine(np.asarray(face), m, (224, 224))).save(inp / "aligned_224.png")
    Image.fromarray(_big_photo(4000, 3000, 90, [(900, 800)])).save(inp / "camera_12mp.jpg", quality=90)
    bad = {"truncated.jpg": jpeg(face)[:5000], "notes.jpg": b"not a picture at all", "empty.png": b""}
    for name, data in bad.items():
        (inp / name).write_bytes(data)

    work = tmp_path / "w"
    assert main(["build", "--input", str(inp), "--workdir", str(work)]) == 0
    capsys.readouterr()
    assert main(["query", "SELECT i.source_uri, count(f.face_id) AS n, bool_and(f.quality_ok) AS ok FROM images i "
                 "LEFT JOIN faces f USING (image_id) GROUP BY 1 ORDER BY 1", "--workdir", str(work), "--json"]) == 0
    faces = {r["source_uri"].rsplit("/", 1)[-1]: r for r in json.loads(capsys.readouterr().out)}
    healthy = sorted(p.name for p in inp.iterdir() if p.name not in bad)
    assert sorted(faces) == healthy
    assert {n: (r["n"], r["ok"]) for n, r in faces.items()} == dict.fromkeys(healthy, (1, True))
    assert main(["query", "SELECT item, reason FROM failures WHERE stage = 'raw_images'", "--workdir", str(work),
                 "--json"]) == 0  # fmt: skip
    failed = {r["item"].rsplit("/", 1)[-1]: r["reason"] for r in json.loads(capsys.readouterr().out)}
    assert failed == {"truncated.jpg": "truncated", "notes.jpg": "not_an_image", "empty.png": "empty_file"}


def test_a_face_seen_but_never_confirmed_has_its_own_reason(tmp_path, sample_dir, monkeypatch):
    """Where a detector proposes a face and no landmarks can be placed, the image's failure says so
    (`unconfirmed_face`), apart from `no_face` (nothing seen at all: the cat, the cup)."""
    import curation.faces
    from pipelines.build import build
    from storage.layout import Layout

    monkeypatch.setattr(curation.faces, "_landmark_box", lambda *a, **k: None)
    monkeypatch.setattr(curation.faces, "_verified", lambda *a, **k: False)
    layout = Layout.at(tmp_path / "w")
    assert build(layout, sample_dir, "faces", echo=lambda s: None).ok
    reasons = {r["reason"] for r in _failures(layout, "faces")}
    assert "unconfirmed_face" in reasons and "no_face" in reasons
    (row,) = [r for r in _failures(layout, "faces") if r["reason"] == "unconfirmed_face"][:1]
    assert "face-like region(s)" in row["detail"]


def test_an_unexpected_error_in_one_label_row_fails_that_row_only(tmp_path, monkeypatch):
    import curation.labels
    from pipelines.build import build
    from pixelsmile.synthetic import write_world_input
    from storage import tables
    from storage.layout import Layout

    real, calls = curation.labels._row, []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyError("injected")
        return real(*args, **kw)

    monkeypatch.setattr(curation.labels, "_row", flaky)
    folder = tmp_path / "input"
    write_world_input(folder, people=1, faces_per_person=3)
    layout = Layout.at(tmp_path / "w")
    assert build(layout, folder, "raw_images", echo=lambda s: None, pre_cropped=True).ok
    (row,) = _failures(layout, "labels")
    assert row["reason"] == "unexpected_error" and "KeyError" in row["detail"] and row["item"].endswith("labels.csv:3")
    assert tables.read_table(layout, "imported_labels").num_rows == 2
