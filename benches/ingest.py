"""Ingest throughput against a baseline measured in the same run on the same files.

Baseline: in one process, read each file, sha256 it and decode it fully with PIL: the least any
validating ingest must do. Measured against it:
  - `ingest_batch` with one worker (the same work plus storing originals, staging and tables),
  - `ingest_batch` with one worker per core (the process pool),
  - `ffe build --select key:raw_images` end to end on a fresh work folder (batch registration,
    creating the Dagster instance, the run, the catalog), one worker per core.
The machine's speed drifts between seconds, so each round times the baseline and both ingests back
to back and the reported ratios are medians over rounds of those paired ratios; throughputs are the
best round's. The page cache is warm for all. Prints one JSON line and writes it to
benches/results/ingest[-quick].json.

    python benches/ingest.py [--quick] [--files N] [--size WxH] [--repeat R]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benches.common import report  # noqa: E402
from curation.batches import register_new_batch  # noqa: E402
from curation.ingest import IngestSettings, ingest_batch  # noqa: E402
from curation.sample import write_variants  # noqa: E402
from storage.layout import Layout  # noqa: E402

TARGET_RATIO = 0.8


def baseline(paths: list[Path]) -> None:
    for p in paths:
        data = p.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as img:
            img.load()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few small files: a smoke run (seconds)")
    ap.add_argument("--files", type=int)
    ap.add_argument("--size", default=None, help="WxH of the generated JPEGs")
    ap.add_argument("--repeat", type=int, help="rounds (default 5; 2 with --quick)")
    args = ap.parse_args()
    n = args.files or (120 if args.quick else 1500)
    w, h = map(int, (args.size or ("512x384" if args.quick else "1024x768")).split("x"))
    repeat = args.repeat or (2 if args.quick else 5)
    cores = os.cpu_count() or 1

    tmp = Path(tempfile.mkdtemp(prefix="ffe-bench-"))
    try:
        paths = write_variants(tmp / "input", n, size=(w, h))
        total_mb = sum(p.stat().st_size for p in paths) / 1e6
        baseline(paths)  # warm the page cache for everyone

        def ingest(workers: int) -> float:
            """Seconds for `ingest_batch` alone (registration and clean-up untimed)."""
            work = tmp / "work"
            batch = register_new_batch(Layout.at(work), tmp / "input").batch
            seconds = timed(lambda: ingest_batch(Layout.at(work), batch, IngestSettings(workers=workers)))
            shutil.rmtree(work)
            return seconds

        def build_end_to_end() -> None:
            from pipelines.build import build

            cfg = {"raw_images": {"workers": cores}}
            # Ingest only: the whole graph would time face detection too (2 images/s, not 300).
            build(Layout.at(tmp / "work"), tmp / "input", selection="key:raw_images", run_config=cfg,
                  echo=lambda _: None)  # fmt: skip

        import logging

        logging.getLogger("dagster").setLevel(logging.WARNING)
        os.environ.setdefault("TQDM_DISABLE", "1")

        rounds = []
        for _ in range(repeat):
            rounds.append((timed(lambda: baseline(paths)), ingest(1), ingest(cores)))
        t_build = timed(build_end_to_end)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    t_base, t_one, t_pool = (min(r[i] for r in rounds) for i in range(3))
    ratio_one = statistics.median(b / o for b, o, _ in rounds)
    ratio_pool = statistics.median(b / p for b, _, p in rounds)
    ips = lambda t: round(n / t, 1)  # noqa: E731
    result = {
        "benchmark": "ingest",
        "quick": args.quick,
        "files": n,
        "image": f"JPEG {w}x{h}",
        "total_mb": round(total_mb, 1),
        "cores": cores,
        "rounds": repeat,
        "baseline_images_per_s": ips(t_base),
        "ingest_1proc_images_per_s": ips(t_one),
        "ratio_1proc": round(ratio_one, 3),
        f"ingest_{cores}proc_images_per_s": ips(t_pool),
        f"ratio_{cores}proc": round(ratio_pool, 3),
        "scaling_over_1proc": round(statistics.median(o / p for _, o, p in rounds), 3),
        "per_core_images_per_s": round(n / t_pool / cores, 1),
        "ffe_build_images_per_s": ips(t_build),
        "ratio_ffe_build": round(t_base / t_build, 3),
        "round_seconds": [[round(t, 3) for t in r] for r in rounds],
        "target_ratio_1proc": TARGET_RATIO,
        "meets_target": ratio_one >= TARGET_RATIO,
    }
    report("ingest", args.quick, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
