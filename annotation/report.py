"""The annotation report: progress, agreement per category and per annotator, and a PNG of the
score distributions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from annotation.scores import agreement_per_category, human_ratings, icc_per_category
from storage import tables
from storage.layout import Layout
from storage.releases.plan import release_eligible
from storage.schemas import CATEGORIES

STATUSES = ("submitted", "skipped", "unusable", "empty")  # of an annotations row


def annotation_report(layout: Layout) -> dict:
    human = human_ratings(layout)
    rows = tables.read_table(layout, "annotations").to_pylist()
    scores = {r["face_id"]: r for r in tables.read_table(layout, "affect_scores").to_pylist()}
    eligible = len(release_eligible(layout))
    details = agreement_per_category(human)
    alpha = {c: a.value for c, a in details.items()}
    per_annotator: dict[str, dict] = {}
    for r in rows:
        a = per_annotator.setdefault(r["annotator"], {**dict.fromkeys(STATUSES, 0), "errors": []})
        a[r["status"]] += 1
        face = scores.get(r["face_id"])
        if r["status"] == "submitted" and face is not None and face["source"] == "human":
            a["errors"].extend(abs(r[c] - face[c]) for c in CATEGORIES if r[c] is not None)
    annotators = {
        name: {k: v for k, v in a.items() if k != "errors"}
        | {"mean_abs_diff_from_consensus": round(float(np.mean(a["errors"])), 4) if a["errors"] else None}
        for name, a in sorted(per_annotator.items())
    }
    icc2 = icc_per_category(human)
    return {
        "eligible_faces": eligible,
        "faces_with_human_scores": len(human),
        "annotations": len(rows),
        "by_status": {s: sum(r["status"] == s for r in rows) for s in STATUSES},
        # submitted annotations with that slider left untouched (not rated: the others count)
        "not_rated": {c: sum(r["status"] == "submitted" and r[c] is None for r in rows) for c in CATEGORIES},
        # what was submitted but not usable, and why (sync's `failures`: malformed, several tasks ...)
        "not_usable": not_usable(layout, rows),
        # what happened in Label Studio: tasks deleted there, annotations gone, faces with copies
        "label_studio": label_studio_changes(layout),
        "alpha": {c: (None if math.isnan(a) else round(a, 4)) for c, a in alpha.items()},
        # why an alpha is undefined or not evaluable, with n raters, n pairable values and their variance
        "alpha_detail": {c: a.as_dict() for c, a in details.items()},
        "icc2_two_busiest": {c: (None if math.isnan(v) else round(v, 4)) for c, v in icc2.items()},
        # an undefined ICC: no two annotators share two faces, or their scores do not vary
        "icc2_reason": {
            c: (None if not math.isnan(v) else "too_few_shared_faces" if details[c].raters < 2 else "no_variance")
            for c, v in icc2.items()
        },  # fmt: skip
        "annotators": annotators,
    }


def not_usable(layout: Layout, rows: list[dict]) -> dict[str, int]:
    """Counts of annotation work that does not enter the scores, by reason: `empty` (submitted
    with no slider set), and each reason sync put in `failures` (malformed_annotation,
    unknown_face, several_tasks)."""
    out = {"empty": sum(r["status"] == "empty" for r in rows)}
    for f in tables.read_table(layout, "failures", columns=["stage", "reason"]).to_pylist():
        if f["stage"] == "annotations":
            out[f["reason"]] = out.get(f["reason"], 0) + 1
    return out


def label_studio_changes(layout: Layout) -> dict[str, int]:
    """Counts from `label_studio_tasks` and `annotation_history`: tasks deleted in Label Studio (and
    not re-created), annotations deleted there (their last version kept in the history), and keys
    (faces or gold copies) with more than one task at the last sync that listed tasks."""
    tasks = tables.read_table(layout, "label_studio_tasks", columns=["tasks", "deleted_at"]).to_pylist()
    history = tables.read_table(layout, "annotation_history", columns=["annotation_id", "status"]).to_pylist()
    return {
        "deleted_tasks": sum(t["deleted_at"] is not None for t in tasks),
        "deleted_annotations": len({h["annotation_id"] for h in history if h["status"] == "deleted"}),
        "faces_with_several_tasks": sum(t["deleted_at"] is None and (t["tasks"] or 0) > 1 for t in tasks),
    }


def plot_distributions(layout: Layout, path: Path) -> Path:
    """A 3x4 grid of histograms: each category's affect scores, human and model apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tables.read_table(layout, "affect_scores").to_pylist()
    fig, axes = plt.subplots(3, 4, figsize=(12, 8), sharex=True)
    bins = np.linspace(0, 1, 21)
    for ax, c in zip(axes.flat, CATEGORIES, strict=True):
        for source, colour in (("model", "#999999"), ("human", "#d04a02")):
            values = [r[c] for r in rows if r["source"] == source]
            if values:
                ax.hist(values, bins=bins, color=colour, alpha=0.7, label=f"{source} ({len(values)})")
        ax.set_title(c)
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=8)
    fig.suptitle("Affect score distributions per category")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
