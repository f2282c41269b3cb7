"""How each stage's cost grows with the number of faces: growth exponents, and the two stages that
grow with everything before them (identities, agreement) alone at 100,000 and 1,000,000.

1. The synthetic world (`write_world_input`, 5 faces per person, 128 px pre-cropped PNGs) at each
   size in `--sizes` through `ffe build --select +ffe_shards` on a fresh work folder: ingest,
   faces, embeddings, pre-labels, identities, affect scores, release plan, release, shards. Each
   stage's time is read from Dagster's step records of the build's runs; the build's peak RSS from
   the OS. A stage's growth exponent is the slope of log(time) against log(faces) between the two
   largest sizes (1.0: linear). Target: none above 1.15.
2. `assign_identities`' search on made-up vectors (`assign_vectors`: dlib-like people, 5 faces
   each, shuffled): 6,000 to 1,000,000 faces with the growth exponent between sizes; and its
   agreement with the exact search on every centre (60,000 faces: the index from 4,096 identities
   on). Target: 1M faces < 10 min on this 2-core machine.
3. Krippendorff's alpha (interval) on 1,000,000 units x 3 raters with missing ratings. Target < 10 s.

Writes benches/results/scale.json: `growth_exponents` ({stage: exponent}), `identities_1m_s`,
`agreement_1m_s`, and the per-size figures, each part with the time it was measured (`--parts`
measures some again and keeps the others).

    python benches/scale.py [--quick] [--sizes 2000,6000,20000] [--parts pipeline,identities,agreement]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benches.common import RESULTS, report  # noqa: E402

FFE = str(Path(sys.executable).parent / "ffe")
STAGES = ("raw_images", "faces", "face_embeddings", "prelabels", "identities", "affect_scores", "release_plan",
          "ffe_release", "ffe_shards")  # fmt: skip


def stage_times(work: Path) -> dict[str, float]:
    """Seconds per asset over every run of the work folder, from Dagster's step records."""
    import dagster as dg

    from pipelines.instance import open_instance
    from storage.layout import Layout

    out: dict[str, float] = {}
    with open_instance(Layout.at(work)) as instance:
        for record in instance.get_run_records():
            for step in instance.get_run_step_stats(record.dagster_run.run_id):
                if step.start_time and step.end_time:
                    out[step.step_key] = out.get(step.step_key, 0.0) + step.end_time - step.start_time
    del dg
    return {s: round(out.get(s, 0.0), 3) for s in STAGES}


def pipeline_at(faces: int, root: Path) -> dict:
    from pixelsmile.synthetic import write_world_input

    inp, work = root / f"input-{faces}", root / f"work-{faces}"
    write_world_input(inp, people=faces // 5, faces_per_person=5)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run([FFE, "build", "--workdir", str(work), "--input", str(inp), "--pre-cropped",
                           "--select", "+ffe_shards"], capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"ffe build failed at {faces} faces:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"faces": faces, "wall_s": round(wall, 2), "peak_rss_mb": round(max(peak, before) / 1024, 1),
            "stages_s": stage_times(work)}  # fmt: skip


def exponent(t1: float, t2: float, n1: int, n2: int) -> float | None:
    if t1 <= 0 or t2 <= 0:
        return None
    return round(math.log(t2 / t1) / math.log(n2 / n1), 3)


def made_up_faces(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """n faces of n / 5 made-up people (dlib-like: people ~0.8 apart, faces ~0.11 from their
    person), shuffled, float32."""
    rng = np.random.default_rng(seed)
    people = rng.normal(0, 0.05, (n // 5, 128)).astype(np.float32)
    faces = np.repeat(people, 5, axis=0) + rng.normal(0, 0.01, (n // 5 * 5, 128)).astype(np.float32)
    order = rng.permutation(len(faces))
    return [f"f{k}" for k in order], faces[order]


def identities_alone(n: int) -> dict:
    from curation.identities import assign_vectors

    face_ids, vectors = made_up_faces(n)
    start = time.perf_counter()
    ids = assign_vectors(face_ids, vectors, 0.5)
    seconds = time.perf_counter() - start
    return {"faces": n, "seconds": round(seconds, 2), "identities": len(set(ids)),
            "faces_per_s": round(n / seconds, 1)}  # fmt: skip


def identities_agreement(n: int) -> dict:
    """The product's search (the index past `EXACT_LIMIT` identities) against the exact search on
    every centre, on the same made-up faces."""
    from curation.identities import _Centres, assign_vectors

    exact_limit = _Centres.EXACT_LIMIT
    face_ids, vectors = made_up_faces(n, seed=1)
    exact = assign_vectors(face_ids, vectors, 0.5, exact_limit=10**9)
    indexed = assign_vectors(face_ids, vectors, 0.5)
    same = sum(a == b for a, b in zip(exact, indexed, strict=True))
    return {"faces": n, "exact_limit": exact_limit, "same_identity": same, "agreement": round(same / n, 6),
            "identities_exact": len(set(exact)), "identities_indexed": len(set(indexed))}  # fmt: skip


def agreement_alone(units: int) -> dict:
    from annotation.agreement import alpha_interval

    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, units)
    scores = np.clip(truth[:, None] + rng.normal(0, 0.1, (units, 3)), 0, 1)
    scores[rng.uniform(size=scores.shape) < 0.2] = np.nan  # a fifth not rated
    start = time.perf_counter()
    result = alpha_interval(scores)
    return {"units": units, "raters": 3, "ratings": int((~np.isnan(scores)).sum()),
            "seconds": round(time.perf_counter() - start, 3), "alpha": round(result.value, 4)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--sizes", default="2000,6000,20000", help="faces per pipeline run, comma-separated")
    ap.add_argument("--parts", default="pipeline,identities,agreement",
                    help="what to measure now; the other parts' figures are kept from the last JSON")  # fmt: skip
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    sizes = [200, 600] if args.quick else [int(s) for s in args.sizes.split(",")]
    id_sizes = [2_000, 6_000, 20_000] if args.quick else [6_000, 20_000, 60_000, 100_000, 1_000_000]
    path = RESULTS / f"scale{'-quick' if args.quick else ''}.json"
    last = json.loads(path.read_text()) if path.is_file() else {}
    out = {k: last[k] for k in ("pipeline", "growth_exponents", "growth_between", "pipeline_at", "identities",
                                "identities_growth", "identities_ann_agreement", "identities_at", "agreement",
                                "agreement_at") if k in last}  # fmt: skip
    now = datetime.now(UTC).isoformat(timespec="seconds")

    if "agreement" in parts:
        out["agreement"], out["agreement_at"] = agreement_alone(100_000 if args.quick else 1_000_000), now
        print(f"agreement: {out['agreement']}", file=sys.stderr, flush=True)
    if "identities" in parts:
        idents = []
        for n in id_sizes:
            idents.append(identities_alone(n))
            print(f"identities: {idents[-1]}", file=sys.stderr, flush=True)
        out["identities"] = idents
        out["identities_growth"] = {f"{a['faces']}-{b['faces']}": exponent(a["seconds"], b["seconds"], a["faces"],
                                                                          b["faces"])
                                    for a, b in itertools.pairwise(idents)}  # fmt: skip
        out["identities_ann_agreement"] = identities_agreement(10_000 if args.quick else 60_000)
        print(f"identities, index against exact: {out['identities_ann_agreement']}", file=sys.stderr, flush=True)
        out["identities_at"] = now
    if "pipeline" in parts:
        pipeline = []
        with tempfile.TemporaryDirectory(prefix="ffe-scale-") as tmp:
            for n in sizes:
                pipeline.append(pipeline_at(n, Path(tmp)))
                print(f"pipeline at {n} faces: {pipeline[-1]}", file=sys.stderr, flush=True)
        (a, b) = pipeline[-2], pipeline[-1]
        out["pipeline"], out["pipeline_at"] = pipeline, now
        out["growth_exponents"] = {s: exponent(a["stages_s"][s], b["stages_s"][s], a["faces"], b["faces"])
                                   for s in STAGES}  # fmt: skip
        out["growth_between"] = [a["faces"], b["faces"]]

    worst = max((g for g in out.get("growth_exponents", {}).values() if g is not None), default=None)
    ids_1m = next((r["seconds"] for r in out.get("identities", []) if r["faces"] == 1_000_000), None)
    alpha_1m = out["agreement"]["seconds"] if out.get("agreement", {}).get("units") == 1_000_000 else None
    report("scale", args.quick, {
        "bench": "scale",
        "cores": os.cpu_count(),
        **out,
        "growth_target": 1.15,
        "identities_1m_s": ids_1m,
        "identities_target_s": 600,
        "agreement_1m_s": alpha_1m,
        "agreement_target_s": 10,
        "meets_targets": bool(worst is not None and worst <= 1.15 and ids_1m is not None and ids_1m < 600
                              and alpha_1m is not None and alpha_1m < 10),
    })  # fmt: skip


if __name__ == "__main__":
    main()
