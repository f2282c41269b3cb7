"""Quality measures of an aligned face crop and the verdict against configured thresholds."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class QualityThresholds:
    min_face_px: float = 64.0  # sqrt of the face box area in source pixels
    min_sharpness: float = 25.0  # variance of the Laplacian on the crop at 128 px
    min_brightness: float = 40.0  # mean luminance of the crop's centre, 0-255
    max_brightness: float = 220.0
    max_abs_yaw: float = 50.0  # degrees
    max_abs_pitch: float = 40.0
    max_abs_roll: float = 90.0  # the crop is de-rotated: a sideways face is fine, an upside-down one is not
    # Share of the face's own landmarks outside the photo: a face cut by the frame. A tight frame
    # (an aligned FFHQ/CelebA-style crop) is not rejected: the crop's margin is padded.
    max_out_of_frame: float = 0.05  # an ArcFace-aligned 112 px crop cuts ~2% (the chin)

    def validate(self) -> None:
        """ValueError naming each threshold outside what its measure can take."""
        problems = [f"faces.{k} must be >= 0" for k in ("min_face_px", "min_sharpness") if getattr(self, k) < 0]
        if not 0 <= self.min_brightness <= self.max_brightness <= 255:
            problems.append("faces.min_brightness and max_brightness must satisfy 0 <= min <= max <= 255")
        problems += [f"faces.{k} must be in [0, 180] degrees" for k in ("max_abs_yaw", "max_abs_pitch", "max_abs_roll")
                     if not 0 <= getattr(self, k) <= 180]  # fmt: skip
        if not 0 <= self.max_out_of_frame <= 1:
            problems.append("faces.max_out_of_frame is a share of landmarks, in [0, 1]")
        if problems:
            raise ValueError("; ".join(problems))


def sharpness(grey_crop: np.ndarray) -> float:
    """Variance of the Laplacian at a fixed 128 px, so that crops of any size compare: a face that
    was small in its source is upsampled into the crop and scores low, as it should."""
    small = cv2.resize(grey_crop, (128, 128), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(small, cv2.CV_64F).var())


def brightness(grey_crop: np.ndarray) -> float:
    h, w = grey_crop.shape
    return float(grey_crop[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean())


def phash(grey_crop: np.ndarray) -> int:
    """64-bit perceptual hash (DCT of a 32x32 version, low 8x8 frequencies against their median),
    as a signed int64. Re-encoding and resizing barely move it."""
    small = cv2.resize(grey_crop, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    value = int("".join("1" if b else "0" for b in bits), 2)
    return value - (1 << 64) if value >= 1 << 63 else value


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


def reject_reasons(
    t: QualityThresholds,
    *,
    face_px: float,
    sharp: float,
    bright: float,
    out_of_frame: float,  # share of the landmarks outside the photo
    yaw: float | None,
    pitch: float | None,
    roll: float | None,
) -> list[str]:
    reasons = []
    if face_px < t.min_face_px:
        reasons.append("small_face")
    if sharp < t.min_sharpness:
        reasons.append("blurry")
    if bright < t.min_brightness:
        reasons.append("too_dark")
    if bright > t.max_brightness:
        reasons.append("too_bright")
    if yaw is not None and (abs(yaw) > t.max_abs_yaw or abs(pitch) > t.max_abs_pitch or abs(roll) > t.max_abs_roll):
        reasons.append("pose")
    if out_of_frame > t.max_out_of_frame:
        reasons.append("out_of_frame")
    return reasons
