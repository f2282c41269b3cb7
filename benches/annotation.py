"""Task push and annotation sync against Label Studio's own bulk import and export of the same
payload, in the same run, on a real server started here (from `make label-studio`'s venv).

- push: our `push_tasks` (looks up which face_ids the project holds, imports the rest in batches,
  with 12 pre-label predictions per task) vs one `import_tasks` call with every task, into a fresh
  project each.
- sync: what `ffe annotate sync` asks of the server (the project's task count, the JSON export of
  the annotated tasks, then every annotation validated and reduced to one row per annotator per
  face) vs that export alone. A sync that finds the task count changed also lists every task
  (deletions, copies): reported as `sync_with_task_list_ratio`, no target.
Target: at least 0.8x the server's own rate for both. Prints one JSON line; writes
benches/results/annotation[-quick].json.

    python benches/annotation.py [--quick] [--tasks N]
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from annotation import labelstudio as lsapi  # noqa: E402
from annotation.local_server import start  # noqa: E402
from benches.common import report  # noqa: E402
from storage.schemas import CATEGORIES  # noqa: E402

TARGET = 0.8


def payloads(n: int, tag: str) -> list[dict]:
    pre = {c: (i % 20) / 20 for i, c in enumerate(CATEGORIES)}
    return [
        lsapi.task_payload(f"{tag}_{i:06d}", f"/data/local-files/?d=crops/x/{i}.png", pre, "bench") for i in range(n)
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tasks", type=int)
    ap.add_argument("--repeat", type=int)
    args = ap.parse_args()
    n = args.tasks or (200 if args.quick else 1000)
    repeat = args.repeat or (1 if args.quick else 6)
    binary = REPO / ".venv-ls" / "bin" / "label-studio"
    if not binary.is_file():
        sys.exit("Label Studio is not installed: run `make label-studio`")

    tmp = Path(tempfile.mkdtemp(prefix="ffe-bench-ls-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(20)
    server = start(binary, tmp / "ls", port, token=token, password=secrets.token_hex(12), document_root=tmp)
    try:
        from label_studio_sdk import LabelStudio

        ls = LabelStudio(base_url=server.url, api_key=token, timeout=300)
        me = ls.users.whoami()
        rounds = []
        for r in range(repeat):
            ours = lsapi.ServerSettings(url=server.url, token=token, project_title=f"ours-{r}")
            # The baseline imports into an identical project (same labeling config).
            theirs_id = lsapi.ensure_project(ls, lsapi.ServerSettings(server.url, token, project_title=f"bulk-{r}"))
            ours_id = lsapi.ensure_project(ls, ours)
            t0 = time.perf_counter()
            pushed = lsapi.push_tasks(ls, ours_id, payloads(n, f"o{r}"), ours)
            t_push = time.perf_counter() - t0
            t0 = time.perf_counter()
            ls.projects.import_tasks(id=theirs_id, request=payloads(n, f"t{r}"))
            t_bulk_import = time.perf_counter() - t0
            assert pushed == n

            # Annotate a third of our project's tasks, then time the two ways of reading them back.
            tasks = lsapi._all_tasks(ls, ours_id, ours)
            for task in tasks[: n // 3]:
                result = [{"from_name": c, "to_name": "image", "type": "number", "value": {"number": 0.5}}
                          for c in CATEGORIES]  # fmt: skip
                ls.annotations.create(id=task.id, result=result, completed_by=me.id)
            known = {t.data["face_id"] for t in tasks}

            def pull(ours_id=ours_id, known=known, ours=ours, list_tasks=False):
                """What a sync asks of the server: the export and the task count (and the whole
                task list when the count changed since the last sync)."""
                t0 = time.perf_counter()
                got = lsapi.pull_annotations(ls, ours_id, known, ours, known_tasks=-1 if list_tasks else n)
                return time.perf_counter() - t0, got

            def export(ours_id=ours_id):
                t0 = time.perf_counter()
                got = b"".join(ls.projects.exports.download_sync(id=ours_id, export_type="JSON",
                                                              download_all_tasks=False))  # fmt: skip
                return time.perf_counter() - t0, got

            # Alternate which goes first: the second read of a project is served warmer.
            if r % 2:
                (t_export, exported), (t_pull, pulled) = export(), pull()
            else:
                (t_pull, pulled), (t_export, exported) = pull(), export()
            assert len(pulled.rows) == n // 3 and len(json.loads(exported)) == n // 3
            t_listing, listed = pull(list_tasks=True)
            assert len(listed.tasks) == n
            rounds.append((t_push, t_bulk_import, t_pull, t_export, t_listing))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    push_ratio = statistics.median(r[1] / r[0] for r in rounds)
    sync_ratio = statistics.median(r[3] / r[2] for r in rounds)
    listing_ratio = statistics.median(r[3] / r[4] for r in rounds)
    best = [min(r[i] for r in rounds) for i in range(5)]
    result = {
        "benchmark": "annotation",
        "quick": args.quick,
        "tasks": n,
        "annotations": n // 3,
        "rounds": repeat,
        "push_tasks_per_s": round(n / best[0], 1),
        "bulk_import_tasks_per_s": round(n / best[1], 1),
        "push_ratio": round(push_ratio, 3),
        "sync_annotations_per_s": round(n // 3 / best[2], 1),
        "bulk_export_annotations_per_s": round(n // 3 / best[3], 1),
        "sync_ratio": round(sync_ratio, 3),
        # a sync after tasks were deleted, made or copied in Label Studio also lists every task
        "sync_with_task_list_annotations_per_s": round(n // 3 / best[4], 1),
        "sync_with_task_list_ratio": round(listing_ratio, 3),
        "round_seconds": [[round(t, 3) for t in r] for r in rounds],
        "target_ratio": TARGET,
        "meets_target": push_ratio >= TARGET and sync_ratio >= TARGET,
    }
    report("annotation", args.quick, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
