"""report.html of a bench run: what was benched and how, every metric with its interval, which way is
better and what it measures, the same release's no-edit baseline beside it, chance where guessing
scores, a per-category table and the figures. One file with relative image links: it opens offline
in any browser."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from pixelsmile import metrics
from storage.atomic import atomic_write_text


def number(value: float | None, digits: int = 4) -> str:
    """A metric as text: rounded, never "-0.0000", a dash where there is no number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{round(float(value), digits) + 0.0:.{digits}f}"


def _interval(ci: dict, name: str) -> str:
    if name not in ci:
        return ""
    low, high = ci[name]
    return f"[{number(low, 3)}, {number(high, 3)}]"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4}td{white-space:nowrap}td.l small{white-space:normal}
td.l,th.l{text-align:left}small,.dim{color:#777}img{max-width:100%}figure{margin:1.5em 0}
dl.about{display:grid;grid-template-columns:max-content auto;gap:2px 14px}dt{color:#777}dd{margin:0}"""


def write_report(out: Path, *, about: dict, summary: dict, ci: dict, categories: dict, baseline: dict | None,
                 counts: dict, figures: list[str]) -> Path:  # fmt: skip
    """report.html in `out`.

    about: model, release, run_id, judge, config (people x categories x alphas, its hash), date, commit.
    summary/ci: this run's metrics and 95% intervals; categories: metrics.per_category of this run;
    baseline: the same release's no-edit run ({"run_id", "summary", "categories"}) or None;
    counts: tasks, edits, unreadable."""
    base = (baseline or {}).get("summary", {})
    base_cat = (baseline or {}).get("categories", {})
    head = ("<tr><th class=l>metric</th><th>better</th><th>this run</th><th>95% interval</th>"
            + ("<th>no-edit baseline</th>" if baseline else "")
            + "<th>chance</th><th class=l>what it measures</th></tr>")  # fmt: skip
    rows = []
    for name, value in summary.items():
        arrow = "↓ lower" if metrics.better(name) == "lower" else "↑ higher"
        chance = number(metrics.CHANCE[name], 3) if name in metrics.CHANCE else ""
        rows.append(f"<tr><td class=l><b>{escape(name)}</b></td><td>{arrow}</td><td>{number(value)}</td>"
                    f"<td><small>{_interval(ci, name)}</small></td>"
                    + (f"<td class=dim>{number(base.get(name))}</td>" if baseline else "")
                    + f"<td class=dim>{chance}</td><td class=l><small>{escape(metrics.DEFINITIONS.get(name, ''))}"
                    "</small></td></tr>")  # fmt: skip
    cat_head = "<tr><th class=l>category</th><th>edits</th><th>Acc</th><th>CLS</th><th>mean judged intensity</th>"
    cat_head += "<th>no-edit Acc</th><th>no-edit intensity</th></tr>" if baseline else "</tr>"
    cat_rows = []
    for cat, m in categories.items():
        b = base_cat.get(cat, {})
        cat_rows.append(f"<tr><td class=l>{escape(cat)}</td><td>{m['edits']}</td><td>{number(m['Acc'], 3)}</td>"
                        f"<td>{number(m['CLS'], 3)}</td><td>{number(m['S_E'], 3)}</td>"
                        + (f"<td class=dim>{number(b.get('Acc'), 3)}</td><td class=dim>{number(b.get('S_E'), 3)}</td>"
                           if baseline else "") + "</tr>")  # fmt: skip
    config = about.get("config", {})
    alphas = ", ".join(number(a, 2) for a in config.get("alphas", ()))
    title = f"{about.get('model')} on release {about.get('release')}"
    facts = {
        "model": about.get("model"),
        "release": about.get("release"),
        "run": about.get("run_id"),
        "judge": about.get("judge"),
        "bench": (f"{config.get('people')} people × {len(config.get('categories', ()))} categories × "
                  f"{len(config.get('alphas', ()))} alphas ({alphas}); "
                  f"config {config.get('hash')}"),  # fmt: skip
        "edits": f"{counts['edits']} in {counts['tasks']} tasks; {counts['unreadable']} unreadable by the judge",
        "no-edit baseline": (baseline or {}).get("run_id") or "none on this release with this judge and config",
        "date": about.get("date"),
        "commit": about.get("commit") or "unknown (not run from a git checkout)",
    }
    about_html = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in facts.items())
    images = "".join(f'<figure><img src="{escape(f)}" alt="{escape(f)}"><figcaption>{escape(CAPTIONS.get(f, f))}'
                     "</figcaption></figure>" for f in figures)  # fmt: skip
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>FFE-Bench: {escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>FFE-Bench: {escape(title)}</h1>
<dl class=about>{about_html}</dl>
<h2>Metrics</h2>
<p class=dim>95% intervals from a bootstrap over the bench's people. The no-edit baseline is the same tasks
with every edit returning its source: where "changed nothing" lands with this judge. Chance: a uniformly
random dominant expression. Formulas: docs/bench.md.</p>
<table>{head}{"".join(rows)}</table>
<h2>Per category</h2>
<p class=dim>Acc: dominant judged expression is the target (alpha &gt; 0); CLS: correlation of alpha with the
judged target intensity over the category's edits; mean judged intensity of the target at alpha &gt; 0.</p>
<table>{cat_head}{"".join(cat_rows)}</table>
<h2>Figures</h2>{images}</body></html>
"""
    atomic_write_text(out / "report.html", html)
    return out / "report.html"


CAPTIONS = {
    "cls_curves.png": "Judged target intensity against requested alpha, per category (dashed: the ideal line)",
    "confusion.png": "Where edits land: the share of edits toward each target (rows) read as each expression",
    "identity_vs_expression.png": "Each edit at alpha > 0: expression gained against identity kept",
    "sweeps.png": "Every edit of the first bench people: source, then each alpha; judged target intensity under each",
}
