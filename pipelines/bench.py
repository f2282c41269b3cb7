"""`ffe bench ...`: run FFE-Bench on a release, and the leaderboard (measured runs beside the paper's
reported numbers)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from pipelines.defs.metadata import tidy
from pipelines.errors import FFEError
from pixelsmile.bench.report import number
from pixelsmile.metrics import better
from storage.layout import Layout
from storage.leaderboard import failed_runs, leaderboard
from storage.reported import SOURCE
from storage.schemas import BENCH_METRICS

COLUMNS = (("mSCR", "mscr"), ("Acc-6", "acc6"), ("Acc-12", "acc12"), ("CLS-6", "cls6"), ("CLS-12", "cls12"),
           ("ID Sim", "id_sim"), ("HES", "hes"))  # fmt: skip
W = 11  # a metric column: "0.0750" above, its interval "0.050-0.100" below


def _cell(value) -> str:
    return number(value)  # never "-0.0000"


def _signed(value: float) -> str:
    return f"{round(value, 4) + 0.0:+.4f}"


def _arrow(name: str) -> str:
    return "↓" if better(name) == "lower" else "↑"


def render_leaderboard(rows: list[dict], failed: list[dict]) -> str:
    """Measured runs and baselines (each with its run id and 95% intervals below), then the paper's
    reported rows; ↓ lower is better, ↑ higher is better."""
    head = f"{'kind':<9} {'model':<28} {'release':<14} {'judge':<20} " + " ".join(
        f"{name + _arrow(name):>{W}}" for name, _ in COLUMNS
    )
    lines = [head]
    shown_kind = None
    for r in rows:
        if r["kind"] == "reported" and shown_kind != "reported":
            lines.append(f"-- reported by the paper (another judge and tasks: compare rows of one kind only; {SOURCE})")
        shown_kind = r["kind"]
        judge = "" if r["kind"] == "reported" else (r["judge"] or "")
        lines.append(f"{r['kind']:<9} {r['model'][:28]:<28} {r['release'] or '':<14} {judge[:20]:<20} "
                     + " ".join(f"{_cell(r[col]):>{W}}" for _, col in COLUMNS))  # fmt: skip
        if r["kind"] != "reported":
            ci = _intervals(r)
            cells = " ".join(f"{_span(ci.get(name)):>{W}}" for name, _ in COLUMNS)
            lines.append(f"{'':<9} {'run ' + (r['run_id'] or ''):<63} " + cells)
            if r.get("notes"):
                lines.append(f"{'':<9} note: {r['notes']}")
    if not any(r["kind"] != "reported" for r in rows):
        lines.insert(1, "(no measured run yet)")
    lines.append("↓ lower is better, ↑ higher is better; under each run: its id and the 95% bootstrap interval")
    if failed:
        lines += ["", f"{len(failed)} failed run(s), never ranked:"]
        lines += [f"  {f['run_id']} ({f['model']}, release {f['release']}): {f['reason']}" for f in failed]
    return "\n".join(lines)


def _intervals(row: dict) -> dict:
    ci = row.get("ci95")
    return json.loads(ci) if isinstance(ci, str) else (ci or {})


def _span(interval) -> str:
    return "" if not interval else f"{number(interval[0], 3)}-{number(interval[1], 3)}"


def leaderboard_json(rows: list[dict], failed: list[dict]) -> dict:
    """`ffe bench show --json`: intervals as JSON (not a string inside it), keyed by the rows' own
    column names (mscr, acc12 ...), and which way each metric is better."""
    out = [{**r, "ci95": {BENCH_METRICS.get(k, k): v for k, v in _intervals(r).items()} or None} for r in rows]
    return {"leaderboard": out, "failed": failed,
            "better": {column: better(name) for name, column in BENCH_METRICS.items()}}  # fmt: skip


def _judge(args: argparse.Namespace):
    from pixelsmile.bench.judges import judge_named

    try:
        return judge_named(args.judge, args.vlm_path or "")
    except ValueError as err:
        raise FFEError(str(err)) from None


def _editor(args: argparse.Namespace):
    """(model name, kind, editor, notes) for `--model`; notes: what the run record should say (a
    LoRA that edits nothing)."""
    from pixelsmile.bench.run import no_edit, pipeline_editor, prompt_only

    if args.model == "no-edit":
        return "no-edit", "baseline", no_edit, None
    if not args.model_path:
        raise FFEError(f"--model {args.model} needs --model-path (a local Qwen-Image-Edit folder)")
    from pixelsmile.infer import EditSettings
    from pixelsmile.lora import load_lora
    from pixelsmile.qwen import load_pipeline

    pipe = load_pipeline(args.model_path)
    name, notes = Path(args.model_path).name, None
    if args.lora:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = load_lora(pipe, args.lora)
        name += f"+{Path(args.lora).stem}"
        print(loaded.describe())
        notes = loaded.describe() if loaded.zero_update else None
    editor = pipeline_editor(pipe, EditSettings(steps=args.steps, size=args.size))
    if args.model == "prompt-only":
        return f"{name} (prompt only)", "baseline", prompt_only(editor), notes
    return name, "measured", editor, notes


def run_command(args: argparse.Namespace, layout: Layout) -> dict:
    from pixelsmile.bench.run import bench_and_record
    from pixelsmile.bench.tasks import BenchConfig
    from storage.releases.listing import resolve_version
    from storage.yamlfile import read_yaml

    version = resolve_version(layout, args.release)
    config = BenchConfig.from_dict(read_yaml(args.config, "bench config") or {}) if args.config else BenchConfig()
    model, kind, editor, notes = _editor(args)
    run_id = args.run_id or f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{args.model}"
    return bench_and_record(layout, version, run_id, model, editor, _judge(args), config, kind=kind, notes=notes)


def _run_folder(layout: Layout, run_id: str) -> Path:
    found = sorted(layout.runs.glob(f"*/{run_id}/bench"))
    if not found:
        raise FFEError(f"no bench run {run_id!r} under {layout.runs}")
    return found[0]


def render_compare(a: str, b: str, result: dict) -> str:
    lines = [f"{a} against {b} on {result['sources']} shared sources (95% paired-bootstrap interval of a - b)",
             f"{'metric':<12} {'a':>8} {'b':>8} {'a - b':>8}  interval"]  # fmt: skip
    for name, (low, high) in result["a_minus_b_ci95"].items():
        va, vb = result["a"][name], result["b"][name]
        if low <= 0 <= high:
            seen = ""
        else:
            a_higher = low > 0
            seen = f"  <- beyond noise: {'a' if a_higher == (better(name) == 'higher') else 'b'} is better"
        lines.append(f"{name + _arrow(name):<12} {number(va):>8} {number(vb):>8} {_signed(va - vb):>8}  "
                     f"[{_signed(low)}, {_signed(high)}]{seen}")  # fmt: skip
    lines.append("↓ lower is better, ↑ higher is better")
    return "\n".join(lines)


def bench_command(args: argparse.Namespace, layout: Layout) -> int:
    if args.action == "compare":
        from pixelsmile.bench.run import compare

        result = tidy(compare(_run_folder(layout, args.a), _run_folder(layout, args.b)))
        print(json.dumps(result, indent=2, default=float) if args.json else render_compare(args.a, args.b, result))
        return 0
    if args.action == "run":
        row = run_command(args, layout)
        print(f"bench run {row['run_id']} on {row['release']}: {row['model']} ({row['kind']}), "
              f"mSCR {_cell(row['mscr'])}, Acc-12 {_cell(row['acc12'])}, CLS-12 {_cell(row['cls12'])}, "
              f"ID Sim {_cell(row['id_sim'])}, HES {_cell(row['hes'])}; `ffe bench show` ranks it")  # fmt: skip
        return 0
    if args.action == "show":
        from storage.releases.listing import resolve_version

        release = resolve_version(layout, args.release) if args.release else None
        rows, failed = leaderboard(layout, release), failed_runs(layout, release)
        if args.json:
            print(json.dumps(leaderboard_json(rows, failed), indent=2, default=str))
        else:
            print(render_leaderboard(rows, failed))
            reports = [(r, layout.runs / r["release"] / r["run_id"] / "bench" / "report.html")
                       for r in rows if r["kind"] == "measured"]  # fmt: skip
            for r, report in [(r, path) for r, path in reports if path.is_file()]:
                print(f"report of {r['model']} on {r['release']} (sweep strips, CLS curves, confusion): {report}")
        return 0
    raise AssertionError(args.action)  # argparse allows no other action
