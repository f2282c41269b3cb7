"""FFHQ-style alignment: a similarity transform (rotation, uniform scale, shift) that puts the eyes
and mouth corners of a face at canonical positions of a square crop.

The canonical points are ArcFace's five-point template, scaled so that the eyes span a quarter of
the crop and sit at 47% of its height, as in FFHQ's framing (the whole head with some hair and
neck). As in FFHQ's own alignment, the face's axis comes from both the eye line and the
eye-to-mouth line (robust when one of them is noisy), and the scale from whichever of the two
distances is larger against the template (robust when the head turns and the eyes close up). The
eye midpoint lands exactly on its canonical spot; each eye within a few pixels of its own, unless
the face is turned or of unusual proportions.
"""

from __future__ import annotations

import cv2
import numpy as np

# (x, y) as fractions of the crop side: image-left eye, image-right eye, nose tip, image-left and
# image-right mouth corners.
CANONICAL_5 = np.array(
    [[0.3742, 0.4725], [0.6242, 0.4725], [0.5000, 0.6154], [0.3956, 0.7612], [0.6028, 0.7612]],
    dtype=np.float64,
)

# MediaPipe FaceMesh indices: eye corners (image-left eye: 33, 133; image-right eye: 362, 263),
# nose tip 1, mouth corners 61 (image left) and 291 (image right).
_EYE_L, _EYE_R, _NOSE, _MOUTH_L, _MOUTH_R = (33, 133), (362, 263), 1, 61, 291


def five_points(landmarks_xy: np.ndarray) -> np.ndarray:
    """The five alignment points (5x2, pixels) from 478 MediaPipe landmarks (478x2 or 478x3)."""
    p = landmarks_xy[:, :2]
    return np.array(
        [p[list(_EYE_L)].mean(0), p[list(_EYE_R)].mean(0), p[_NOSE], p[_MOUTH_L], p[_MOUTH_R]], dtype=np.float64
    )


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity matrix that best maps points `src` onto `dst` (Umeyama, no reflection)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / (s**2).sum(1).mean()
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts[:, :2] @ m[:, :2].T + m[:, 2]


def alignment_matrix(points5: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 similarity taking a face's five points to the canonical crop of side `size`."""
    canon = CANONICAL_5 * size
    eye_l, eye_r, _, mouth_l, mouth_r = points5
    eye_mid, mouth_mid = (eye_l + eye_r) / 2, (mouth_l + mouth_r) / 2
    e2e, e2m = eye_r - eye_l, mouth_mid - eye_mid
    # FFHQ: the face's x axis blends the eye line with the eye-to-mouth line turned a quarter.
    axis = e2e - np.array([-e2m[1], e2m[0]])  # FFHQ: x = e2e - flipud(e2m) * [-1, 1]
    angle = np.arctan2(axis[1], axis[0])
    canon_e2e = canon[1, 0] - canon[0, 0]
    canon_e2m = (canon[3, 1] + canon[4, 1]) / 2 - canon[0, 1]
    scale = 1.0 / max(np.hypot(*e2e) / canon_e2e, np.hypot(*e2m) / canon_e2m)
    c, s = np.cos(-angle) * scale, np.sin(-angle) * scale
    m = np.array([[c, -s, 0.0], [s, c, 0.0]])
    m[:, 2] = (canon[0] + canon[1]) / 2 - m[:, :2] @ eye_mid
    return m


def warp(rgb: np.ndarray, m: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """The aligned crop, and the share of its pixels that came from outside the image (those are
    filled by reflecting the border, which the quality check then judges)."""
    crop = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    small = 64  # the share outside is measured on a 64x64 version of the crop: cheap and enough
    m_small = m * (small / size)
    inside = cv2.warpAffine(
        np.ones(rgb.shape[:2], np.uint8), m_small, (small, small), flags=cv2.INTER_NEAREST, borderValue=0
    )
    return crop, 1.0 - float(inside.mean())
