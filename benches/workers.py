"""`ffe build --workers 2` against `--workers 1` on the same two batches: the speed-up.

Two batches of the synthetic world (`write_world_input`, 5 faces per person, 128 px pre-cropped
PNGs; the second batch registered after the first, as two drops into an input folder), each pair
built through `--select +ffe_shards` on a fresh work folder with one worker, then with two. The
batch phase (ingest, faces, embeddings, pre-labels) is where workers act; the rest runs once
across batches. Figures: wall time of each build and of its batch runs (first start to last end,
from Dagster's run records), and the speed-ups (workers 1 / workers 2), at a
small and a larger batch size: with small batches a run's fixed cost (Dagster's run start, model
loading) dominates and two runs overlap it; with large ones each run's own item workers already
use every core, so the speed-up is bounded by the cores the machine has (`cores` in the JSON).

    python benches/workers.py [--quick] [--faces 20,200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benches.common import report  # noqa: E402

FFE = str(Path(sys.executable).parent / "ffe")


def two_batches(work: Path, inp: Path, faces: int) -> list[str]:
    from curation.batches import register_new_batch
    from pixelsmile.synthetic import write_world_input
    from storage.layout import Layout

    batches = []
    for first in (0, faces // 5):
        write_world_input(inp, people=faces // 5, faces_per_person=5, first_person=first)
        batches.append(register_new_batch(Layout.at(work), inp, pre_cropped=True).batch)
    return batches


def batch_phase_seconds(work: Path) -> float:
    """From the first batch run's start to the last one's end, per Dagster's run records."""
    import dagster as dg

    from pipelines.instance import open_instance
    from storage.layout import Layout

    with open_instance(Layout.at(work)) as instance:
        records = instance.get_run_records(dg.RunsFilter(job_name="batch_job"))
        return max(r.end_time for r in records) - min(r.start_time for r in records)


def build_seconds(root: Path, faces: int, workers: int) -> tuple[float, float]:
    inp, work = root / f"input-{faces}-{workers}", root / f"work-{faces}-{workers}"
    two_batches(work, inp, faces)
    start = time.perf_counter()
    argv = [FFE, "build", "--workdir", str(work), "--input", str(inp), "--pre-cropped", "--select", "+ffe_shards",
            "--workers", str(workers)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"ffe build --workers {workers} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, batch_phase_seconds(work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small size: a smoke run")
    ap.add_argument("--faces", default="20,200", help="faces per batch, comma-separated")
    args = ap.parse_args()
    sizes = [20] if args.quick else [int(s) for s in args.faces.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ffe-workers-") as tmp:
        for faces in sizes:
            one, one_runs = build_seconds(Path(tmp), faces, 1)
            two, two_runs = build_seconds(Path(tmp), faces, 2)
            rows.append({"faces_per_batch": faces, "batches": 2, "workers_1_s": round(one, 2),
                         "workers_2_s": round(two, 2), "speed_up": round(one / two, 3),
                         "batch_runs_workers_1_s": round(one_runs, 2), "batch_runs_workers_2_s": round(two_runs, 2),
                         "batch_runs_speed_up": round(one_runs / two_runs, 3)})  # fmt: skip
            print(f"workers: {rows[-1]}", file=sys.stderr, flush=True)
    report("workers", args.quick, {"bench": "workers", "cores": os.cpu_count(), "builds": rows})


if __name__ == "__main__":
    main()
