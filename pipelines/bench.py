"""`ffe bench ...`: the leaderboard (measured runs beside the paper's reported numbers)."""

from __future__ import annotations

import argparse
import json

from storage.layout import Layout
from storage.leaderboard import failed_runs, leaderboard
from storage.reported import SOURCE

COLUMNS = (("mSCR", "mscr"), ("Acc-6", "acc6"), ("Acc-12", "acc12"), ("CLS-6", "cls6"), ("CLS-12", "cls12"),
           ("ID Sim", "id_sim"), ("HES", "hes"))  # fmt: skip


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_leaderboard(rows: list[dict], failed: list[dict]) -> str:
    head = f"{'kind':<9} {'model':<30} {'release':<14} " + " ".join(f"{name:>7}" for name, _ in COLUMNS)
    lines = [head]
    shown_kind = None
    for r in rows:
        if r["kind"] == "reported" and shown_kind != "reported":
            lines.append(f"-- reported by the paper (another judge and tasks: compare rows of one kind only; {SOURCE})")
        shown_kind = r["kind"]
        lines.append(f"{r['kind']:<9} {r['model'][:30]:<30} {r['release'] or '':<14} "
                     + " ".join(f"{_cell(r[col]):>7}" for _, col in COLUMNS))  # fmt: skip
    if not any(r["kind"] != "reported" for r in rows):
        lines.insert(1, "(no measured run yet)")
    if failed:
        lines += ["", f"{len(failed)} failed run(s), never ranked:"]
        lines += [f"  {f['run_id']} ({f['model']}, release {f['release']}): {f['reason']}" for f in failed]
    return "\n".join(lines)


def bench_command(args: argparse.Namespace, layout: Layout) -> int:
    if args.action == "show":
        rows, failed = leaderboard(layout, args.release), failed_runs(layout, args.release)
        if args.json:
            print(json.dumps({"leaderboard": rows, "failed": failed}, indent=2, default=str))
        else:
            print(render_leaderboard(rows, failed))
        return 0
    raise AssertionError(args.action)  # argparse allows no other action
