"""Release shards: writing and loading throughput against plain `tarfile` in the same run.

Writing: `write_shards` (webdataset TarWriter with fixed metadata, sha256 on the fly, temp file +
fsync + rename, a record per shard) against `tarfile` writing the same members into the same
shards (no hashing, no fsync), one worker each, median of rounds. Target: at least 0.8x.

Loading: `TripletStream` over the train shards without decoding (read, check each sample whole and
each crop's sha256, group into samples, shuffle, form triplets) against reading the same shards
sequentially with `tarfile`, grouping members into samples and hashing each crop the same way:
identity samples per second, in one process. Target: at least 0.8x, verified against hashed and
unverified (`verify=False`) against plain `tarfile`; the verified loader against plain `tarfile` is
reported too (the price of the hashes: sha256 runs at about 1.3 GB/s per core with SHA-NI, so
against a read from the page cache it cannot be hidden in one process). Decoding, the hashes' share
of the decoded stream's time is reported (`decoded_hash_cost`).

Then the decoded stream (512 px tensors, DataLoader with a worker per core, batch 4) against what
one training step consumes: 4 triplets per step at the step time given (`--step-s`, default 1 s: a
Qwen-Image-Edit LoRA step at 512 px, batch 4, is slower than that on one H100). Target: 10x.

Crops are 512 px PNGs of the astronaut's face, tinted per face (sized and decoded like real crops).

    python benches/shards.py [--quick] [--identities N] [--rounds R] [--step-s S]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from benches.common import report  # noqa: E402
from storage.layout import Layout  # noqa: E402
from storage.loader import TripletStream  # noqa: E402
from storage.releases.build import build_release, read_manifest, write_manifest  # noqa: E402
from storage.releases.config import ReleaseConfig  # noqa: E402
from storage.releases.plan import plan_release, release_dir, write_plan  # noqa: E402
from storage.releases.sample import write_sample_tables  # noqa: E402
from storage.releases.shards import STAGE, plan_shards, write_shards  # noqa: E402
from storage.schemas import RELEASE_FACES  # noqa: E402

TARGET_WRITE, TARGET_READ, TARGET_HEADROOM = 0.8, 0.8, 10.0
BATCH = 4


def _reset_shards(layout: Layout, version: str, manifest: dict) -> None:
    shutil.rmtree(release_dir(layout, version) / "shards", ignore_errors=True)
    shutil.rmtree(layout.staging_dir(STAGE, version), ignore_errors=True)
    write_manifest(layout, version, {**manifest, "shards": None, "complete": False})


def time_ours(layout: Layout, version: str, manifest: dict, workers: int) -> float:
    _reset_shards(layout, version, manifest)
    t0 = time.perf_counter()
    write_shards(layout, version, workers=workers)
    return time.perf_counter() - t0


def time_tarfile(folder: Path, specs, out: Path) -> float:
    """Plain tarfile: the same members, in the same shards, from the same image files."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    t0 = time.perf_counter()
    for spec in specs:
        with tarfile.open(out / spec.name, "w") as tar:
            for s in spec.samples:
                members = [("json", s.json)] + [(f"{f}.png", (folder / "images" / f"{f}.png").read_bytes())
                                                for f in s.face_ids]  # fmt: skip
                for ext, data in members:
                    info = tarfile.TarInfo(f"{s.key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return time.perf_counter() - t0


def read_tarfile(paths: list[str], hashes: bool = False) -> int:
    """Samples read; with `hashes`, each png member's sha256 computed as well (what the loader checks)."""
    samples = 0
    for p in paths:
        with tarfile.open(p, "r|") as tar:
            current, members = None, {}
            for m in tar:
                key = m.name.split(".", 1)[0]
                if key != current:
                    samples += current is not None
                    current, members = key, {}
                members[m.name] = data = tar.extractfile(m).read()
                if hashes and m.name.endswith(".png"):
                    hashlib.sha256(data).hexdigest()
            samples += current is not None
    return samples


def time_loader(ds: TripletStream) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(1 for _ in ds)
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small run (CI smoke)")
    ap.add_argument("--identities", type=int, default=None)
    ap.add_argument("--faces", type=int, default=6, help="faces per identity")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--step-s", type=float, default=1.0, help="seconds per training step (batch 4)")
    args = ap.parse_args()
    identities = args.identities or (24 if args.quick else 160)
    rounds = args.rounds or (2 if args.quick else 5)
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="ffe-bench-shards-") as tmp:
        layout = Layout.at(Path(tmp) / "work")
        write_sample_tables(layout, identities=identities, faces_per_identity=args.faces, crop_px=512, photo=True)
        config = ReleaseConfig(shard_target_bytes=64_000_000, val_fraction=0.0, bench_fraction=0.0)
        plan = plan_release(layout, config)
        write_plan(layout, plan)
        manifest = build_release(layout, plan.version)
        folder = release_dir(layout, plan.version)
        specs = plan_shards(pq.read_table(folder / "splits.parquet", schema=RELEASE_FACES), config.shard_target_bytes)
        total = sum(s.bytes for s in specs)

        ours, base = [], []
        for _ in range(rounds):  # alternate, so both see the same page-cache state
            base.append(time_tarfile(folder, specs, Path(tmp) / "plain"))
            ours.append(time_ours(layout, plan.version, manifest, workers=1))
        parallel = time_ours(layout, plan.version, manifest, workers=cores)
        ours_s, base_s = statistics.median(ours), statistics.median(base)

        shards = [str(p) for p in sorted((folder / "shards").glob("train-*.tar"))]
        samples = len(pq.read_table(folder / "shards" / "index.parquet"))
        pairs = read_manifest(layout, plan.version)["pairs"]["configured"]
        raw: dict[str, list[float]] = {k: [] for k in ("ours", "unverified", "tarfile", "tarfile_sha256")}
        for _ in range(rounds):
            for hashes, key in ((False, "tarfile"), (True, "tarfile_sha256")):
                t0 = time.perf_counter()
                assert read_tarfile(shards, hashes) == samples
                raw[key].append(time.perf_counter() - t0)
            raw["ours"].append(time_loader(TripletStream(shards, pairs, decode=False))[0])
            raw["unverified"].append(time_loader(TripletStream(shards, pairs, decode=False, verify=False))[0])
        med = {k: statistics.median(v) for k, v in raw.items()}
        decoded_s = {}
        for verify in (True, False):
            ds = TripletStream(shards, pairs, resolution=512, verify=verify)
            loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=cores)
            t0 = time.perf_counter()
            triplets = sum(len(b["identity_id"]) for b in loader)
            decoded_s[verify] = time.perf_counter() - t0

    write_ratio = base_s / ours_s
    read_ratio = med["tarfile_sha256"] / med["ours"]
    decoded_tps = triplets / decoded_s[True]
    consumed_tps = BATCH / args.step_s
    report(
        "shards",
        args.quick,
        {
            "bench": "shards",
            "identities": identities,
            "faces": identities * args.faces,
            "shard_bytes_total": total,
            "shards": len(specs),
            "rounds": rounds,
            "cores": cores,
            "write_mb_s_ours_1_worker": round(total / 1e6 / ours_s, 1),
            "write_mb_s_tarfile": round(total / 1e6 / base_s, 1),
            "write_mb_s_ours_all_cores": round(total / 1e6 / parallel, 1),
            "write_ratio_vs_tarfile": round(write_ratio, 3),
            "write_target": TARGET_WRITE,
            "read_samples_s_ours": round(samples / med["ours"], 1),
            "read_samples_s_ours_unverified": round(samples / med["unverified"], 1),
            "read_samples_s_tarfile": round(samples / med["tarfile"], 1),
            "read_samples_s_tarfile_sha256": round(samples / med["tarfile_sha256"], 1),
            "read_ratio_vs_tarfile_sha256": round(read_ratio, 3),
            "read_ratio_vs_tarfile": round(med["tarfile"] / med["ours"], 3),
            "read_ratio_unverified_vs_tarfile": round(med["tarfile"] / med["unverified"], 3),
            "read_target": TARGET_READ,
            "decoded_hash_cost": round(decoded_s[True] / decoded_s[False] - 1, 3),
            "decoded_triplets_s_512px": round(decoded_tps, 1),
            "decoded_triplets_s_per_core": round(decoded_tps / cores, 1),
            "training_consumes_triplets_s": consumed_tps,
            "assumed_step_s": args.step_s,
            "headroom_vs_training": round(decoded_tps / consumed_tps, 2),
            "headroom_target": TARGET_HEADROOM,
            "meets_targets": write_ratio >= TARGET_WRITE
            and read_ratio >= TARGET_READ
            and med["tarfile"] / med["unverified"] >= TARGET_READ
            and decoded_tps / consumed_tps >= TARGET_HEADROOM,
        },
    )


if __name__ == "__main__":
    main()
