"""Faces on real pictures: geometry, blendshapes, pose, alignment, quality and every bad-input kind."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from curation import align
from curation.faces import FaceSettings, describe, face_models, find_faces
from curation.imageio import load_rgb, to_rgb8
from curation.models import ModelError
from curation.quality import QualityThresholds


@pytest.fixture(scope="module")
def models():
    return face_models(FaceSettings())


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def group_photo() -> np.ndarray:
    """insightface's sample group photo (six people), used at test time only, never committed."""
    import insightface.data

    return load_rgb(Path(insightface.data.__file__).parent / "images" / "t1.jpg")


def one_face(rgb, models, settings=FaceSettings()):
    (found,) = find_faces(np.ascontiguousarray(rgb), models, settings)
    return found, describe(np.ascontiguousarray(rgb), found, settings)


def test_landmark_geometry_and_smile(models, astronaut):
    f, d = one_face(astronaut, models)
    lm = f.landmarks
    assert lm.shape == (478, 3) and f.detector == "dlib_hog" and f.det_score > 0.5
    eyes_y = lm[[33, 133, 362, 263], 1].mean()
    mouth_y = lm[[61, 291, 13, 14], 1].mean()
    assert eyes_y < lm[1, 1] < mouth_y  # eyes above the nose tip above the mouth
    x0, y0, x1, y1 = (d.fields[k] for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
    assert (x0 <= lm[:, 0]).all() and (lm[:, 0] <= x1).all() and (y0 <= lm[:, 1]).all() and (lm[:, 1] <= y1).all()
    assert 150 < x0 < x1 < 300 and 40 < y0 < y1 < 220  # where her face is in the picture
    assert d.fields["blendshapes"]["mouthSmileLeft"] > 0.5 and d.fields["blendshapes"]["mouthSmileRight"] > 0.5
    assert d.fields["blendshapes"]["jawOpen"] < 0.3
    assert d.fields["quality_ok"] and d.fields["reject_reason"] == ""


def test_crop_is_512_with_eyes_at_the_canonical_spots(models, astronaut):
    _, d = one_face(astronaut, models)
    assert d.crop.shape == (512, 512, 3)
    # Landmark the crop itself: its eyes must sit where the template puts them.
    (lm, _, _), *_ = models.landmark(np.ascontiguousarray(d.crop))
    eyes = align.five_points(lm)[:2]
    assert np.abs(eyes - align.CANONICAL_5[:2] * 512).max() < 4.0
    kps = np.asarray(d.fields["kps5"]).reshape(5, 2)
    assert np.abs(kps[:2] - align.CANONICAL_5[:2] * 512).max() < 3.0


def test_rotated_tilted_and_cropped_copies_align_to_the_same_crop(models, astronaut):
    _, ref = one_face(astronaut, models)
    tilted = np.asarray(Image.fromarray(astronaut).rotate(15, resample=Image.Resampling.BICUBIC))
    for variant in (np.rot90(astronaut), tilted, astronaut[10:250, 130:330]):
        _, d = one_face(variant, models)
        diff = np.abs(d.crop.astype(int) - ref.crop.astype(int))[96:416, 96:416].mean()
        assert diff < 12, diff  # the face region of the crops agrees


def test_pose_signs_flip_in_a_mirror(models, astronaut):
    f, d = one_face(astronaut, models)
    fm, dm = one_face(astronaut[:, ::-1], models)
    assert abs(d.fields["roll"]) > 1.5 and np.sign(d.fields["roll"]) == -np.sign(dm.fields["roll"])
    assert abs(d.fields["roll"] + dm.fields["roll"]) < 1.5
    assert abs(d.fields["yaw"] + dm.fields["yaw"]) < 2.5 and abs(d.fields["pitch"] - dm.fields["pitch"]) < 2.5


def test_group_photo_finds_every_face_largest_first(models):
    rgb = group_photo()
    found = find_faces(rgb, models, FaceSettings())
    assert len(found) == 6 and all(f.detector == "dlib_hog" for f in found)
    areas = [(d["bbox_x1"] - d["bbox_x0"]) * (d["bbox_y1"] - d["bbox_y0"])
             for d in (describe(rgb, f, FaceSettings()).fields for f in found)]  # fmt: skip
    assert areas == sorted(areas, reverse=True)
    assert len(find_faces(rgb, models, FaceSettings(max_faces=2))) == 2
    # One of them is turned well to the side: kept, described, and rejected for its pose.
    fields = [describe(rgb, f, FaceSettings()).fields for f in found]
    turned = [f for f in fields if abs(f["yaw"]) > 45]
    assert len(turned) == 1 and turned[0]["reject_reason"] == "pose"
    assert sum(f["quality_ok"] for f in fields) == 5


def test_no_face_in_a_cat_or_a_cup(models):
    from skimage import data

    for picture in (data.chelsea(), data.coffee()):
        assert find_faces(np.ascontiguousarray(picture), models, FaceSettings()) == []


def test_pre_cropped_batches_take_the_whole_image(models):
    from skimage import data

    cat = np.ascontiguousarray(data.chelsea())
    (f,) = find_faces(cat, models, FaceSettings(), pre_cropped=True)
    d = describe(cat, f, FaceSettings())
    assert f.detector == "whole_image" and d.fields["landmarks"] is None and d.fields["yaw"] is None
    assert d.crop.shape == (512, 512, 3) and d.fields["bbox_x1"] == 451 and d.fields["out_of_frame"] == 0.0


def test_quality_rejects_small_blurry_dark_and_turned_faces(models, astronaut):
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    _, d = one_face(small, models)
    assert "small_face" in d.fields["reject_reason"] and not d.fields["quality_ok"]
    _, d = one_face(cv2.GaussianBlur(astronaut, (0, 0), 2.5), models)
    assert d.fields["reject_reason"] == "blurry"
    _, d = one_face((astronaut * 0.15).astype(np.uint8), models)
    assert "too_dark" in d.fields["reject_reason"].split(",")
    strict = FaceSettings(quality=QualityThresholds(max_abs_pitch=1.0))
    _, d = one_face(astronaut, models, strict)
    assert d.fields["reject_reason"] == "pose"


def _encode(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("mode", ["L", "CMYK", "I;16", "RGBA", "LA", "P"])
def test_every_image_mode_decodes_to_rgb_and_keeps_the_face(models, astronaut, mode):
    img = Image.fromarray(astronaut)
    img = img.convert("L").convert("I;16") if mode == "I;16" else img.convert(mode)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    rgb = to_rgb8(_encode(img, fmt))
    assert rgb.dtype == np.uint8 and rgb.shape == (512, 512, 3)
    _, d = one_face(rgb, models)
    assert d.fields["quality_ok"], d.fields["reject_reason"]


def test_transparent_pixels_are_flattened_onto_white():
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    assert (to_rgb8(Image.fromarray(rgba, "RGBA")) == 255).all()


def test_exif_rotated_file_is_loaded_upright(tmp_path, models, astronaut):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.fromarray(astronaut).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    rgb = load_rgb(path)
    assert rgb.shape == (512, 512, 3)
    f, d = one_face(rgb, models)
    assert f.detector == "dlib_hog" and abs(d.fields["roll"]) < 10  # upright, found by the frontal detector


def test_missing_or_corrupt_model_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"faces.landmarker_model: model file .*nope.task does not exist"):
        face_models(FaceSettings(landmarker_model=str(tmp_path / "nope.task")))
    bad = tmp_path / "bad.task"
    bad.write_bytes(b"not a model" * 100)
    with pytest.raises(ModelError, match=r"faces.landmarker_model: .*bad.task is not a valid MediaPipe"):
        face_models(FaceSettings(landmarker_model=str(bad)))
    with pytest.raises(ModelError, match="faces.scrfd_model: no model path is configured"):
        face_models(FaceSettings(detector="scrfd"))


def tiny_scrfd(path):
    """An SCRFD-shaped ONNX model (1x3x640x640 in; scores and box distances for strides 8/16/32 with
    two anchors each), built here instead of downloaded. Every anchor scores ~0.99 and proposes a box
    of 12 strides around itself: the detector code runs for real and the landmarker then keeps the
    boxes that hold a face."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes, outputs = [], [], []
    for kind, channels, per_anchor, bias in (("score", 2, 1, 5.0), ("bbox", 8, 4, 6.0)):
        for stride in (8, 16, 32):
            name = f"{kind}{stride}"
            inits += [
                numpy_helper.from_array(np.zeros((channels, 3, 1, 1), np.float32), f"{name}_w"),
                numpy_helper.from_array(np.full(channels, bias, np.float32), f"{name}_b"),
                numpy_helper.from_array(np.array([-1, per_anchor], np.int64), f"{name}_shape"),
            ]
            pooled = f"pool{stride}_{kind}"
            nodes += [
                helper.make_node("AveragePool", ["input.1"], [pooled], kernel_shape=[stride, stride],
                                 strides=[stride, stride]),
                helper.make_node("Conv", [pooled, f"{name}_w", f"{name}_b"], [f"{name}_conv"]),
                helper.make_node("Sigmoid" if kind == "score" else "Relu", [f"{name}_conv"], [f"{name}_act"]),
                helper.make_node("Transpose", [f"{name}_act"], [f"{name}_t"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"{name}_t", f"{name}_shape"], [name]),
            ]  # fmt: skip
            outputs.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, [(640 // stride) ** 2 * 2, per_anchor])
            )
    graph = helper.make_graph(
        nodes, "tiny_scrfd", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 640, 640])],
        outputs, inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_scrfd_detector_from_a_local_onnx_model(tmp_path, astronaut):
    settings = FaceSettings(detector="scrfd", scrfd_model=str(tiny_scrfd(tmp_path / "scrfd_tiny.onnx")))
    models = face_models(settings)
    (found,) = find_faces(np.ascontiguousarray(astronaut), models, settings)
    assert found.detector == "scrfd" and found.det_score > 0.9
    d = describe(np.ascontiguousarray(astronaut), found, settings)
    assert d.fields["quality_ok"] and d.fields["blendshapes"]["mouthSmileLeft"] > 0.5
    with pytest.raises(ModelError, match=r"faces.scrfd_model: .*not a valid insightface SCRFD"):
        from tests.test_identities import tiny_arcface

        face_models(FaceSettings(detector="scrfd", scrfd_model=str(tiny_arcface(tmp_path / "rec.onnx"))))
