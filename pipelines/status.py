"""`ffe status`: what a work folder holds, as a dict (for --json) and as text."""

from __future__ import annotations

from curation.batches import manifests
from curation.ingest import batch_is_ingested
from storage import catalog
from storage.layout import Layout
from storage.releases.listing import list_releases
from storage.schemas import TABLES


def status(layout: Layout) -> dict:
    with catalog.connect(layout, persist=False) as con:
        tables = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}
        failures = con.execute(
            "SELECT stage, reason, count(*) AS n FROM failures GROUP BY ALL ORDER BY stage, n DESC, reason"
        ).fetchall()
        # Each release's latest measured run, finished or failed (`ffe bench show` ranks them).
        runs = con.execute(
            "SELECT release, model, status, reason, hes FROM bench_runs WHERE kind = 'measured' "
            'QUALIFY row_number() OVER (PARTITION BY release ORDER BY "at" DESC) = 1'
        ).fetchall()
    batches = manifests(layout)
    pending = [m.batch for m in batches if not batch_is_ingested(layout, m.batch)]
    releases = list_releases(layout)
    return {
        "workdir": str(layout.root),
        "tables": tables,
        "failures_by_reason": [{"stage": s, "reason": r, "count": n} for s, r, n in failures],
        "batches": {
            "registered": len(batches),
            "files": sum(len(m.files) for m in batches),
            "ingested": len(batches) - len(pending),
            "pending": pending,
            "generated": [m.batch for m in batches if m.provenance == "generated"],
        },
        "releases": [r["version"] for r in releases],  # oldest first
        "release_states": {r["version"]: f"{r['state']}, {r['faces']} faces" for r in releases},
        "models": {
            release: (f"{model}: HES {hes:.3f}" if status == "ok" else f"{model}: failed ({reason})")
            for release, model, status, reason, hes in runs
        },  # fmt: skip
    }


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
    lines += ["", "failures by reason" if info["failures_by_reason"] else "failures: none"]
    lines += [f"  {f['stage']:<12} {f['reason']:<20} {f['count']:>5}" for f in info["failures_by_reason"]]
    lines += ["", "releases" if info["releases"] else "releases: none yet"]
    for version, state in info["release_states"].items():
        model = info["models"].get(version)
        lines.append(f"  {version}  {state}" + (f"; {model}" if model else ""))
    return "\n".join(lines)
