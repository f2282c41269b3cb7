"""`ffe status`: what a work folder holds, as a dict (for --json) and as text."""

from __future__ import annotations

import pyarrow.parquet as pq

from curation.batches import manifests
from curation.ingest import batch_is_ingested
from storage import catalog, tables
from storage.layout import Layout
from storage.leaderboard import regression
from storage.releases.listing import list_releases
from storage.releases.plan import planned_versions, release_dir, release_eligible
from storage.schemas import TABLES
from storage.tables import has_partition

# Work each stage has not done yet: rows upstream with no row downstream (a stage "behind").
PENDING = {
    "face_embeddings": ("faces that passed quality without an embedding",
                        "SELECT count(*) FROM faces f ANTI JOIN face_embeddings e USING (face_id) WHERE f.quality_ok"),
    "identities": ("embedded faces without an identity",
                   "SELECT count(*) FROM face_embeddings e ANTI JOIN identities i USING (face_id)"),
    "prelabels": ("faces that passed quality without a pre-label",
                  "SELECT count(*) FROM faces f ANTI JOIN prelabels p USING (face_id) WHERE f.quality_ok"),
    "affect_scores": ("release-eligible faces without an affect score",
                      "SELECT count(*) FROM identities i ANTI JOIN affect_scores a USING (face_id) "
                      "WHERE i.duplicate_of IS NULL"),
}  # fmt: skip


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
        pending = {stage: (what, con.execute(sql).fetchone()[0]) for stage, (what, sql) in PENDING.items()}
        # Each release's latest measured run, finished or failed (`ffe bench show` ranks them).
        runs = con.execute(
            "SELECT release, model, status, reason, hes FROM bench_runs WHERE kind = 'measured' "
            'QUALIFY row_number() OVER (PARTITION BY release ORDER BY "at" DESC) = 1'
        ).fetchall()
    batches = manifests(layout)
    not_ingested = [m.batch for m in batches if not batch_is_ingested(layout, m.batch)]
    uncurated = [m.batch for m in batches
                 if m.batch not in not_ingested and not has_partition(layout, "faces", m.batch)]  # fmt: skip
    behind = {stage: f"{n} {what}" for stage, (what, n) in pending.items() if n}
    if uncurated:
        behind = {"faces": f"{len(uncurated)} ingested batch(es) without faces: {', '.join(uncurated)}", **behind}
    if not_ingested:  # the daemon launches each batch once: one whose run failed waits for `ffe build`
        behind = {"raw_images": f"{len(not_ingested)} registered batch(es) not ingested: {', '.join(not_ingested)}",
                  **behind}  # fmt: skip
    releases = list_releases(layout)
    if releases and tables["affect_scores"] and (unreleased := _not_in_latest_plan(layout, releases[-1]["version"])):
        behind["release"] = f"{unreleased} scored, release-eligible faces not in the latest release"
    return {
        "workdir": str(layout.root),
        "tables": tables,
        "failures_by_reason": [{"stage": s, "reason": r, "count": n} for s, r, n in failures],
        "known_files": known_bytes,  # files whose bytes were already ingested (not failures)
        "near_duplicates": near_duplicates,  # faces marked as a copy of an earlier shot
        "quality": {"rejected": rejected, "by_reason": dict(quality)},
        "behind": behind,  # stage -> what it has not done yet
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


def _not_in_latest_plan(layout: Layout, version: str) -> int:
    """Faces with an affect score, eligible for a release, that the latest release does not hold."""
    plan = release_dir(layout, version) / "plan.parquet"
    if not plan.is_file():
        return 0
    held = set(pq.read_table(plan, columns=["face_id"]).column("face_id").to_pylist())
    scored = set(tables.read_table(layout, "affect_scores", columns=["face_id"]).column("face_id").to_pylist())
    return len((scored & release_eligible(layout)) - held)


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
