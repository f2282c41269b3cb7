"""The synthetic world: procedurally drawn faces whose identity and 12 expression intensities are
known exactly, and an exact judge that reads them back from pixels.

Why: a random VAE's latents cannot be read back, and photos carry no ground truth. Here every claim
of the paper can be measured on a CPU in minutes: does intensity rise linearly with alpha, do paired
categories stop being confused, does identity hold.

A face is a head (identity: skin, hair and background colours, head width, hair height, nose
length) on which 14 expression features are drawn in reserved colours: mouth opening, width,
curve and asymmetry; brow height and slope; eye opening; gaze x and y; blush; nose wrinkle; a tear;
a sweat drop; head tilt. Features are linear in the 12 intensities, f = f0 + D^T s (`EFFECTS` is D),
so confusable categories can be made deliberately close (fear and surprised both raise the brows and
open eyes and mouth; fear stretches the mouth wider and lifts the inner brows). The judge segments
the reserved colours, measures the 14 features, and inverts the mixing by non-negative least
squares: scores back in [0, 1]^12, and the identity's parameters from the head's own colours.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from storage.releases.sample import LabelledFace, pair_scores, write_labelled_faces
from storage.schemas import CATEGORIES, CONFUSABLE_PAIRS

FEATURES = ("mouth_open", "mouth_width", "mouth_curve", "mouth_asym", "brow_height", "brow_slope", "eye_open",
            "gaze_x", "gaze_y", "blush", "wrinkle", "tear", "sweat", "tilt")  # fmt: skip

# What intensity 1 of each category does to each feature (unlisted: 0). Fear and surprised, angry
# and disgust, shy and anxious, sad and sleepy share most of their features on purpose.
EFFECTS: dict[str, dict[str, float]] = {
    "happy": {"mouth_curve": 1.0, "mouth_width": 0.4, "eye_open": -0.25},
    "sad": {"mouth_curve": -0.8, "brow_slope": 0.7, "tear": 1.0, "gaze_y": 0.4},
    "angry": {"brow_height": -0.7, "brow_slope": -1.0, "mouth_width": -0.4, "eye_open": -0.2},
    "fear": {"brow_height": 0.7, "brow_slope": 0.6, "eye_open": 0.7, "mouth_open": 0.45, "mouth_width": 0.5},
    "surprised": {"brow_height": 0.9, "eye_open": 0.8, "mouth_open": 0.9, "mouth_width": -0.3},
    "disgust": {"wrinkle": 1.0, "brow_height": -0.45, "brow_slope": -0.4, "mouth_curve": -0.35},
    "confused": {"tilt": 1.0, "gaze_x": 0.7, "gaze_y": -0.6, "mouth_asym": -0.4},
    "contempt": {"mouth_asym": 1.0, "mouth_curve": 0.2, "eye_open": -0.2},
    "confident": {"mouth_curve": 0.45, "brow_height": -0.25, "eye_open": -0.35, "mouth_width": 0.2},
    "shy": {"blush": 1.0, "gaze_y": 0.8, "gaze_x": 0.35, "mouth_curve": 0.2},
    "sleepy": {"eye_open": -0.9, "tilt": 0.45, "mouth_open": 0.25, "brow_height": -0.15},
    "anxious": {"sweat": 1.0, "brow_slope": 0.55, "mouth_width": -0.25, "gaze_x": -0.6},
}
D = np.array([[EFFECTS[c].get(f, 0.0) for f in FEATURES] for c in CATEGORIES])  # 12 x 14

# Reserved colours of the features (identity colours are drawn away from them).
COLOURS = {
    "mouth": (125, 15, 45),
    "eye": (250, 250, 250),
    "pupil": (15, 15, 15),
    "brow": (75, 25, 105),
    "blush": (255, 105, 170),
    "wrinkle": (150, 95, 0),
    "tear": (20, 80, 255),
    "sweat": (90, 235, 235),
}


@dataclass(frozen=True)
class Identity:
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    background: tuple[int, int, int]
    head_width: float  # half width of the head, share of the canvas
    hair_height: float  # how far the hair comes down the forehead, share of the canvas
    nose: float  # nose length, share of the canvas

    def vector(self) -> np.ndarray:
        """What identity similarity compares: the colours (0-1) and the head's width (over its range).
        Hair height and nose length make faces look different but are too few pixels to measure."""
        return np.array([*np.array(self.skin) / 255, *np.array(self.hair) / 255, *np.array(self.background) / 255,
                         (self.head_width - 0.25) / 0.12])  # fmt: skip


SKIN_TONES = ([236, 188, 150], [214, 160, 118], [190, 132, 92], [165, 112, 78])
HAIR_COLOURS = ([55, 40, 28], [196, 156, 70], [150, 150, 150], [168, 84, 36], [232, 222, 196])
BACKGROUNDS = ([60, 130, 70], [90, 140, 210], [40, 110, 120], [100, 110, 140])


def _jitter(rng: np.random.Generator, palette, spread: int) -> tuple[int, int, int]:
    base = np.array(palette[rng.integers(len(palette))])
    return tuple(int(v) for v in np.clip(base + rng.integers(-spread, spread + 1, 3), 0, 255))


def random_identity(rng: np.random.Generator) -> Identity:
    """Colours from palettes kept away from the reserved feature colours, so the judge can tell them apart."""
    colours = _jitter(rng, SKIN_TONES, 10), _jitter(rng, HAIR_COLOURS, 12), _jitter(rng, BACKGROUNDS, 12)
    return Identity(*colours, float(rng.uniform(0.22, 0.28)), float(rng.uniform(0.09, 0.15)),
                    float(rng.uniform(0.06, 0.10)))  # fmt: skip


def features_of(scores: np.ndarray) -> np.ndarray:
    """The 14 feature values of a 12-vector of intensities (0 = neutral for every feature)."""
    return np.asarray(scores, dtype=np.float64) @ D


def _rot(points, centre, angle):
    c, s = math.cos(angle), math.sin(angle)
    ox, oy = centre
    return [(ox + c * (x - ox) - s * (y - oy), oy + s * (x - ox) + c * (y - oy)) for x, y in points]


def render(identity: Identity, scores, size: int = 64, supersample: int = 4) -> Image.Image:
    """The face of `identity` showing `scores` (12 intensities in [0, 1], or more: extrapolation)."""
    f = dict(zip(FEATURES, features_of(np.asarray(scores, dtype=np.float64)), strict=True))
    n = size * supersample
    img = Image.new("RGB", (n, n), identity.background)
    draw = ImageDraw.Draw(img)
    angle = math.radians(12.0 * f["tilt"])

    def poly(points, colour):
        draw.polygon([(x * n, y * n) for x, y in _rot(points, (0.5, 0.54), angle)], fill=colour)

    def ellipse(x, y, rx, ry, colour, k=24):
        pts = [(x + rx * math.cos(2 * math.pi * i / k), y + ry * math.sin(2 * math.pi * i / k)) for i in range(k)]
        poly(pts, colour)

    w = identity.head_width
    ellipse(0.5, 0.54, w, 0.34, identity.skin, k=48)
    # Hair: the top of the head ellipse down to hair_height below its top.
    top = 0.54 - 0.34
    hair = [(0.5 + w * math.cos(t), 0.54 - 0.34 * math.sin(t)) for t in np.linspace(0, math.pi, 25)]
    cut = top + identity.hair_height + 0.06
    poly([(x, min(y, cut)) for x, y in hair], identity.hair)
    nose_dark = tuple(int(v * 0.8) for v in identity.skin)
    poly([(0.5, 0.50), (0.48, 0.50 + identity.nose), (0.52, 0.50 + identity.nose)], nose_dark)

    eye_y, eye_dx = 0.46, 0.10
    eye_h = max(0.028 * (1 + f["eye_open"]), 0.003)
    for side in (-1, 1):
        ex = 0.5 + side * eye_dx
        ellipse(ex, eye_y, 0.045, eye_h, COLOURS["eye"])
        pr = min(0.016, eye_h)
        ellipse(ex + 0.024 * f["gaze_x"], eye_y + min(0.012 * f["gaze_y"], eye_h - pr), pr, pr, COLOURS["pupil"], k=12)
        by = eye_y - 0.085 - 0.04 * f["brow_height"]
        inner, outer = 0.5 + side * 0.045, 0.5 + side * 0.145
        slope = 0.045 * f["brow_slope"]  # > 0: inner ends up (fear, sad); < 0: down (angry)
        poly([(outer, by - 0.016), (inner, by - slope - 0.016), (inner, by - slope + 0.016), (outer, by + 0.016)],
             COLOURS["brow"])  # fmt: skip
    if f["blush"] > 0.02:
        for side in (-1, 1):
            r = 0.055 * math.sqrt(f["blush"])
            ellipse(0.5 + side * 0.14, 0.58, r, r * 0.7, COLOURS["blush"])
    if f["wrinkle"] > 0.02:
        half = 0.05 * f["wrinkle"]
        poly([(0.5 - half, 0.485), (0.5 + half, 0.485), (0.5 + half, 0.497), (0.5 - half, 0.497)], COLOURS["wrinkle"])
    if f["tear"] > 0.02:
        r = 0.03 * math.sqrt(f["tear"])
        ellipse(0.5 - eye_dx, eye_y + 0.06 + r, r * 0.7, r, COLOURS["tear"])
    if f["sweat"] > 0.02:
        r = 0.035 * math.sqrt(f["sweat"])
        ellipse(0.62, 0.30, r * 0.7, r, COLOURS["sweat"])

    my = 0.70
    half_w = max(0.085 + 0.05 * f["mouth_width"], 0.02)
    open_h = 0.03 + 0.085 * max(f["mouth_open"], 0.0)
    lift = 0.06 * f["mouth_curve"]
    left_y, right_y = my - lift - 0.04 * f["mouth_asym"], my - lift
    upper = [(0.5 - half_w, left_y), (0.5, my - open_h / 2), (0.5 + half_w, right_y)]
    lower = [(0.5 + half_w, right_y), (0.5, my + open_h / 2), (0.5 - half_w, left_y)]

    def bezier(p0, p1, p2, k=12):
        ts = np.linspace(0, 1, k)
        return [tuple((1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t * t * np.array(p2)) for t in ts]

    # Control points twice as far as the wanted mid-points: the curve passes through them.
    def through(a, m, b):
        return bezier(a, (2 * m[0] - (a[0] + b[0]) / 2, 2 * m[1] - (a[1] + b[1]) / 2), b)

    poly(through(*upper) + through(*lower), COLOURS["mouth"])
    return img.resize((size, size), Image.Resampling.BOX)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --- the exact judge ------------------------------------------------------------------------------
#
# The judge measures simple statistics of each reserved colour's coverage (areas, centroids, extents,
# slopes), maps each to its feature by a linear fit calibrated once per image size on faces rendered
# with known features, and inverts the mixing by non-negative least squares.

EYE_Y, EYE_DX, CENTRE = 0.46, 0.10, (0.5, 0.54)
RAW = ("mouth_height", "mouth_half_width", "mouth_lift", "mouth_tilt", "brow_y", "brow_slope", "eye_area",
       "pupil_dx", "pupil_dy", "blush_area", "wrinkle_area", "tear_area", "sweat_area", "tilt_deg")  # fmt: skip


@dataclass(frozen=True)
class Judgement:
    scores: np.ndarray  # 12 intensities in [0, 1]
    features: np.ndarray  # the 14 features as measured
    identity: np.ndarray  # Identity.vector() as measured

    @property
    def dominant(self) -> str:
        return CATEGORIES[int(np.argmax(self.scores))]


def _coverage(arr: np.ndarray, colour, *unders, tolerance: float = 30.0) -> np.ndarray:
    """How much of each pixel is `colour` laid over one of `unders` (skin, hair ...): its position on
    the segment from the under colour that explains it best (the nearest segment) to `colour`, for
    pixels within `tolerance` of that segment."""
    c = np.asarray(colour, dtype=np.float64)
    best_t = np.zeros(arr.shape[:2])
    best_off = np.full(arr.shape[:2], np.inf)
    for under in unders:
        b = np.asarray(under, dtype=np.float64)
        seg = c - b
        t = np.clip(((arr - b) @ seg) / max(seg @ seg, 1e-9), 0.0, 1.0)
        off = np.sqrt((((b + t[..., None] * seg) - arr) ** 2).sum(-1))
        better = off < best_off
        best_t, best_off = np.where(better, t, best_t), np.where(better, off, best_off)
    return np.where(best_off < tolerance, best_t, 0.0)


def _tilt(arr: np.ndarray, background: np.ndarray) -> float:
    """Head tilt in degrees from the principal axis of everything that is not background."""
    head = np.sqrt(((arr - background) ** 2).sum(-1)) > 40
    ys, xs = np.nonzero(head)
    if len(xs) < 10:
        return 0.0
    evals, evecs = np.linalg.eigh(np.cov(np.stack([xs - xs.mean(), ys - ys.mean()])))
    vx, vy = evecs[:, np.argmax(evals)]  # the long (vertical) axis of the head
    if vy < 0:
        vx, vy = -vx, -vy
    return math.degrees(math.atan2(-vx, vy))


def _mean(w: np.ndarray, grid: np.ndarray, default: float = 0.0) -> float:
    total = w.sum()
    return float((w * grid).sum() / total) if total > 1e-6 else default


def measure_raw(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(the raw statistics RAW, the identity vector) of a face image."""
    rgb = img.convert("RGB")
    arr0 = np.asarray(rgb, dtype=np.float64)
    n = arr0.shape[0]
    background = np.median(np.concatenate([arr0[0], arr0[-1], arr0[:, 0], arr0[:, -1]]), axis=0)
    tilt_deg = _tilt(arr0, background)
    upright = rgb.rotate(tilt_deg, resample=Image.Resampling.BILINEAR, center=(CENTRE[0] * n, CENTRE[1] * n),
                         fillcolor=tuple(int(v) for v in background))  # fmt: skip
    arr = np.asarray(upright, dtype=np.float64)
    ys, xs = np.mgrid[0:n, 0:n]
    u, v = (xs + 0.5) / n, (ys + 0.5) / n

    inside = np.sqrt(((arr - background) ** 2).sum(-1)) > 40  # features are drawn on the head only

    def region(x0, x1, y0, y1):
        return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1) & inside

    def colour_at(x0, x1, y0, y1):
        """The median colour of the head there; where an edit left no head, of the area anyway."""
        pixels = arr[region(x0, x1, y0, y1)]
        if not len(pixels):
            pixels = arr[(u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)]
        return np.median(pixels, axis=0)

    skin, hair = colour_at(0.44, 0.56, 0.79, 0.84), colour_at(0.46, 0.54, 0.22, 0.25)
    raw = dict.fromkeys(RAW, 0.0)
    raw["tilt_deg"] = tilt_deg

    mouth = _coverage(arr, COLOURS["mouth"], skin) * region(0.30, 0.70, 0.61, 0.86)  # below the nose
    if mouth.sum() > 0.5:
        mx = _mean(mouth, u)
        raw["mouth_half_width"] = math.sqrt(max(_mean(mouth, (u - mx) ** 2), 0.0))
        centre = np.abs(u - 0.5) < 0.03
        raw["mouth_height"] = float(mouth[centre].sum()) / max(centre[0].sum(), 1) / n
        # The mouth's spine: the mean height of each column, fitted by y = a + b x + c x^2 (x from
        # the centre): c is the curve (a smile bends it up at the ends), b the asymmetry.
        cols = mouth.sum(0)
        keep = cols > 0.2
        if keep.sum() >= 3:
            x = u[0][keep] - 0.5
            y = (mouth * v).sum(0)[keep] / cols[keep]
            c, b, _ = np.polyfit(x, y, 2, w=np.sqrt(cols[keep]))
            raw["mouth_lift"], raw["mouth_tilt"] = -c, b

    areas, pupils, brows = [], [], []
    for side in (-1, 1):
        ex = 0.5 + side * EYE_DX
        box = region(ex - 0.07, ex + 0.07, EYE_Y - 0.06, EYE_Y + 0.06)
        white = _coverage(arr, COLOURS["eye"], skin) * box
        pupil = _coverage(arr, COLOURS["pupil"], skin, COLOURS["eye"]) * box
        areas.append((white.sum() + np.minimum(pupil, 1).sum()) / n / n)
        if pupil.sum() > 0.2:
            pupils.append((_mean(pupil, u) - ex, _mean(pupil, v) - EYE_Y))
        brow = _coverage(arr, COLOURS["brow"], skin, hair) * region(ex - 0.08, ex + 0.08, 0.25, EYE_Y - 0.005)
        if brow.sum() > 0.3:
            bx, by = _mean(brow, u), _mean(brow, v)
            slope = (brow * (u - bx) * (v - by)).sum() / max((brow * (u - bx) ** 2).sum(), 1e-9)
            brows.append((by, slope * side))  # > 0: the inner end is higher
    raw["eye_area"] = float(np.mean(areas))
    if pupils:
        raw["pupil_dx"], raw["pupil_dy"] = (float(np.mean([p[k] for p in pupils])) for k in (0, 1))
    if brows:
        raw["brow_y"], raw["brow_slope"] = (float(np.mean([b[k] for b in brows])) for k in (0, 1))
    else:
        raw["brow_y"] = EYE_Y - 0.085
    cheeks = region(0.29, 0.43, 0.53, 0.64) | region(0.57, 0.71, 0.53, 0.64)
    for name, box, unders in (
        ("blush", cheeks, (skin,)),
        ("wrinkle", region(0.40, 0.60, 0.47, 0.51), (skin,)),
        ("tear", region(0.34, 0.46, 0.47, 0.63), (skin,)),
        ("sweat", region(0.54, 0.70, 0.20, 0.355), (skin, hair)),
    ):
        raw[f"{name}_area"] = float(_coverage(arr, COLOURS[name], *unders)[box].sum()) / n / n  # fmt: skip

    row = np.abs(v[:, 0] - CENTRE[1]).argmin()
    head = np.sqrt(((arr[row] - background) ** 2).sum(-1))
    head_width = float(np.clip(head / 80.0, 0, 1).sum()) / n / 2
    identity = Identity(tuple(skin), tuple(hair), tuple(background), head_width, 0.12, 0.08).vector()
    return np.array([raw[k] for k in RAW]), identity


_PAIRS = np.triu_indices(len(RAW))


def _basis(raw: np.ndarray) -> np.ndarray:
    """What the features are read from: the raw statistics, their square roots (areas grow with the
    square of a size), their products two by two (a mouth's corners move as it opens and widens; a
    brow's slope shifts its centre) and 1. (..., 14) -> (..., 134)."""
    pairs = (raw[..., :, None] * raw[..., None, :])[..., _PAIRS[0], _PAIRS[1]]
    return np.concatenate([raw, np.sqrt(np.abs(raw)), pairs, np.ones(raw.shape[:-1] + (1,))], axis=-1)


@dataclass(frozen=True)
class Calibration:
    mean: np.ndarray  # of the basis over the calibration faces (standardised before the map)
    scale: np.ndarray
    weights: np.ndarray  # basis -> the 14 features
    spread: np.ndarray  # each feature's residual spread: how far the judge trusts it
    gains: np.ndarray  # one per category

    def features(self, raw: np.ndarray) -> np.ndarray:
        return ((_basis(raw) - self.mean) / self.scale) @ self.weights


@functools.lru_cache(maxsize=8)
def calibration(size: int, faces: int = 1600, seed: int = 12345) -> Calibration:
    """A ridge regression from the raw statistics' basis to the 14 features, fitted on faces of
    random people as the models see them at `size` (rendered at twice the size, resized bicubically;
    neutral ones, one category, and mixtures of two or three); the residual spread of each feature;
    and a gain per category. About 20 s at 64 px, so kept on disk (`_calibration_file`) per size
    and version of this module's code."""
    path = _calibration_file(size, faces, seed)
    try:
        with np.load(path) as saved:
            return Calibration(*(saved[f.name] for f in dataclasses.fields(Calibration)))
    except (OSError, KeyError, ValueError):  # none yet, or unreadable: made again
        pass
    cal = _fit_calibration(size, faces, seed)
    try:
        from storage.atomic import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, **dataclasses.asdict(cal))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError:  # a read-only home: fitted again next time
        pass
    return cal


def _calibration_file(size: int, faces: int, seed: int) -> Path:
    import hashlib
    import os

    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixelsmile-ffe"
    return cache / f"judge-{size}px-{faces}-{seed}-{code}.npz"


def _fit_calibration(size: int, faces: int, seed: int) -> Calibration:
    rng = np.random.default_rng(seed)
    raws, feats = [], []
    for i in range(faces):
        s = np.zeros(len(CATEGORIES))
        k = i % 4  # 0: neutral, 1: one category, 2-3: mixtures
        if k:
            s[rng.choice(len(CATEGORIES), size=k, replace=False)] = rng.uniform(0, 1, k)
        face = render(random_identity(rng), s, 2 * size).resize((size, size), Image.Resampling.BICUBIC)
        raws.append(measure_raw(face)[0])
        feats.append(features_of(s))
    raws, feats = np.array(raws), np.array(feats)
    basis = _basis(raws)
    mean, scale = basis.mean(0), basis.std(0) + 1e-9
    mean[-1], scale[-1] = 0.0, 1.0  # the constant stays 1
    x = (basis - mean) / scale
    weights = np.linalg.solve(x.T @ x + 1e-4 * faces * np.eye(x.shape[1]), x.T @ feats)
    fitted = x @ weights
    spread = np.maximum((fitted - feats).std(axis=0), 0.02)
    # The mixing inverted by weighted least squares reads some categories low (their features are
    # the noisiest): one gain per category, fitted on the faces that show that category alone.
    gains = np.ones(len(CATEGORIES))
    single = [i for i in range(faces) if i % 4 == 1]
    truth = np.array([np.linalg.lstsq(D.T, feats[i], rcond=None)[0] for i in single])
    read = np.array([_unmix(fitted[i], spread) for i in single])
    for k in range(len(CATEGORIES)):
        on = truth[:, k] > 0.05
        if on.sum() >= 3 and (read[on, k] ** 2).sum() > 0:
            gains[k] = float((read[on, k] * truth[on, k]).sum() / (read[on, k] ** 2).sum())
    return Calibration(mean, scale, weights, spread, gains)


# The judge's prior that a face shows few expressions at once: an L1 penalty on the intensities (in
# units of the weighted squared error). Without it, noise in small features is read as a little of
# every category that shares them (a slight frown as some confident); chosen on the perfect
# editor's accuracy at 64 px (0.968 without, 0.976 with).
SPARSITY = 10.0


def _unmix(features: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """min ||A s - b||^2 + SPARSITY * sum(s) over s >= 0, A = D^T and b = the features, each row
    weighted by 1 / spread. Since A has full column rank, this is NNLS on b shifted by
    (SPARSITY / 2) A (A^T A)^-1 1 (the linear term moved into the target)."""
    from scipy.optimize import nnls

    a, b = D.T / spread[:, None], np.nan_to_num(features) / spread
    shift = 0.5 * SPARSITY * a @ np.linalg.solve(a.T @ a, np.ones(a.shape[1]))
    return nnls(a, b - shift)[0]


# Larger faces are read at this size: the demo's models edit at 64 px, and their edits scaled up
# hold no more (one calibration serves every larger size).
MAX_MEASURE_SIZE = 64


def _measurable(img: Image.Image) -> Image.Image:
    if img.size[0] <= MAX_MEASURE_SIZE:
        return img
    return img.resize((MAX_MEASURE_SIZE, MAX_MEASURE_SIZE), Image.Resampling.BICUBIC)


def measure(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(the 14 features, the identity vector) read from a rendered (or edited) face."""
    img = _measurable(img)
    raw, identity = measure_raw(img)
    return calibration(img.size[0]).features(raw), identity


def judge(img: Image.Image) -> Judgement:
    """The 12 intensities behind a face: non-negative least squares of the measured features on the
    mixing matrix, each feature weighted by how precisely it is measured, clipped to [0, 1]."""
    features, identity = measure(img)
    cal = calibration(_measurable(img).size[0])
    return Judgement(np.clip(_unmix(features, cal.spread) * cal.gains, 0.0, 1.0), features, identity)


def identity_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """1 for the same person, falling linearly with the distance of their identity vectors (0 at 1)."""
    return float(max(0.0, 1.0 - np.linalg.norm(a - b)))


# --- a synthetic dataset in the release format ----------------------------------------------------


# The world's pairs: the confusable pairs, and confused with anxious (every category in one pair, so
# that every category is a triplet target somewhere).
WORLD_PAIRS = (*CONFUSABLE_PAIRS, ("confused", "anxious"))


def world_scores(rng: np.random.Generator, k: int, start: int = 0, endpoints: bool = False) -> np.ndarray:
    """Face k of a person (storage.releases.sample.pair_scores over the world's pairs): exactly
    neutral first, the partner category co-scoring lightly. With `endpoints`, every expression at
    full intensity alone: the discrete edits an off-the-shelf editor is taught (the world's base)."""
    if endpoints:
        return pair_scores(rng, k, WORLD_PAIRS, start=start, level=(1.0, 1.0), partner=(0.0, 0.0), background=0.0)
    return pair_scores(rng, k, WORLD_PAIRS, start=start, level=(0.2, 1.0), partner=(0.0, 0.3), background=0.0)


def write_world(layout, *, batch: str = "batch-synthetic0", people: int = 40, faces_per_person: int = 7,
                size: int = 64, seed: int = 0, endpoints: bool = False,
                caption_noise: float = 0.0) -> list[str]:  # fmt: skip
    """A batch of synthetic faces written as curation and annotation would write real ones (labels =
    the exact intensities): `ffe release build` then makes a release and shards of it. `endpoints`:
    see `world_scores`. `caption_noise`: the share of expressive faces labelled with their pair's
    other category (the face's two scores of the pair swapped), as loose captions name a fearful
    face surprised: what an editor trained on them confuses."""
    rng = np.random.default_rng(seed)
    faces = []
    for p in range(people):
        person = random_identity(rng)
        for k in range(faces_per_person):
            s = world_scores(rng, k, start=p, endpoints=endpoints)
            labels = dict(zip(CATEGORIES, map(float, s), strict=True))
            if k and caption_noise and rng.random() < caption_noise:
                a, b = WORLD_PAIRS[(p + (k - 1) // 2) % len(WORLD_PAIRS)]
                labels[a], labels[b] = labels[b], labels[a]
            faces.append(LabelledFace(p, png(render(person, s, size)), labels, f"synthetic://{batch}/{p}/{k}"))
    return write_labelled_faces(layout, batch, faces, model_version="synthetic-exact")


def write_world_input(folder, *, people: int = 40, faces_per_person: int = 7, size: int = 128, seed: int = 0,
                      first_person: int = 0) -> Path:  # fmt: skip
    """The synthetic world as a labelled collection arrives: `<folder>/world-<first_person>/` with one
    PNG per face (`p<person>/<k>.png`) and a `labels.csv` giving each face's person and exact
    intensities (curation/labels.py). Ingest it as a `pre_cropped` batch. Another call with other
    `first_person` adds new people beside. Returns the subfolder."""
    import csv

    out = Path(folder) / f"world-{first_person}"
    rng = np.random.default_rng([seed, first_person])
    rows = []
    for p in range(first_person, first_person + people):
        person = random_identity(rng)
        for k in range(faces_per_person):
            s = world_scores(rng, k, start=p)
            path = out / f"p{p:04d}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png(render(person, s, size)))
            rows.append([path.relative_to(out).as_posix(), f"synthetic-{seed}-{p}", *(f"{v:.4f}" for v in s)])
    with open(out / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "identity", *CATEGORIES], *rows])
    return out


def world_release(layout, config=None, *, shards: bool = True, **world) -> Path:
    """A synthetic world written into `layout` (unless it already holds one) and cut into a release
    as `ffe release build` would: planned, built and (with `shards`) sharded. `world` goes to
    `write_world`; `config` is a `ReleaseConfig`. Returns the release folder."""
    from storage.releases.build import build_release
    from storage.releases.config import ReleaseConfig
    from storage.releases.plan import plan_release, release_dir, write_plan
    from storage.releases.shards import write_shards

    if not layout.releases.is_dir():
        write_world(layout, **world)
    plan = plan_release(layout, config or ReleaseConfig(val_fraction=0.0, bench_fraction=0.0))
    write_plan(layout, plan)
    build_release(layout, plan.version)
    if shards:
        write_shards(layout, plan.version)
    return release_dir(layout, plan.version)
