"""FFE-Bench's own cost: judged edits per second through `run_bench` (tasks, editor, judge, per-task
records, edits table, metrics with bootstrap intervals, plots, report) against the judge alone
reading the same images, in the same run. Target: at least 0.8x (our bookkeeping must be cheap).

The editor is the no-edit baseline (it returns its source), so both sides read the same images and
the difference is only the bench's own work. Measured with the synthetic judge and with the face
judge (MediaPipe + classifier + dlib), whose reads dominate a real run.

The whole loop on the tiny model: a labelled synthetic collection dropped into an input folder,
then `ffe build` (ingest, curation, labels, release, shards, training through Dagster Pipes and
`accelerate launch`, bench, leaderboard row), timed per step from Dagster's own step records; and
the training step against the same training called in process (the cost of running it out of
process: the launcher, a second Python, Pipes).

    python benches/bench.py [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from benches.common import report  # noqa: E402
from pixelsmile.bench.judges import FaceJudge, SyntheticJudge  # noqa: E402
from pixelsmile.bench.run import no_edit, run_bench  # noqa: E402
from pixelsmile.bench.tasks import BenchConfig, bench_tasks  # noqa: E402
from pixelsmile.synthetic import world_release  # noqa: E402

TARGET = 0.8


def judge_alone(release: Path, config: BenchConfig, judge) -> float:
    """Seconds for the judge to read what the bench reads: each source once, each edit once."""
    tasks = bench_tasks(release, config).to_pylist()
    start = time.perf_counter()
    for task in tasks:
        source = Image.open(release / task["image"]).convert("RGB")
        judge.read(source)
        for _ in task["alphas"]:
            judge.read(source.copy())
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    people = 12 if args.quick else 40
    config = BenchConfig(alphas=(0.0, 0.5, 1.0, 1.5), bootstrap=100 if args.quick else 1000)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ffe-bench-bench-") as tmp:
        from storage.layout import Layout
        from storage.releases.config import ReleaseConfig

        release = world_release(Layout.at(Path(tmp) / "w"), ReleaseConfig(val_fraction=0.0, bench_fraction=0.5),
                                shards=False, people=people, faces_per_person=3, size=128)  # fmt: skip
        for name, judge in (("synthetic", SyntheticJudge()), ("face", FaceJudge())):
            cfg = config if name == "synthetic" else BenchConfig(categories=("happy", "fear"), alphas=config.alphas,
                                                                 bootstrap=config.bootstrap)  # fmt: skip
            judge.read(Image.open(release / bench_tasks(release, cfg).to_pylist()[0]["image"]))  # warm-up
            alone = judge_alone(release, cfg, judge)
            out = Path(tmp) / f"run-{name}"
            start = time.perf_counter()
            result = run_bench(release, out, no_edit, judge, cfg, progress=False)
            ours = time.perf_counter() - start
            shutil.rmtree(out)
            results[name] = {"edits": result.edits, "judge_alone_s": round(alone, 3), "bench_s": round(ours, 3),
                             "edits_per_s": round(result.edits / ours, 1),
                             "ratio_vs_judge_alone": round(alone / ours, 3)}  # fmt: skip
    worst = min(r["ratio_vs_judge_alone"] for r in results.values())
    loop = whole_loop(12 if args.quick else 24)
    report("bench", args.quick, {"bench": "bench", "people": people, "judges": results, "target": TARGET,
                                 "meets_target": worst >= TARGET, "loop": loop})  # fmt: skip


def whole_loop(people: int) -> dict:
    """Seconds from an input folder to a leaderboard row on the tiny model, per Dagster step."""
    import os

    from pipelines.build import build
    from pipelines.instance import open_instance
    from pipelines.model import DEFAULT_RECIPE, training_config
    from pixelsmile.synthetic import write_world_input
    from pixelsmile.train import Trainer
    from storage.layout import Layout
    from storage.leaderboard import leaderboard

    os.environ.update(FFE_JUDGE="synthetic", FFE_TRAIN_LAUNCHER="accelerate")
    with tempfile.TemporaryDirectory(prefix="ffe-bench-loop-") as tmp:
        layout = Layout.at(Path(tmp) / "w")
        write_world_input(Path(tmp) / "in", people=people, faces_per_person=7)
        start = time.perf_counter()
        built = build(layout, Path(tmp) / "in", echo=lambda _: None, pre_cropped=True)
        loop = time.perf_counter() - start
        assert built.ok, built.failed
        (version,) = built.releases
        rows = [r for r in leaderboard(layout, version) if r["kind"] == "measured"]
        steps: dict[str, float] = {}
        with open_instance(layout) as instance:
            for run in instance.get_runs():
                for stat in instance.get_run_step_stats(run.run_id):
                    if stat.end_time and stat.start_time:
                        steps[stat.step_key] = steps.get(stat.step_key, 0.0) + stat.end_time - stat.start_time
        config = training_config(layout, version, DEFAULT_RECIPE)
        config.output_dir, config.resume = str(Path(tmp) / "direct"), ""
        start = time.perf_counter()
        Trainer(config).train(progress=False)
        direct = time.perf_counter() - start
    return {"people": people, "faces": people * 7, "loop_s": round(loop, 2),
            "steps_s": {k: round(v, 2) for k, v in sorted(steps.items(), key=lambda kv: -kv[1])},
            "leaderboard_rows": len(rows), "train_in_process_s": round(direct, 2),
            "train_ratio_in_process_vs_pipes": round(direct / steps["pixelsmile_lora"], 3)}  # fmt: skip


if __name__ == "__main__":
    main()
