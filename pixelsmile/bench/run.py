"""A bench run: every task's source edited at every alpha by an editor, each edit read by a judge,
FFE-Bench metrics with bootstrap intervals over the sources.

    <out>/tasks/<task_id>.json   one per finished task: its readings (resume skips these)
    <out>/edits.parquet          every edit: task, category, alpha, 12 scores, identity similarity
    <out>/metrics.json           written last: metrics, intervals, counts, what was unreadable

An editor is any callable `(source image, category, alphas) -> images`, one per alpha (`editors`
below: no edit, prompt only, PixelSmile). A judge is `pixelsmile.bench.judges.Judge`. An edit the
judge cannot read (no face found) is kept with its reason; when more than `max_unreadable` of the
edits are unreadable the run fails with that reason (a bad run never ranks).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pixelsmile import metrics
from pixelsmile.bench import plots
from pixelsmile.bench.judges import Judge
from pixelsmile.bench.report import write_report
from pixelsmile.bench.tasks import BenchConfig, bench_tasks
from storage.atomic import atomic_open, atomic_write_text

Editor = Callable[[Image.Image, str, Sequence[float]], Sequence[Image.Image]]

EDITS = pa.schema(
    [
        pa.field("task_id", pa.string(), nullable=False),
        pa.field("identity_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("alpha", pa.float64(), nullable=False),
        pa.field("scores", pa.list_(pa.float64())),  # null: unreadable
        pa.field("id_sim", pa.float64()),
        pa.field("reason", pa.string()),  # why the judge could not read the edit
    ]
)


class BenchError(RuntimeError):
    """The run cannot give a result (too many unreadable edits, a source that cannot be read)."""


@dataclass(frozen=True)
class BenchResult:
    metrics: dict[str, float]
    ci95: dict[str, list[float]]
    edits: int
    unreadable: int
    folder: Path
    tasks: int = 0


def _task_file(out: Path, task_id: str) -> Path:
    return out / "tasks" / f"{task_id}.json"


def run_task(task: dict, release: Path, editor: Editor, judge: Judge, strip: Path | None = None) -> list[dict]:
    """One task's edits, judged; with `strip`, the source and its edits saved there side by side."""
    try:
        source = Image.open(release / task["image"]).convert("RGB")
    except OSError as err:
        raise BenchError(f"task {task['task_id']}: source {task['image']} cannot be read: {err}") from None
    ref = judge.read(source)
    if ref.identity is None:
        raise BenchError(f"task {task['task_id']}: the judge cannot read the source {task['image']}: {ref.reason}")
    images = list(editor(source, task["category"], task["alphas"]))
    if len(images) != len(task["alphas"]):
        raise BenchError(
            f"task {task['task_id']}: the editor gave {len(images)} images for {len(task['alphas'])} alphas"
        )
    if strip is not None:  # the tiles of sweeps.png, full size
        plots.sweep_sheet(strip, [[source, *images]], tile=source.width)
    rows = []
    for alpha, image in zip(task["alphas"], images, strict=True):
        r = judge.read(image)
        # An edit counts only with both readings: its expression and its identity.
        readable = r.scores is not None and r.identity is not None
        rows.append({"task_id": task["task_id"], "identity_id": task["identity_id"], "category": task["category"],
                     "alpha": float(alpha), "scores": [float(v) for v in r.scores] if readable else None,
                     "id_sim": judge.similarity(r.identity, ref.identity) if readable else None,
                     "reason": None if readable else r.reason or "no identity embedding"})  # fmt: skip
    return rows


def run_bench(release: Path, out: Path, editor: Editor, judge: Judge, config: BenchConfig = BenchConfig(), *,
              max_unreadable: float = 0.05, progress: bool = True, about: dict | None = None,
              baseline: Path | None = None) -> BenchResult:  # fmt: skip
    """Run (or resume) the bench of `editor` on `release` into `out`. `about` names what is benched
    for the report (model, release, run_id); `baseline` is the bench folder of the same release's
    no-edit run with this judge and config, drawn beside this one in the report."""
    from storage.progress import progress_bar

    release, out = Path(release), Path(out)
    tasks = bench_tasks(release, config).to_pylist()
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    todo = [t for t in tasks if not _task_file(out, t["task_id"]).is_file()]
    shown = sorted({t["identity_id"] for t in tasks})[:SWEEP_SOURCES]
    (out / "sweeps").mkdir(exist_ok=True)
    # A judge that cannot read this editor's output fails the run as soon as the unreadable edits
    # pass the allowed share of all planned edits, not after every edit is made.
    planned = sum(len(t["alphas"]) for t in tasks)
    waiting = {t["task_id"] for t in todo}
    done = [t for t in tasks if t["task_id"] not in waiting]
    unreadable = [r for t in done for r in json.loads(_task_file(out, t["task_id"]).read_text()) if r["scores"] is None]
    _stop_if_unreadable(unreadable, planned, max_unreadable, len(done), len(tasks))
    desc = f"bench {(about or {}).get('model') or out.parent.name}"
    for task in progress_bar(todo, desc=desc, unit="task", disable=not progress, initial=len(done),
                             total=len(tasks)):  # fmt: skip
        strip = out / "sweeps" / f"{task['task_id']}.png" if task["identity_id"] in shown else None
        rows = run_task(task, release, editor, judge, strip)
        atomic_write_text(_task_file(out, task["task_id"]), json.dumps(rows), fsync=False)
        done.append(task)
        unreadable += [r for r in rows if r["scores"] is None]
        _stop_if_unreadable(unreadable, planned, max_unreadable, len(done), len(tasks))
    rows = [r for t in tasks for r in json.loads(_task_file(out, t["task_id"]).read_text())]
    with atomic_open(out / "edits.parquet") as f:
        pq.write_table(pa.Table.from_pylist(rows, schema=EDITS), f, compression="zstd")
    edits = [metrics.Edit(r["category"], r["alpha"], np.asarray(r["scores"]), r["id_sim"], r["identity_id"])
             for r in rows if r["scores"] is not None]  # fmt: skip
    summary = metrics.summary(edits)
    ci = metrics.bootstrap(edits, n=config.bootstrap, seed=config.seed)
    result = BenchResult(summary, ci, len(rows), len(unreadable), out, len(tasks))
    base = _baseline(baseline, config)
    about = {"model": "an unnamed editor", "release": release.name, "run_id": out.parent.name, **(about or {}),
             "judge": f"{judge.name}@{judge.version}",
             "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "commit": (about or {}).get("commit") or git_commit(),
             "config": {"people": len({t["identity_id"] for t in tasks}), "categories": config.categories,
                        "alphas": config.alphas, "hash": config.digest()}}  # fmt: skip
    figures = draw(out, edits, config, rows, tasks, base, str(about.get("model") or "this run"))
    write_report(out, about=about, summary=summary, ci=ci, categories=metrics.per_category(edits, config.categories),
                 baseline=base, counts={"tasks": len(tasks), "edits": len(rows), "unreadable": len(unreadable)},
                 figures=figures)  # fmt: skip
    atomic_write_text(out / "metrics.json", json.dumps({
        "judge": f"{judge.name}@{judge.version}", "tasks": len(tasks), "edits": len(rows),
        "unreadable": len(unreadable), "metrics": summary, "ci95": ci, "config": config.digest(),
        "figures": figures, "baseline": base["run_id"] if base else None,
    }, indent=1, default=float) + "\n")  # fmt: skip
    return result


def _baseline(folder: Path | None, config: BenchConfig) -> dict | None:
    """The no-edit run's numbers for the report, or None."""
    if folder is None:
        return None
    edits = read_edits(folder)
    return {"run_id": Path(folder).parent.name, "edits": edits, "summary": metrics.summary(edits),
            "categories": metrics.per_category(edits, config.categories)}  # fmt: skip


def _stop_if_unreadable(unreadable: list[dict], planned: int, share: float, done: int, tasks: int) -> None:
    if len(unreadable) > share * planned:
        reasons = sorted({r["reason"] for r in unreadable})
        stopped = f"; stopped after {done} of {tasks} tasks" if done < tasks else ""
        raise BenchError(f"{len(unreadable)} of {planned} planned edits could not be read by the judge "
                         f"({'; '.join(reasons)[:200]}): more than {share:.0%}{stopped}")  # fmt: skip


SWEEP_SOURCES = 2  # people whose every edit is kept as a strip (sweeps/ and sweeps.png)


def draw(out: Path, edits: list[metrics.Edit], config: BenchConfig, rows: list[dict], tasks: list[dict],
         baseline: dict | None = None, name: str = "this run") -> list[str]:  # fmt: skip
    """cls_curves.png (beside the no-edit baseline's), confusion.png, identity_vs_expression.png and
    sweeps.png of a run."""
    curves = {name: metrics.intensity_curves(edits, config.categories, config.alphas)}
    if baseline is not None:
        curves["no-edit baseline"] = metrics.intensity_curves(baseline["edits"], config.categories, config.alphas)
    positive = [e for e in edits if e.alpha > 0]
    written = [
        plots.cls_curves(out / "cls_curves.png", config.alphas, curves),
        plots.confusion(out / "confusion.png", {name: metrics.confusion(edits)}),
        plots.identity_vs_expression(out / "identity_vs_expression.png",
                                     {name: ([e.intensity for e in positive], [e.id_sim for e in positive])}),
    ]  # fmt: skip
    if sheet := _sweeps(out, rows, tasks, config):
        written.append(sheet)
    return [p.name for p in written]


SWEEP_TILE = 128  # px per tile of sweeps.png: a few megapixels for two people x 12 categories x 7 alphas


def _sweeps(out: Path, rows: list[dict], tasks: list[dict], config: BenchConfig) -> Path | None:
    """sweeps.png: the kept strips, one row per (person, category) in the categories' order, labelled,
    with the judged target intensity under each edit."""
    from storage.schemas import CATEGORIES

    order = {c: k for k, c in enumerate(CATEGORIES)}
    kept = sorted((t for t in tasks if (out / "sweeps" / f"{t['task_id']}.png").is_file()),
                  key=lambda t: (t["identity_id"], order[t["category"]]))  # fmt: skip
    if not kept:
        return None
    by_task: dict[str, dict[float, list | None]] = {}
    for r in rows:
        by_task.setdefault(r["task_id"], {})[r["alpha"]] = r["scores"]
    tiles, labels, captions = [], [], []
    for t in kept:
        with Image.open(out / "sweeps" / f"{t['task_id']}.png") as strip:
            n = len(t["alphas"]) + 1
            side = strip.width // n
            tiles.append([strip.crop((k * side, 0, (k + 1) * side, strip.height)) for k in range(n)])
        judged = by_task.get(t["task_id"], {})
        index = order[t["category"]]
        captions.append(["source"] + [("unreadable" if judged.get(a) is None else f"judged {judged[a][index]:.2f}")
                                      for a in t["alphas"]])  # fmt: skip
        labels.append(f"{t['identity_id']}\n{t['category']}")
    alphas = kept[0]["alphas"]
    return plots.sweep_sheet(out / "sweeps.png", tiles, tile=SWEEP_TILE, row_labels=labels, captions=captions,
                             column_labels=["source"] + [f"alpha {a:g}" for a in alphas])  # fmt: skip


def read_edits(folder: Path) -> list[metrics.Edit]:
    """The judged edits of a finished run folder (its edits.parquet), unreadable ones left out."""
    path = Path(folder) / "edits.parquet"
    if not path.is_file():
        raise BenchError(f"{folder} holds no edits.parquet: not a finished bench run")
    return [metrics.Edit(r["category"], r["alpha"], np.asarray(r["scores"]), r["id_sim"], r["identity_id"])
            for r in pq.read_table(path).to_pylist() if r["scores"] is not None]  # fmt: skip


def compare(a: Path, b: Path, n: int = 1000, seed: int = 0) -> dict:
    """Run a against run b on the sources both edited: each one's metrics and the paired-bootstrap
    interval of a - b (an interval without 0 is a difference the bench can see)."""
    edits = {"a": read_edits(a), "b": read_edits(b)}
    shared = {e.source for e in edits["a"]} & {e.source for e in edits["b"]}
    if not shared:
        raise BenchError(f"{a} and {b} edited no source in common (runs on different releases?)")
    edits = {k: [e for e in v if e.source in shared] for k, v in edits.items()}
    ci = metrics.paired_bootstrap(edits, n, seed, names=tuple(metrics.summary(edits["a"])), baseline="b")
    return {"sources": len(shared), "a": metrics.summary(edits["a"]), "b": metrics.summary(edits["b"]),
            "a_minus_b_ci95": ci["a"]["minus_b"]}  # fmt: skip


# --- editors ----------------------------------------------------------------------------------------


def no_edit(source: Image.Image, category: str, alphas: Sequence[float]) -> list[Image.Image]:
    """The baseline that changes nothing: identity kept, expression unchanged."""
    return [source.copy() for _ in alphas]


def prompt_only(editor: Editor) -> Editor:
    """The baseline without interpolation: the full target prompt for every alpha > 0."""

    def edit(source: Image.Image, category: str, alphas: Sequence[float]) -> list[Image.Image]:
        full = list(editor(source, category, [1.0]))[0]
        return [source.copy() if a == 0 else full.copy() for a in alphas]

    return edit


def pixel_editor(backbone, steps: int = 20, seed: int = 0, size: int | None = None) -> Editor:
    """PixelSmile on the pixel backbone (the synthetic world's model): one batch per task. With
    `size`, the model works at size x size (its training resolution) and each edit is returned at
    the source's own size, as any editor's would be."""
    import torch

    from pixelsmile.conditioning import interpolate
    from storage.loader import image_to_tensor, tensor_to_image

    @torch.no_grad()
    def edit(source: Image.Image, category: str, alphas: Sequence[float]) -> list[Image.Image]:
        small = source if size is None else source.resize((size, size), Image.Resampling.BICUBIC)
        src = image_to_tensor(small)[None].expand(len(alphas), -1, -1, -1)
        neutral = backbone.encode_prompts(["neutral"] * len(alphas), src)
        cond = interpolate(neutral, backbone.encode_prompts([category] * len(alphas), src), torch.tensor(alphas))
        edits = [tensor_to_image(t) for t in backbone.generate(src, cond, steps=steps, seed=seed)]
        return edits if size is None else [e.resize(source.size, Image.Resampling.BICUBIC) for e in edits]

    return edit


def pipeline_editor(pipe, settings) -> Editor:
    """PixelSmile through a Qwen-Image-Edit pipeline (a LoRA loaded or not): one edit per alpha."""
    from pixelsmile.infer import edit as edit_one

    def edit(source: Image.Image, category: str, alphas: Sequence[float]) -> list[Image.Image]:
        return [edit_one(pipe, source, {category: float(a)}, settings) for a in alphas]

    return edit


def git_commit() -> str | None:
    """The code's commit, when it runs from a git checkout."""
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def bench_and_record(layout, version: str, run_id: str, model: str, editor: Editor, judge: Judge,
                     config: BenchConfig = BenchConfig(), *, kind: str = "measured", progress: bool = True,
                     baseline_id: str | None = None, notes: str | None = None) -> dict:  # fmt: skip
    """Run the bench of `editor` on release `version` into runs/<version>/<run_id>/bench and record
    the leaderboard row; a run that fails is recorded as failed with its reason (and re-raised).
    A measured run is drawn beside the release's no-edit run with the same judge and config, which
    is benched first (as `baseline_id`, default `<run_id>-no-edit`) when there is none yet."""
    from storage.leaderboard import baseline_run, record_run
    from storage.releases.plan import release_dir

    judge_id, commit = f"{judge.name}@{judge.version}", git_commit()
    baseline = None
    if kind != "baseline":
        found = baseline_run(layout, version, judge_id, config.digest())
        if found is None:
            found = bench_and_record(layout, version, baseline_id or f"{run_id}-no-edit", "no-edit", no_edit, judge,
                                     config, kind="baseline", progress=progress)  # fmt: skip
        baseline = layout.runs / version / found["run_id"] / "bench"
    out = layout.runs / version / run_id / "bench"
    common = dict(release=version, model=model, kind=kind, judge=judge_id, config_hash=config.digest(),
                  git_commit=commit, notes=notes)  # fmt: skip
    about = {"model": model, "release": version, "run_id": run_id, "commit": commit}
    try:
        result = run_bench(release_dir(layout, version), out, editor, judge, config, progress=progress, about=about,
                           baseline=baseline)  # fmt: skip
    except BenchError as err:
        record_run(layout, run_id, reason=f"bench: {err}", **common)
        raise
    return record_run(layout, run_id, metrics=result.metrics, ci95=result.ci95, tasks=result.tasks,
                      edits=result.edits, **common)  # fmt: skip
