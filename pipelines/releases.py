"""`ffe release ...`: build, list, show, diff and verify dataset releases."""

from __future__ import annotations

import argparse
import json

import dagster as dg

from pipelines.build import build
from pipelines.defs.release import NOTHING_TO_RELEASE, release_plan
from pipelines.errors import FFEError
from pipelines.instance import open_instance
from storage.layout import Layout
from storage.releases.build import read_manifest
from storage.releases.diff import diff_releases, render_diff
from storage.releases.listing import list_releases, resolve_version, summary
from storage.releases.verify import rebuild_matches, verify_release

RELEASE_SELECTION = "key:release_plan or key:ffe_release or key:ffe_shards"


def current_version(layout: Layout) -> str | None:
    """The version the last `release_plan` run computed from the labels."""
    with open_instance(layout) as instance:
        event = instance.get_latest_materialization_event(release_plan.key)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("version")
    return value.value if isinstance(value, dg.TextMetadataValue) else None


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def render_list(rows: list[dict]) -> str:
    if not rows:
        return "no releases yet (run `ffe release build`)"
    lines = [f"{'version':<14} {'state':<9} {'planned at':<26} {'faces':>7} {'ids':>6} "
             f"{'train':>7} {'val':>6} {'bench':>6} {'triplets':>9} {'shards':>6} {'size':>9}"]  # fmt: skip
    for r in rows:
        sp = r["splits"]
        lines.append(
            f"{r['version']:<14} {r['state']:<9} {r['planned_at']:<26} {r['faces']:>7} {r['identities']:>6} "
            f"{sp['train']:>7} {sp['val']:>6} {sp['bench']:>6} {r.get('triplets', {}).get('train', '-'):>9} "
            f"{r.get('shards', '-'):>6} {_size(r['bytes']) if 'bytes' in r else '-':>9}"
        )
    return "\n".join(lines)


def render_show(layout: Layout, manifest: dict) -> str:
    s = summary(layout, manifest["version"])
    c = manifest["counts"]
    lines = [
        f"release {s['version']} ({s['state']}), planned {s['planned_at']}, built {s['built_at']}",
        f"  folder      {layout.releases / s['version']}",
        f"  faces       {c['faces']} in {c['identities']} identities",
    ]
    for split, v in c["splits"].items():
        lines.append(f"  {split:<11} {v['faces']:>6} faces {v['identities']:>5} identities, "
                     f"{c['triplets'].get(split, '-')} triplets")  # fmt: skip
    pairs = ", ".join("/".join(p) for p in manifest["pairs"]["configured"])
    found = ", ".join("/".join(p) for p in manifest["pairs"]["found"]) or "none"
    lines += [f"  pairs       {pairs}", f"  found pairs {found}"]
    for split, shards in (manifest["shards"] or {}).items():
        if shards:
            lines.append(f"  shards      {split}: {len(shards)} ({_size(sum(r['bytes'] for r in shards))})")
    snap = manifest["annotation_snapshot"]
    lines += [
        f"  labels      {snap['by_source']} from {', '.join(snap['model_versions']) or '-'}",
        f"  card        {layout.releases / s['version'] / 'README.md'}",
    ]
    return "\n".join(lines)


def release_command(args: argparse.Namespace, layout: Layout, config: dict | None) -> int:
    if args.action == "build":
        before = current_version(layout)
        report = build(layout, selection=RELEASE_SELECTION, run_config={"release_plan": config or {}},
                       register_input=False, echo=print)  # fmt: skip
        version = current_version(layout)
        if not report.ok:
            print(f"release build failed: {report.failed}")
            return 1
        if version is None:
            print(f"no release: {NOTHING_TO_RELEASE}")
            return 1
        manifest = read_manifest(layout, version) or {}
        state = "complete" if manifest.get("complete") else "incomplete"
        news = "unchanged since the last build" if version == before else "new"
        print(f"release {version}: {news}, {state}; {layout.releases / version}")
        return 0 if manifest.get("complete") else 1
    if args.action == "list":
        rows = list_releases(layout)
        print(json.dumps(rows, indent=1) if args.json else render_list(rows))
        return 0
    if args.action == "diff":
        d = diff_releases(
            layout, resolve_version(layout, args.old), resolve_version(layout, args.new), limit=args.limit
        )
        print(json.dumps(d, indent=1) if args.json else render_diff(d))
        return 0
    version = resolve_version(layout, args.version)
    if args.action == "show":
        manifest = read_manifest(layout, version)
        if manifest is None:
            raise FFEError(f"release {version} is planned but not built yet")
        print(json.dumps(manifest, indent=1) if args.json else render_show(layout, manifest))
        return 0
    problems = verify_release(layout, version)
    for p in problems:
        print(f"  {p}")
    print(f"release {version}: " + ("intact: every file and shard matches the manifest" if not problems
                                    else f"{len(problems)} problem(s)"))  # fmt: skip
    if args.rebuild and not problems:
        problems = rebuild_matches(layout, version)
        for p in problems:
            print(f"  {p}")
        print(f"release {version}: " + ("rebuilt from its plan: every file and shard has the same sha256"
                                        if not problems else "not reproducible"))  # fmt: skip
    return 1 if problems else 0
