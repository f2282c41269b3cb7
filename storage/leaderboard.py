"""Bench runs and the leaderboard: one `bench_runs` row per run, written once and never changed;
the catalog's `leaderboard` view ranks the finished ones beside the paper's reported numbers.

A run that crashed, trained to NaN or lost images is recorded as failed with its reason and never
ranks; so is a result whose headline metrics are not numbers (too few edits to compute them).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

from storage.catalog import connect
from storage.layout import Layout
from storage.reported import REPORTED
from storage.schemas import BENCH_METRICS
from storage.tables import has_partition, write_partition

HEADLINE = ("mSCR", "Acc-12", "CLS-12", "ID Sim")  # must be numbers for a run to rank


class RunExists(ValueError):
    """A bench run id is recorded once: a rerun gets a new id."""


def record_run(layout: Layout, run_id: str, *, release: str, model: str, kind: str = "measured",
               metrics: dict[str, float] | None = None, ci95: dict | None = None, judge: str | None = None,
               tasks: int | None = None, edits: int | None = None, config_hash: str | None = None,
               git_commit: str | None = None, notes: str | None = None, reason: str | None = None) -> dict:  # fmt: skip
    """Write the run's row; `reason` (or metrics that are not numbers) makes it a failed run."""
    if has_partition(layout, "bench_runs", run_id):
        raise RunExists(f"bench run {run_id} is already recorded")
    if reason is None:
        if metrics is None:
            reason = "no metrics"
        elif bad := [m for m in HEADLINE if not _finite(metrics.get(m))]:
            reason = f"{', '.join(bad)} not a number (too few edits?)"
    ok = reason is None
    row = {"run_id": run_id, "release": release, "model": model, "kind": kind, "status": "ok" if ok else "failed",
           "reason": reason, "judge": judge, "tasks": tasks, "edits": edits, "config_hash": config_hash,
           "git_commit": git_commit, "notes": notes,
           "ci95": json.dumps(ci95) if ci95 and ok else None, "at": datetime.now(UTC)}  # fmt: skip
    for name, column in BENCH_METRICS.items():
        value = (metrics or {}).get(name)
        row[column] = float(value) if ok and _finite(value) else None
    write_partition(layout, "bench_runs", run_id, [row])
    return row


def _dicts(cur) -> list[dict]:
    """A DuckDB cursor's rows as dicts by column name."""
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def leaderboard(layout: Layout, release: str | None = None) -> list[dict]:
    """Measured rows (best HES first), baselines, then the reported rows in the paper's order."""
    where = "WHERE kind = 'reported' OR release = ?" if release else ""
    order = "ORDER BY CASE kind WHEN 'measured' THEN 0 WHEN 'baseline' THEN 1 ELSE 2 END, hes DESC NULLS LAST, mscr"
    with connect(layout, persist=False) as con:
        rows = _dicts(con.execute(f"SELECT * FROM leaderboard {where} {order}", [release] if release else []))
    paper = [r["model"] for r in REPORTED]
    ranked = [r for r in rows if r["kind"] != "reported"]
    return ranked + sorted((r for r in rows if r["kind"] == "reported"), key=lambda r: paper.index(r["model"]))


def failed_runs(layout: Layout, release: str | None = None) -> list[dict]:
    where = "AND release = ?" if release else ""
    with connect(layout, persist=False) as con:
        return _dicts(con.execute(f"SELECT run_id, release, model, reason, \"at\" FROM bench_runs WHERE status = "
                                  f"'failed' {where} ORDER BY \"at\"", [release] if release else []))  # fmt: skip


LOWER_IS_BETTER = ("mSCR", "|I-a|")
COMPARED = ("mSCR", "Acc-12", "CLS-12", "ID Sim", "HES")


def latest_ok_run(layout: Layout, release: str, model: str, judge: str | None = None) -> dict | None:
    """The newest finished run of `model` on `release` (judged by `judge`, when given)."""
    with connect(layout, persist=False) as con:
        rows = _dicts(con.execute("SELECT * FROM bench_runs WHERE status = 'ok' AND release = ? AND model = ? "
                                  "AND (? IS NULL OR judge = ?) ORDER BY \"at\" DESC LIMIT 1",
                                  [release, model, judge, judge]))  # fmt: skip
    return rows[0] if rows else None


def baseline_run(layout: Layout, release: str, judge: str, config_hash: str) -> dict | None:
    """The newest finished no-edit run on `release` with this judge and bench config: the floor a
    model's report is drawn against."""
    with connect(layout, persist=False) as con:
        rows = _dicts(con.execute("SELECT * FROM bench_runs WHERE status = 'ok' AND kind = 'baseline' AND "
                                  "model = 'no-edit' AND release = ? AND judge = ? AND config_hash = ? "
                                  "ORDER BY \"at\" DESC LIMIT 1", [release, judge, config_hash]))  # fmt: skip
    return rows[0] if rows else None


def regression(layout: Layout, release: str, model: str, releases: list[str]) -> dict:
    """This release's latest run of `model` against the one of the nearest earlier release in
    `releases` (oldest first) with the same judge: the metrics that got worse, or better, beyond
    the noise (their 95% intervals do not overlap; different releases bench different people, so
    the comparison cannot be paired)."""
    now = latest_ok_run(layout, release, model)
    if now is None:
        return {"previous": None, "worse": [], "better": [], "note": f"no finished run of {model} on {release}"}
    earlier = releases[: releases.index(release)] if release in releases else []
    before = next((r for v in reversed(earlier) if (r := latest_ok_run(layout, v, model, now["judge"]))), None)
    if before is None:
        return {"previous": None, "worse": [], "better": [], "note": "no earlier release benched with this model"}
    ci_now, ci_before = json.loads(now["ci95"] or "{}"), json.loads(before["ci95"] or "{}")
    worse, better = [], []
    for name in COMPARED:
        if name not in ci_now or name not in ci_before:
            continue
        (lo_n, hi_n), (lo_b, hi_b) = ci_now[name], ci_before[name]
        sign = -1 if name in LOWER_IS_BETTER else 1  # > 0: better
        change = {"metric": name, "now": now[BENCH_METRICS[name]], "before": before[BENCH_METRICS[name]],
                  "now_ci95": [lo_n, hi_n], "before_ci95": [lo_b, hi_b]}  # fmt: skip
        if (sign > 0 and hi_n < lo_b) or (sign < 0 and lo_n > hi_b):
            worse.append(change)
        elif (sign > 0 and lo_n > hi_b) or (sign < 0 and hi_n < lo_b):
            better.append(change)
    return {"previous": before["release"], "previous_run": before["run_id"], "run": now["run_id"],
            "worse": worse, "better": better}  # fmt: skip
