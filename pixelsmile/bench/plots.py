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
    fig.supxlabel("alpha (requested intensity)")
    fig.supylabel("judged intensity of the target")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    if labelled is not None:  # below the panels: never over a curve
        fig.legend(*labelled.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def confusion(path: Path, matrices: dict[str, np.ndarray]) -> Path:
    """C(target -> judged dominant), one panel per named result."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(8 * len(matrices), 7), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items(), strict=True):
        matrix = np.nan_to_num(np.asarray(matrix, dtype=float))
        ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
        for i, j in np.ndindex(matrix.shape):
            if matrix[i, j] >= 0.05:
                text = f"{matrix[i, j]:.2f}".removeprefix("0")  # ".35", and "1.00" stays whole
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > 0.5 else "black")  # fmt: skip
        ax.set_xticks(range(len(CATEGORIES)), CATEGORIES, rotation=90, fontsize=9)
        ax.set_yticks(range(len(CATEGORIES)), CATEGORIES, fontsize=9)
        ax.set_xlabel("judged dominant expression")
        ax.set_ylabel("target of the edit")
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


def sweep_sheet(path: Path, rows: Sequence[Sequence[Image.Image]], *, tile: int = 96,
                row_labels: Sequence[str] | None = None, column_labels: Sequence[str] | None = None,
                captions: Sequence[Sequence[str]] | None = None) -> Path:  # fmt: skip
    """Rows of edits (one task's alphas left to right) tiled into one image, each tile `tile` px
    square; optional labels left of each row and above each column, and a caption under each tile."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(10, min(14, tile // 8)))
    label_w = 170 if row_labels else 0
    head_h = 20 if column_labels else 0
    cap_h = 18 if captions else 0
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (label_w + cols * tile, head_h + len(rows) * (tile + cap_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(column_labels or ()):
        draw.text((label_w + c * tile + 4, 3), text, fill="black", font=font)
    for r, tiles in enumerate(rows):
        y = head_h + r * (tile + cap_h)
        if row_labels:
            draw.multiline_text((4, y + tile // 2 - 14), row_labels[r], fill="black", font=font, spacing=2)
        for c, image in enumerate(tiles):
            # Upscaled small renders stay crisp (nearest); large photos shrink smoothly.
            method = Image.Resampling.NEAREST if image.width < tile else Image.Resampling.LANCZOS
            sheet.paste(image.convert("RGB").resize((tile, tile), method), (label_w + c * tile, y))
            if captions:
                draw.text((label_w + c * tile + 4, y + tile + 2), captions[r][c], fill="#333", font=font)
    sheet.save(path)
    return path
