"""`ffe status`: what a work folder holds, as a dict (for --json) and as text."""

from __future__ import annotations

from curation.batches import manifests
from curation.ingest import batch_is_ingested
from pipelines.check import check
from pipelines.instance import open_instance
from storage import catalog
from storage.layout import Layout
from storage.leaderboard import regression
from storage.releases.listing import list_releases
from storage.releases.plan import planned_versions
from storage.schemas import TABLES
from storage.tables import has_partition

# What a stage has not done yet. Per batch: an upstream partition without this stage's. Across
# batches: embedded faces that no identity holds (and no failure explains); affect scores older
# than what they read.
PER_BATCH = (("faces", "images"), ("face_embeddings", "faces"), ("prelabels", "faces"))  # (stage, its input table)
UNASSIGNED = ("SELECT count(*) FROM face_embeddings e ANTI JOIN identities i USING (face_id) "
              "WHERE e.face_id NOT IN (SELECT item FROM failures WHERE stage = 'identities')")  # fmt: skip


def _behind(layout: Layout, batches: list, not_ingested: list[str], unassigned: int) -> dict[str, str]:
    behind = {}
    if not_ingested:  # the daemon launches each batch once: one whose run failed waits for `ffe build`
        behind["raw_images"] = f"{len(not_ingested)} registered batch(es) not ingested: {', '.join(not_ingested)}"
    for stage, upstream in PER_BATCH:
        missing = [m.batch for m in batches
                   if has_partition(layout, upstream, m.batch) and not has_partition(layout, stage, m.batch)]
        if missing:
            behind[stage] = f"{len(missing)} batch(es) not done: {', '.join(missing)}"
    if unassigned:
        behind["identities"] = f"{unassigned} embedded face(s) without an identity"
    newest = {t: max((p.stat().st_mtime for p in layout.table_dir(t).glob("*.parquet")), default=0.0)
              for t in ("identities", "prelabels", "annotations", "affect_scores")}  # fmt: skip
    if newest["affect_scores"] and (older := [t for t in ("identities", "prelabels", "annotations")
                                              if newest[t] > newest["affect_scores"]]):  # fmt: skip
        behind["affect_scores"] = f"older than {', '.join(older)}"
    return behind


def status(layout: Layout) -> dict:
    with catalog.connect(layout, persist=False) as con:
        tables = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}
        # A file whose bytes are already held is not broken: counted apart from the failures.
        failures = con.execute(
            "SELECT stage, reason, count(*) AS n FROM failures WHERE reason <> 'duplicate' "
            "GROUP BY ALL ORDER BY stage, n DESC, reason"
        ).fetchall()
        known_bytes = con.execute("SELECT count(*) FROM failures WHERE reason = 'duplicate'").fetchone()[0]
        near_duplicates = con.execute("SELECT count(*) FROM identities WHERE duplicate_of IS NOT NULL").fetchone()[0]
        # Faces that failed a quality gate, by gate (reject_reason lists every gate it failed).
        quality = con.execute(
            "SELECT reason, count(*) FROM (SELECT unnest(string_split(reject_reason, ',')) AS reason FROM faces "
            "WHERE NOT quality_ok) WHERE reason <> '' GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
        rejected = con.execute("SELECT count(*) FROM faces WHERE NOT quality_ok").fetchone()[0]
        unassigned = con.execute(UNASSIGNED).fetchone()[0]
        # Each release's latest measured run, finished or failed (`ffe bench show` ranks them).
        runs = con.execute(
            "SELECT release, model, status, reason, hes FROM bench_runs WHERE kind = 'measured' "
            'QUALIFY row_number() OVER (PARTITION BY release ORDER BY "at" DESC) = 1'
        ).fetchall()
    with open_instance(layout) as instance:  # what Dagster says is built but the folder lacks
        broken = [p.describe() for p in check(layout, instance)]
    broken += [line] if (line := catalog.damaged(layout)) else []
    batches = manifests(layout)
    not_ingested = [m.batch for m in batches if not batch_is_ingested(layout, m.batch)]
    behind = _behind(layout, batches, not_ingested, unassigned)
    releases = list_releases(layout)
    return {
        "workdir": str(layout.root),
        "tables": tables,
        "failures_by_reason": [{"stage": s, "reason": r, "count": n} for s, r, n in failures],
        "known_files": known_bytes,  # files whose bytes were already ingested (not failures)
        "near_duplicates": near_duplicates,  # faces marked as a copy of an earlier shot
        "quality": {"rejected": rejected, "by_reason": dict(quality)},
        "behind": behind,  # stage -> what it has not done yet
        "broken": broken,  # built per Dagster, but files missing or unreadable (`ffe check`)
        "batches": {
            "registered": len(batches),
            "files": sum(len(m.files) for m in batches),
            "ingested": len(batches) - len(not_ingested),
            "pending": not_ingested,
            "generated": [m.batch for m in batches if m.provenance == "generated"],
        },
        "releases": [r["version"] for r in releases],  # oldest first
        "release_states": {r["version"]: f"{r['state']}, {r['faces']} faces" for r in releases},
        "models": {
            release: (f"{model}: HES {hes:.3f}{_regressed(layout, release, model)}" if status == "ok"
                      else f"{model}: failed ({reason})")
            for release, model, status, reason, hes in runs
        },  # fmt: skip
    }


def _regressed(layout: Layout, release: str, model: str) -> str:
    """", worse than r... beyond the noise: CLS-12" when the bench_regression check would warn."""
    found = regression(layout, release, model, planned_versions(layout))
    if not found["worse"]:
        return ""
    return f", worse than {found['previous']} beyond the noise: {', '.join(c['metric'] for c in found['worse'])}"


def render_status(info: dict) -> str:
    b = info["batches"]
    lines = [
        f"work folder  {info['workdir']}",
        f"batches      {b['registered']} registered ({b['files']} files), {b['ingested']} ingested"
        + (f", {len(b['generated'])} of generated variants" if b["generated"] else "")
        + (f", pending: {', '.join(b['pending'])}" if b["pending"] else ""),
        "",
        "table                rows",
    ]
    lines += [f"{name:<18} {rows:>6}" for name, rows in info["tables"].items()]
    q = info["quality"]
    if q["rejected"]:
        reasons = ", ".join(f"{r} {n}" for r, n in q["by_reason"].items())
        lines += ["", f"quality        {q['rejected']} face(s) kept out of identities and releases ({reasons})"]
    if info["known_files"] or info["near_duplicates"]:
        lines += ["", f"duplicates     {info['known_files']} file(s) with bytes already held (not ingested again), "
                      f"{info['near_duplicates']} near-duplicate face(s) kept out of releases"]  # fmt: skip
    lines += ["", "failures by reason" if info["failures_by_reason"] else "failures: none"]
    lines += [f"  {f['stage']:<12} {f['reason']:<20} {f['count']:>5}" for f in info["failures_by_reason"]]
    if info["broken"]:
        n = len(info["broken"])
        lines += ["", f"missing or unreadable ({n}; `ffe build` rebuilds them, `ffe check` lists all)"]
        lines += [f"  {what}" for what in info["broken"][:10]]
        lines += [f"  ... and {len(info['broken']) - 10} more"] if len(info["broken"]) > 10 else []
    if info["behind"]:
        lines += ["", "not up to date (run `ffe build`, or wait for `ffe ui`'s daemon)"]
        lines += [f"  {stage:<16} {what}" for stage, what in info["behind"].items()]
    else:
        lines += ["", "every stage up to date"]
    lines += ["", "releases" if info["releases"] else "releases: none yet"]
    for version, state in info["release_states"].items():
        model = info["models"].get(version)
        lines.append(f"  {version}  {state}" + (f"; {model}" if model else ""))
    return "\n".join(lines)
