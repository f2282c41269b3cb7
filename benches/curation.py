"""Curation throughput against the floor set by its models, measured in the same run on the same images.

Floor: the models' own inference on the already decoded images, exactly as the stage calls them
(dlib HOG detection, MediaPipe landmarking of each detected face, the dlib 128-d descriptor of each
aligned crop), summed, in one process. The stage: `faces` + `face_embeddings` + `identities` over a
freshly ingested batch (decoding, alignment, quality, crop files, Parquet staging included), with
one worker and with one per core. Prints one JSON line and writes it to
benches/results/curation[-quick].json. Targets: stage <= 1.3x the floor with one worker; >= 1.8x
faster with two workers than with one.

Images: the astronaut in 24 guises (flips, crops, rotations, scales) plus, at test time only,
insightface's sample group photo (six faces; not committed).

Large photos: 12 and 24 MP camera-sized JPEGs (a textured scene, scikit-image's coffee tiled) with
either two small faces (90 px: the first pass, on a copy shrunk to 1024 px, cannot see them) or one
portrait face (400 px). Per image, decoding + `find_faces` with the second (Haar) pass against the
first pass alone: the ratio, and the faces each found. Target: <= 2x per image.

    python benches/curation.py [--quick] [--images N] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benches.common import report  # noqa: E402
from curation import align  # noqa: E402
from curation.batches import register_new_batch  # noqa: E402
from curation.curate import curate_batch  # noqa: E402
from curation.embeddings import EmbeddingSettings, embed_batch, embedder  # noqa: E402
from curation.faces import FaceSettings, _detect_boxes, _landmark_box, face_models  # noqa: E402
from curation.identities import assign_identities  # noqa: E402
from curation.imageio import load_rgb  # noqa: E402
from curation.ingest import ingest_batch  # noqa: E402
from storage.layout import Layout  # noqa: E402

TARGET_FLOOR_RATIO = 1.3
TARGET_SPEEDUP = 1.8
TARGET_SECOND_PASS = 2.0


def write_images(folder: Path, n: int) -> None:
    """`n` pictures with faces: astronaut variants, and the group photo every 8th image."""
    import insightface.data
    from skimage import data

    folder.mkdir(parents=True)
    astro = Image.fromarray(data.astronaut())
    group = Path(insightface.data.__file__).parent / "images" / "t1.jpg"
    rng = np.random.default_rng(0)
    for i in range(n):
        if i % 8 == 7:
            img = Image.open(group).convert("RGB")
        else:
            img = astro.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else astro
            img = img.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BICUBIC)
            scale = float(rng.uniform(0.8, 1.6))
            img = img.resize((int(512 * scale), int(512 * scale)), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-3, 4, (img.height, img.width, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"img_{i:04d}.jpg", quality=92)


def model_floor(rgbs: list[np.ndarray], settings: FaceSettings) -> tuple[float, int]:
    """Seconds of pure model inference over the decoded images, and the number of faces."""
    models, emb = face_models(settings), embedder(EmbeddingSettings())
    total, n_faces = 0.0, 0
    for rgb in rgbs:
        t0 = time.perf_counter()
        boxes = _detect_boxes(rgb, models, settings)
        total += time.perf_counter() - t0
        for box, _ in boxes:
            t0 = time.perf_counter()
            hit = _landmark_box(rgb, box, models, settings.landmark_margin)
            total += time.perf_counter() - t0
            if hit is None:
                continue
            points = align.five_points(hit[0])
            m = align.alignment_matrix(points, settings.crop_size)
            crop, _ = align.warp(rgb, m, settings.crop_size)  # input preparation: not timed
            t0 = time.perf_counter()
            emb.embed(crop, align.apply(m, points))
            total += time.perf_counter() - t0
            n_faces += 1
    return total, n_faces


def stage(tmp: Path, workers: int) -> tuple[float, int]:
    """Seconds for faces + face_embeddings + identities on a freshly ingested batch."""
    work = tmp / f"work{workers}"
    shutil.rmtree(work, ignore_errors=True)
    layout = Layout.at(work)
    batch = register_new_batch(layout, tmp / "input").batch
    ingest_batch(layout, batch)
    t0 = time.perf_counter()
    curate_batch(layout, batch, workers=workers)
    info = embed_batch(layout, batch, EmbeddingSettings(workers=workers))
    assign_identities(layout)
    return time.perf_counter() - t0, info["faces"]


def camera_photo(path: Path, width: int, height: int, face_px: int, spots: list[tuple[int, int]]) -> None:
    """A JPEG of a textured scene with astronauts whose face is `face_px` wide at `spots`."""
    import cv2
    from skimage import data

    scene = cv2.resize(np.tile(data.coffee(), (4, 4, 1)), (width, height))
    side = int(face_px / 0.19)  # the astronaut's face is ~19% of her picture's width
    person = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    for x, y in spots:
        scene[y : y + side, x : x + side] = person
    Image.fromarray(scene).save(path, quality=92)


def large_photos(tmp: Path, repeat: int) -> dict:
    """Per photo kind: seconds per image (decode + find faces) with and without the second pass."""
    from dataclasses import replace

    from curation.faces import find_faces

    base = FaceSettings()
    models = face_models(base)
    out = {}
    for mp, (w, h) in (("12MP", (4000, 3000)), ("24MP", (6000, 4000))):
        for kind, face_px, spots in (("small_faces", 90, [(900, 800), (w // 2, h // 2)]),
                                     ("portrait", 400, [(w // 3, 300)])):  # fmt: skip
            path = tmp / f"{mp}_{kind}.jpg"
            camera_photo(path, w, h, face_px, spots)
            times, found = {}, {}
            for name, second in (("first_pass", False), ("both_passes", True)):
                settings = replace(base, second_pass=second)
                runs = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    faces = find_faces(load_rgb(path), models, settings)
                    runs.append(time.perf_counter() - t0)
                times[name], found[name] = min(runs), len(faces)
            out[f"{mp}_{kind}"] = {"faces_expected": len(spots), "faces_found_first_pass": found["first_pass"],
                                   "faces_found_both_passes": found["both_passes"],
                                   "s_per_image_first_pass": round(times["first_pass"], 3),
                                   "s_per_image_both_passes": round(times["both_passes"], 3),
                                   "ratio": round(times["both_passes"] / times["first_pass"], 2)}  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few images: a smoke run")
    ap.add_argument("--images", type=int)
    ap.add_argument("--repeat", type=int)
    args = ap.parse_args()
    n = args.images or (16 if args.quick else 120)
    repeat = args.repeat or (1 if args.quick else 3)
    cores = os.cpu_count() or 1
    settings = FaceSettings()

    tmp = Path(tempfile.mkdtemp(prefix="ffe-bench-curation-"))
    try:
        large = large_photos(tmp, repeat)
        write_images(tmp / "input", n)
        rgbs = [load_rgb(p) for p in sorted((tmp / "input").iterdir())]
        rounds = []
        for _ in range(repeat):  # paired rounds: the machine's speed drifts
            t_floor, n_faces = model_floor(rgbs, settings)
            t_one, n_embedded = stage(tmp, 1)
            t_many, _ = stage(tmp, cores)
            rounds.append((t_floor, t_one, t_many))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    t_floor, t_one, t_many = (min(r[i] for r in rounds) for i in range(3))
    ratio = statistics.median(o / f for f, o, _ in rounds)
    speedup = statistics.median(o / m for _, o, m in rounds)
    result = {
        "benchmark": "curation",
        "quick": args.quick,
        "images": n,
        "faces": n_faces,
        "faces_embedded": n_embedded,
        "cores": cores,
        "rounds": repeat,
        "floor_faces_per_s": round(n_faces / t_floor, 2),
        "stage_1worker_faces_per_s": round(n_faces / t_one, 2),
        f"stage_{cores}workers_faces_per_s": round(n_faces / t_many, 2),
        "faces_per_s_per_core": round(n_faces / t_many / cores, 2),
        "stage_over_floor_1worker": round(ratio, 3),
        f"speedup_1_to_{cores}_workers": round(speedup, 3),
        "round_seconds": [[round(t, 3) for t in r] for r in rounds],
        "target_stage_over_floor": TARGET_FLOOR_RATIO,
        "target_speedup": TARGET_SPEEDUP,
        "large_photos": large,
        "target_second_pass_ratio": TARGET_SECOND_PASS,
        "meets_targets": ratio <= TARGET_FLOOR_RATIO and (cores < 2 or speedup >= TARGET_SPEEDUP)
        and all(v["ratio"] <= TARGET_SECOND_PASS for v in large.values()),
    }
    report("curation", args.quick, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
