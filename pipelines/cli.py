"""`ffe`: build, inspect and query an FFE work folder from the shell.

Every error is one line on stderr and a non-zero exit; `ffe --debug ...` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

from storage.layout import Layout

EXIT_ERROR = 1


def _workdir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir",
        default=os.environ.get("FFE_WORKDIR", "ffe_data"),
        help="work folder (default: $FFE_WORKDIR or ./ffe_data)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffe", description="Build the Flex Facial Expression dataset.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample", help="write a small sample input folder (real and broken files)")
    p.add_argument("dir", type=Path)

    p = sub.add_parser("build", help="ingest new input files and materialise the asset graph")
    _workdir_arg(p)
    p.add_argument(
        "--input",
        type=Path,
        default=None,
        help="input folder (default: <workdir>/input, filled with the sample if it does not exist)",
    )
    p.add_argument("--select", default="*", help="Dagster asset selection, e.g. '+raw_images' (default: all)")
    p.add_argument(
        "--config", type=Path, default=None, help="YAML run config: {asset: {key: value}} or Dagster's {ops: ...} form"
    )
    p.add_argument("--domain", choices=["real", "anime"], default="real", help="what new files are (default real)")
    p.add_argument(
        "--pre-cropped", action="store_true", help="each new image is one face: taken whole where none is found"
    )

    p = sub.add_parser("status", help="rows per table, failures by reason, batches, releases")
    _workdir_arg(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("query", help="run SQL on the DuckDB catalog")
    p.add_argument("sql")
    _workdir_arg(p)
    p.add_argument("--json", action="store_true", help="print rows as a JSON list of objects")

    p = sub.add_parser("annotate", help="Label Studio: set up the project, push tasks, sync, report")
    p.add_argument("action", choices=["setup", "push", "sync", "report", "gold"])
    p.add_argument("file", nargs="?", type=Path, help="gold: a CSV of face_id and the 12 category scores")
    _workdir_arg(p)
    p.add_argument("--json", action="store_true", help="report: print JSON")
    p.add_argument("--gold-rate", type=float, default=0.0, help="push: hidden gold tasks per regular task")

    p = sub.add_parser("release", help="dataset releases: build, list, show, diff, verify")
    rs = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = rs.add_parser("build", help="plan the release the current labels give and build it (if new)")
    _workdir_arg(q)
    q.add_argument("--config", type=Path, default=None, help="YAML of release settings (see docs/releases.md)")
    q = rs.add_parser("list", help="every release, oldest first")
    _workdir_arg(q)
    q.add_argument("--json", action="store_true")
    q = rs.add_parser("show", help="one release: counts, pairs, shards, files")
    q.add_argument("version", help="a version, or 'latest'")
    _workdir_arg(q)
    q.add_argument("--json", action="store_true", help="print the whole manifest")
    q = rs.add_parser("diff", help="faces added and removed, score changes and split moves between two releases")
    q.add_argument("old")
    q.add_argument("new")
    _workdir_arg(q)
    q.add_argument("--json", action="store_true")
    q.add_argument("--limit", type=int, default=50, help="examples of each kind of change (default 50)")
    q = rs.add_parser("verify", help="re-read every file and shard of a release against its manifest")
    q.add_argument("version", help="a version, or 'latest'")
    _workdir_arg(q)
    q.add_argument("--rebuild", action="store_true", help="also rebuild it from its plan and compare every sha256")

    p = sub.add_parser("bench", help="FFE-Bench: run it on a release, compare runs, show the leaderboard")
    bs = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = bs.add_parser("run", help="edit the release's bench tasks with a model, judge them, record the row")
    q.add_argument("--release", default="latest", help="a release version, or 'latest'")
    q.add_argument("--model", choices=["pixelsmile", "prompt-only", "no-edit"], default="pixelsmile")
    q.add_argument("--model-path", default=None, help="a local Qwen-Image-Edit folder")
    q.add_argument("--lora", default=None, help="a LoRA file or folder (pixelsmile train's final/)")
    q.add_argument("--judge", choices=["face", "vlm", "synthetic"], default="face")
    q.add_argument("--vlm-path", default=None, help="--judge vlm: a local vision-language model folder")
    q.add_argument("--config", type=Path, default=None, help="YAML of bench settings (docs/bench.md)")
    q.add_argument("--run-id", default=None, help="default: the time and the model")
    q.add_argument("--steps", type=int, default=50, help="sampling steps per edit")
    q.add_argument("--size", type=int, default=512, help="edit size in pixels")
    _workdir_arg(q)
    q = bs.add_parser("compare", help="two runs on the same sources: each one's metrics, intervals of the difference")
    q.add_argument("a", help="a run id")
    q.add_argument("b", help="the run id to compare against")
    _workdir_arg(q)
    q.add_argument("--json", action="store_true")
    q = bs.add_parser("show", help="the leaderboard: measured runs beside the paper's reported numbers")
    q.add_argument("--release", default=None, help="only runs on this release")
    _workdir_arg(q)
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("ui", help="start the Dagster UI (webserver + daemon) on 127.0.0.1")
    _workdir_arg(p)
    p.add_argument("--input", type=Path, default=None, help="input folder the sensor watches")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--domain", choices=["real", "anime"], default="real", help="what new files are (default real)")
    p.add_argument(
        "--pre-cropped", action="store_true", help="each new image is one face: taken whole where none is found"
    )
    return parser


def cmd_sample(args: argparse.Namespace) -> int:
    from curation.sample import write_sample

    written = write_sample(args.dir)
    print(f"wrote {len(written)} files to {args.dir.resolve()}")
    return 0


def _load_config(path: Path | None) -> dict | None:
    if path is None:
        return None
    import yaml

    from pipelines.errors import FFEError

    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as err:
        raise FFEError(f"config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise FFEError(f"config {path} is not valid YAML: {err}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise FFEError(f"config {path} must be a mapping of asset names to settings")
    return loaded


def cmd_build(args: argparse.Namespace) -> int:
    from pipelines.build import build

    layout = Layout.at(args.workdir)
    report = build(
        layout, args.input, args.select, _load_config(args.config), domain=args.domain, pre_cropped=args.pre_cropped
    )
    print(
        f"done: {len(report.runs)} run(s), {len(report.skipped)} partition(s) (batches, releases) already built, "
        f"{len(report.failed)} failed; work folder {layout.root}"
    )
    return 0 if report.ok else EXIT_ERROR


def _existing_layout(workdir: str) -> Layout:
    from pipelines.errors import FFEError

    layout = Layout.at(workdir)
    if not layout.root.is_dir():
        raise FFEError(f"work folder {layout.root} does not exist (run `ffe build` first)")
    return layout


def cmd_status(args: argparse.Namespace) -> int:
    from pipelines.status import render_status, status

    info = status(_existing_layout(args.workdir))
    print(json.dumps(info, indent=2) if args.json else render_status(info))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from storage import catalog

    with catalog.connect(_existing_layout(args.workdir), persist=False) as con:
        rel = con.sql(args.sql)
        if rel is None:  # a statement without a result (SET, CREATE TEMP ...)
            return 0
        columns, rows = rel.columns, rel.fetchall()
    if args.json:
        print(json.dumps([dict(zip(columns, r, strict=False)) for r in rows], default=str, indent=1))
    else:
        print(format_rows(columns, rows))
    return 0


def format_rows(columns: list[str], rows: list[tuple]) -> str:
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"({len(rows)} row{'s' if len(rows) != 1 else ''})"])


def cmd_ui(args: argparse.Namespace) -> int:
    from pipelines.errors import FFEError
    from pipelines.instance import open_instance

    layout = Layout.at(args.workdir)
    with open_instance(layout):  # writes dagster.yaml into the work folder and sets the gpu pool
        pass
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or shutil.which("dagster")
    if dagster is None:
        raise FFEError("the `dagster` command is not installed in this environment")
    env = {**os.environ, "FFE_WORKDIR": str(layout.root), "DAGSTER_HOME": str(layout.dagster_home)}
    if args.input is not None:
        env["FFE_INPUT"] = str(args.input.resolve())
    env["FFE_INPUT_DOMAIN"] = args.domain
    if args.pre_cropped:
        env["FFE_INPUT_PRE_CROPPED"] = "1"
    argv = [dagster, "dev", "-m", "pipelines.definitions", "-h", "127.0.0.1", "-p", str(args.port)]
    print(f"Dagster UI on http://127.0.0.1:{args.port} (work folder {layout.root}); Ctrl-C stops it")
    sys.stdout.flush()
    os.execve(dagster, argv, env)  # replaces this process: signals reach dagster directly
    return 0  # unreachable


def cmd_annotate(args: argparse.Namespace) -> int:
    """The server is named by $FFE_LABEL_STUDIO_URL and $FFE_LABEL_STUDIO_TOKEN (never a flag:
    a token on a command line ends up in shell histories and process lists)."""
    from annotation import sync
    from pipelines.errors import FFEError

    layout = _existing_layout(args.workdir)
    if args.action == "report":
        from annotation.report import annotation_report, plot_distributions

        info = annotation_report(layout)
        png = plot_distributions(layout, layout.root / "reports" / "annotation_scores.png")
        info["plot"] = str(png)
        print(json.dumps(info, indent=2) if args.json else render_report(info))
        return 0
    if args.action == "gold":
        if args.file is None:
            raise FFEError("ffe annotate gold needs the CSV file of gold scores")
        print(f"{sync.import_gold(layout, args.file)} gold face(s) loaded from {args.file}")
        return 0
    settings = sync.settings_from_env(layout, gold_rate=args.gold_rate)
    if args.action == "setup":
        print(f"project {sync.setup(layout, settings)} ready on {settings.url}")
    elif args.action == "push":
        info = sync.push(layout, settings)
        n, of, project = info["pushed"], info["eligible_faces"], info["project_id"]
        print(f"pushed {n} new task(s) of {of} eligible faces to project {project}")
    else:
        info = sync.sync(layout, settings)
        print(f"synced {info['annotations']} annotation(s) {info['by_status']}; quarantined {info['quarantined']}")
    return 0


def render_report(info: dict) -> str:
    lines = [
        f"faces with human scores  {info['faces_with_human_scores']} of {info['eligible_faces']} eligible",
        f"annotations              {info['annotations']} {info['by_status']}",
        "",
        "category    alpha    ICC(2,1)",
    ]
    for c, a in info["alpha"].items():
        i = info["icc2_two_busiest"].get(c)
        lines.append(f"{c:<11} {'-' if a is None else f'{a:.3f}':>6}   {'-' if i is None else f'{i:.3f}':>6}")
    lines += ["", "annotator                  submitted  skipped  unusable  mean |diff| from consensus"]
    for name, a in info["annotators"].items():
        diff = a["mean_abs_diff_from_consensus"]
        lines.append(
            f"{name:<26} {a['submitted']:>9} {a['skipped']:>8} {a['unusable']:>9}  {'-' if diff is None else diff}"
        )
    lines += ["", f"score distributions: {info['plot']}"]
    return "\n".join(lines)


def cmd_release(args: argparse.Namespace) -> int:
    from pipelines.releases import release_command

    return release_command(args, _existing_layout(args.workdir), _load_config(getattr(args, "config", None)))


def cmd_bench(args: argparse.Namespace) -> int:
    from pipelines.bench import bench_command

    return bench_command(args, _existing_layout(args.workdir))


COMMANDS = {
    "bench": cmd_bench,
    "release": cmd_release,
    "sample": cmd_sample,
    "annotate": cmd_annotate,
    "build": cmd_build,
    "status": cmd_status,
    "query": cmd_query,
    "ui": cmd_ui,
}


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    warnings.filterwarnings("ignore", module=r"dagster\..*")  # beta/preview notices, not user news
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("ffe: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"ffe {args.command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
