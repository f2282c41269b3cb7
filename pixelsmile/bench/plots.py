"""The bench's pictures: CLS curves, confusion matrices, identity against expression, sweep strips.
Each takes one or several named results, so that a run and an ablation draw alike."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from storage.schemas import CATEGORIES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cls_curves(path: Path, alphas: Sequence[float], curves: dict[str, dict[str, list[float]]]) -> Path:
    """Per category, the mean judged target intensity at each alpha, one line per named result."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 4, figsize=(12, 8), sharex=True, sharey=True)
    for ax, cat in zip(axes.flat, CATEGORIES, strict=True):
        for name, by_category in curves.items():
            if cat in by_category:
                ax.plot(alphas, by_category[cat], marker="o", label=name)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
        ax.set_title(cat)
    labelled = next((ax for ax in axes.flat if ax.get_legend_handles_labels()[0]), None)
    if labelled is not None:
        labelled.legend(fontsize=7)
    fig.supxlabel("alpha (requested intensity)")
    fig.supylabel("judged intensity of the target")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def confusion(path: Path, matrices: dict[str, np.ndarray]) -> Path:
    """C(target -> judged dominant), one panel per named result."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(6 * len(matrices), 5.4), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items(), strict=True):
        matrix = np.nan_to_num(np.asarray(matrix, dtype=float))
        ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
        for i, j in np.ndindex(matrix.shape):
            if matrix[i, j] >= 0.05:
                ax.text(j, i, f"{matrix[i, j]:.2f}"[1:], ha="center", va="center", fontsize=6,
                        color="white" if matrix[i, j] > 0.5 else "black")  # fmt: skip
        ax.set_xticks(range(len(CATEGORIES)), CATEGORIES, rotation=90, fontsize=7)
        ax.set_yticks(range(len(CATEGORIES)), CATEGORIES, fontsize=7)
        ax.set_title(f"{name}: C(target -> judged dominant)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def identity_vs_expression(path: Path, points: dict[str, tuple[Sequence[float], Sequence[float]]]) -> Path:
    """Each edit at alpha > 0: judged target intensity against identity similarity to its source."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (intensity, similarity) in points.items():
        ax.scatter(intensity, similarity, s=8, alpha=0.5, label=name)
    ax.set_xlabel("judged intensity of the target (expression)")
    ax.set_ylabel("identity similarity to the source")
    ax.set_xlim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def sweep_sheet(path: Path, rows: Sequence[Sequence[Image.Image]], scale: int = 3) -> Path:
    """Rows of edits (one task's alphas left to right), tiled into one image."""
    size = rows[0][0].size
    sheet = Image.new("RGB", (size[0] * max(len(r) for r in rows), size[1] * len(rows)), "white")
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            sheet.paste(tile.resize(size), (c * size[0], r * size[1]))
    if scale > 1:
        sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.Resampling.NEAREST)
    sheet.save(path)
    return path
