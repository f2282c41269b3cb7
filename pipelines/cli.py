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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.layout import Layout

EXIT_ERROR = 1


def _workdir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir",
        default=os.environ.get("FFE_WORKDIR", "ffe_data"),
        help="work folder (default: $FFE_WORKDIR or ./ffe_data)",
    )


def _settings_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--settings",
        type=Path,
        default=os.environ.get("FFE_SETTINGS") or None,
        help="a settings file to use instead of <workdir>/settings.yaml (default: $FFE_SETTINGS)",
    )


def _input_args(p: argparse.ArgumentParser, input_help: str) -> None:
    """Flags that describe the input folder; not given: the work folder's settings decide."""
    p.add_argument("--input", type=Path, default=None, help=input_help)
    p.add_argument("--domain", choices=["real", "anime"], default=None, help="what new files are (input.domain)")
    p.add_argument(
        "--pre-cropped",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each new image is one face: taken whole where none is found (setting input.pre_cropped)",
    )
    p.add_argument(
        "--whole-images",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each new image is one face taken whole, no face detection (setting input.whole_images)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffe", description="Build the Flex Facial Expression dataset.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample", help="write a small sample input folder (real and broken files)")
    p.add_argument("dir", type=Path)

    p = sub.add_parser("build", help="ingest new input files and materialise the asset graph")
    _workdir_arg(p)
    _settings_arg(p)
    _input_args(p, "input folder (setting input.folder; default <workdir>/input, filled with the sample if missing)")
    p.add_argument("--select", default="*", help="Dagster asset selection, e.g. '+raw_images' (default: all)")
    p.add_argument(
        "--config", type=Path, default=None, help="YAML run config: {asset: {key: value}} or Dagster's {ops: ...} form"
    )
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="build N batch partitions at once, each its own Dagster run and process (build.workers)")
    p.add_argument("--rebuild", action="append", default=[], metavar="PARTITION",
                   help="build this batch (batch-...) or release again though built, with what it feeds: e.g. "
                   "after changing ingest settings (repeatable)")

    p = sub.add_parser("status", help="rows per table, failures by reason, batches, releases")
    _workdir_arg(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("check", help="compare Dagster's records with the work folder's files; --repair rebuilds")
    _workdir_arg(p)
    p.add_argument("--repair", action="store_true", help="rebuild what is missing or unreadable (an `ffe build`)")
    _settings_arg(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("query", help="run SQL on the DuckDB catalog (what it creates is not kept)")
    p.add_argument("sql")
    _workdir_arg(p)
    p.add_argument("--json", action="store_true", help="print rows as a JSON list of objects")

    p = sub.add_parser("annotate", help="Label Studio: set up the project, push tasks, sync, report")
    p.add_argument("action", choices=["setup", "push", "sync", "report", "gold"])
    p.add_argument("file", nargs="?", type=Path, help="gold: a CSV of face_id and the 12 category scores")
    _workdir_arg(p)
    _settings_arg(p)
    p.add_argument("--json", action="store_true", help="report: print JSON")
    p.add_argument(
        "--gold-rate", type=float, default=None, help="push: hidden gold tasks per task (label_studio.gold_rate)"
    )
    p.add_argument("--recreate-deleted", action="store_true",
                   help="push: push again the faces whose task was deleted in Label Studio")  # fmt: skip

    p = sub.add_parser("settings", help="how the work folder is built: show, set or unset a setting")
    # One parser per action, so options may come before or after KEY VALUE (`set --workdir W k v`).
    ss = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = ss.add_parser("show", help="every setting (or one key, or a section) with its value and source")
    q.add_argument("key", nargs="?", help="a dotted key such as bench.judge, or a section such as bench")
    q.add_argument("--json", action="store_true", help="print JSON")
    q = ss.add_parser("set", help="store KEY = VALUE in the work folder's settings file")
    q.add_argument("key", help="a dotted key such as bench.judge")
    q.add_argument("value", help="the value (text as given; numbers and true/false read as such; a relative path "
                   "from where you stand)")  # fmt: skip
    q = ss.add_parser("unset", help="back to the default for KEY")
    q.add_argument("key", help="a dotted key such as bench.judge")
    for q in ss.choices.values():
        _workdir_arg(q)
        _settings_arg(q)
    ss.choices["set"].set_defaults(json=False)
    ss.choices["unset"].set_defaults(json=False, value=None)
    ss.choices["show"].set_defaults(value=None)

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
    _settings_arg(p)
    _input_args(p, "input folder the sensor watches (setting input.folder; default <workdir>/input)")
    p.add_argument("--port", type=int, default=3000)
    return parser


def cmd_sample(args: argparse.Namespace) -> int:
    from curation.sample import write_sample

    written = write_sample(args.dir)
    print(f"wrote {len(written)} files to {args.dir.resolve()}")
    return 0


def _load_config(path: Path | None) -> dict | None:
    if path is None:
        return None
    from pipelines.errors import FFEError
    from storage.yamlfile import YamlFileError, read_yaml

    try:
        loaded = read_yaml(path, "config")
    except YamlFileError as err:
        raise FFEError(str(err)) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise FFEError(f"config {path} must be a mapping of asset names to settings")
    return loaded


def _effective_settings(args: argparse.Namespace, *, save: bool = False, require_input: bool = True,
                        check: Callable[[Any], None] | None = None):  # fmt: skip
    """The work folder's settings with this command's flags. `save` (a command that builds): check
    that every path set exists and the training recipe (and `check(effective)`, the command's own
    checks) holds, then remember the settings in the folder; nothing is remembered from a command
    that cannot start."""
    from pipelines import settings
    from pipelines.errors import FFEError

    if save:  # before anything is read or written: a read-only folder named, not a database error
        from storage.layout import ReadOnlyWorkFolder

        try:
            Layout.at(args.workdir).require_writable()
        except ReadOnlyWorkFolder as err:
            raise FFEError(str(err)) from None
    flags = {"input.folder": getattr(args, "input", None), "input.domain": getattr(args, "domain", None),
             "input.pre_cropped": getattr(args, "pre_cropped", None),
             "input.whole_images": getattr(args, "whole_images", None),
             "build.workers": getattr(args, "workers", None)}  # fmt: skip
    effective = settings.load(args.workdir, file=args.settings, flags=flags)
    for line in settings.unknown_env():
        print(f"ffe: warning: {line}", file=sys.stderr)
    if not save:
        return effective
    settings.check_paths(effective)
    settings.check_files(effective)
    if check is not None:
        check(effective)
    if effective.settings.input.folder and not effective.input_path.is_dir():
        missing = f"input folder {effective.input_path} does not exist ({effective.sources['input.folder']})"
        if require_input:
            raise FFEError(missing)
        print(f"ffe: warning: {missing}: the sensor waits for it", file=sys.stderr)
    if changed := settings.save(effective):
        shown = ", ".join(f"{k} = {effective.flat[k]!r}" for k in changed)
        print(f"settings: {shown} remembered in {effective.workdir / settings.SETTINGS_FILE}")
    return effective


def cmd_build(args: argparse.Namespace) -> int:
    from pipelines.build import build, check_run_config, normalise_run_config
    from pipelines.definitions import build_definitions

    layout = Layout.at(args.workdir)
    config, source = _load_config(args.config), f"config {args.config}" if args.config else "config"

    def check(effective) -> None:  # the config's settings, before any is remembered
        check_run_config(build_definitions(settings=effective), normalise_run_config(config), source)

    effective = _effective_settings(args, save=True, check=check)
    report = build(layout, selection=args.select, run_config=config, settings=effective, config_source=source,
                   rebuild=args.rebuild)
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


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 when the folder holds everything Dagster recorded and its catalog opens (after
    --repair: when the rebuild restored them), else 1."""
    from pipelines.check import as_rows, check
    from pipelines.instance import open_instance
    from storage import catalog

    layout = _existing_layout(args.workdir)
    if bad_catalog := catalog.damaged(layout):
        if args.repair:
            catalog.connect(layout).close()  # made again from the tables
            print(f"made again: {bad_catalog.split(' ', 1)[0]}")
        else:
            print(f"{bad_catalog}", file=sys.stderr)
    with open_instance(layout) as instance:
        problems = check(layout, instance)
        built = sorted({r.asset_entry.asset_key.to_user_string() for r in instance.get_asset_records()
                        if r.asset_entry.last_materialization_record is not None})  # fmt: skip
    if args.repair and problems:
        from pipelines.build import build

        effective = _effective_settings(args, save=False, require_input=False)
        # What the folder was built with, nothing more: a repair trains no model never trained here.
        selection = " or ".join(f'key:"{k}"' for k in built) or "*"
        report = build(layout, selection=selection, register_input=False, settings=effective)
        with open_instance(layout) as instance:
            left = check(layout, instance)
        if args.json:
            print(json.dumps({"found": as_rows(problems), "left": as_rows(left), "failed": report.failed}, indent=2))
        else:
            print(f"found {len(problems)} problem(s); after the rebuild {len(left)} left")
            for p in left:
                print(f"  {p.describe()}")
        return 0 if not left and report.ok else EXIT_ERROR
    if args.json:
        print(json.dumps(as_rows(problems), indent=2))
    elif problems:
        print(f"{len(problems)} problem(s) (`ffe check --repair` or `ffe build` rebuilds them):")
        for p in problems:
            print(f"  {p.describe()}")
    else:
        print(f"every table, crop, original and release file Dagster recorded is in {layout.root}")
    return EXIT_ERROR if problems or (bad_catalog and not args.repair) else 0


def cmd_query(args: argparse.Namespace) -> int:
    from pipelines.errors import FFEError
    from pipelines.query import run
    from storage import catalog

    if not args.sql.strip():
        raise FFEError("no SQL given")
    with catalog.connect(_existing_layout(args.workdir), persist=False) as con:
        text = run(con, args.sql, args.json)
    if text is not None:
        print(text)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from pipelines.errors import FFEError
    from pipelines.instance import open_instance

    layout = Layout.at(args.workdir)
    # The daemon's definitions read the work folder's settings: this command's flags are saved there.
    _effective_settings(args, save=True, require_input=False)
    with open_instance(layout, print):  # writes dagster.yaml, sets the gpu pool, reclaims dead runs
        pass
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or shutil.which("dagster")
    if dagster is None:
        raise FFEError("the `dagster` command is not installed in this environment")
    env = {**os.environ, "FFE_WORKDIR": str(layout.root), "DAGSTER_HOME": str(layout.dagster_home)}
    env.pop("FFE_SETTINGS", None)  # saved into the work folder's file above
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
    ls = _effective_settings(args).settings.label_studio
    settings = sync.settings_from_env(
        layout, url=ls.url, token=ls.token, document_root=ls.document_root or None, project_title=ls.project_title,
        overlap=ls.overlap, gold_rate=ls.gold_rate if args.gold_rate is None else args.gold_rate,
    )  # fmt: skip
    if args.action == "setup":
        print(f"project {sync.setup(layout, settings)} ready on {settings.url}")
    elif args.action == "push":
        info = sync.push(layout, settings, recreate_deleted=args.recreate_deleted)
        n, of, project = info["pushed"], info["eligible_faces"], info["project_id"]
        print(f"pushed {n} new task(s) of {of} eligible faces to project {project}")
        if info["recreated"]:
            print(f"  {info['recreated']} of them had been deleted in Label Studio (--recreate-deleted)")
        if info["deleted_not_pushed"]:
            print(f"  {info['deleted_not_pushed']} face(s) whose task was deleted in Label Studio were not pushed "
                  "again (--recreate-deleted pushes them)")  # fmt: skip
        if info["duplicates_removed"]:
            print(f"  {info['duplicates_removed']} duplicate task(s) nobody had annotated were deleted")
    else:
        info = sync.sync(layout, settings)
        print(f"synced {info['annotations']} annotation(s) {info['by_status']}; quarantined {info['quarantined']}")
        for key, what in (("faces_with_several_tasks", "face(s) with more than one task"),
                          ("deleted_annotations", "annotation(s) deleted in Label Studio (kept in annotation_history)"),
                          ("deleted_tasks", "task(s) deleted in Label Studio")):  # fmt: skip
            if info[key]:
                print(f"  {info[key]} {what}")
        if info["not_rated"]:
            print(f"  sliders left untouched (not rated): {info['not_rated']}")
        if info["quarantined"] or info["faces_with_several_tasks"]:
            print(f"  each one named: ffe query \"select * from failures where stage = '{sync.STAGE}'\"")
    return 0


def render_report(info: dict) -> str:
    lines = [
        f"faces with human scores  {info['faces_with_human_scores']} of {info['eligible_faces']} eligible",
        f"annotations              {info['annotations']} {info['by_status']}",
        "",
        "category    alpha    ICC(2,1)  raters  pairable  variance  not evaluable because",
    ]
    for c, a in info["alpha"].items():
        i, d = info["icc2_two_busiest"].get(c), info["alpha_detail"][c]
        var = "-" if d["variance"] is None else f"{d['variance']:.4f}"
        lines.append(f"{c:<11} {'-' if a is None else f'{a:.3f}':>6}   {'-' if i is None else f'{i:.3f}':>6}    "
                     f"{d['raters']:>6}  {d['pairable']:>8}  {var:>8}  {d['reason'] or ''}")  # fmt: skip
    if any(info["not_rated"].values()):
        lines += ["", "not rated (slider left untouched): "
                  + ", ".join(f"{c} {n}" for c, n in info["not_rated"].items() if n)]  # fmt: skip
    if any(info["not_usable"].values()):
        lines += ["not usable: " + ", ".join(f"{r} {n}" for r, n in info["not_usable"].items() if n)]
    if any(info["label_studio"].values()):
        lines += ["in Label Studio: " + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in info["label_studio"].items()
                                                  if n)]  # fmt: skip
    lines += ["", "annotator                  submitted  skipped  unusable  empty  mean |diff| from consensus"]
    for name, a in info["annotators"].items():
        diff = a["mean_abs_diff_from_consensus"]
        lines.append(f"{name:<26} {a['submitted']:>9} {a['skipped']:>8} {a['unusable']:>9} {a['empty']:>6}  "
                     f"{'-' if diff is None else diff}")  # fmt: skip
    lines += ["", f"score distributions: {info['plot']}"]
    return "\n".join(lines)


def cmd_settings(args: argparse.Namespace) -> int:
    from pipelines import settings
    from pipelines.errors import FFEError

    if args.action in ("set", "unset"):
        if not args.key or (args.action == "set") != (args.value is not None):
            raise FFEError(f"usage: ffe settings {args.action} KEY{' VALUE' if args.action == 'set' else ''}")
        effective = settings.set_value(args.workdir, args.key, args.value if args.action == "set" else None,
                                       file=args.settings)  # fmt: skip
        print(f"{args.key} = {effective.flat[args.key]!r} in {effective.file}")
        return 0
    rows = settings.show(_effective_settings(args))
    if args.key:
        rows = [r for r in rows if r["key"] == args.key or r["key"].startswith(args.key + ".")]
        if not rows:
            raise FFEError(f"unknown setting {args.key!r}{settings.nearest(args.key)}")
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        value = json.dumps(r["value"]) if isinstance(r["value"], bool) else repr(r["value"])
        env = f"  (${r['env']})" if r["env"] else ""
        print(f"{r['key']:<{width}}  {value:<24} {r['source']}{env}")
    return 0


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
    "check": cmd_check,
    "query": cmd_query,
    "settings": cmd_settings,
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
    except BrokenPipeError:  # `ffe query ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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
