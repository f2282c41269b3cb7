"""The dataset card: README.md of a release, with PNG plots beside it.

Written from the manifest and splits.parquet only, with nothing that changes between two builds of
one version (no build time), so the card's bytes belong to the version like the data's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.atomic import atomic_open, atomic_write_text
from storage.releases.config import SPLITS
from storage.schemas import CATEGORIES

PLOTS = {
    "scores": "plots/score_distributions.png",
    "splits": "plots/split_sizes.png",
    "bins": "plots/category_intensity.png",
    "correlation": "plots/score_correlation.png",
}
_PNG_META = {"Software": None}  # no library version in the file: same bytes on every machine


def _save(fig, path: Path) -> None:
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=80, metadata=_PNG_META)


def write_plots(folder: Path, manifest: dict, faces: pa.Table) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = manifest["counts"]
    fig, axes = plt.subplots(3, 4, figsize=(12, 8), sharex=True)
    by_split = {s: faces.filter(pc.equal(faces.column("split"), s)) for s in SPLITS}
    for ax, cat in zip(axes.flat, CATEGORIES, strict=True):
        for split, part in by_split.items():
            if part.num_rows:
                ax.hist(part.column(cat).to_numpy(), bins=20, range=(0, 1), histtype="step", label=split)
        ax.set_title(cat)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"FFE {manifest['version']}: score distributions per category and split")
    fig.tight_layout()
    _save(fig, folder / PLOTS["scores"])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3))
    n = [counts["splits"][s]["faces"] for s in SPLITS]
    ax.bar(SPLITS, n, color=["tab:blue", "tab:orange", "tab:green"])
    for i, v in enumerate(n):
        ax.text(
            i, v, f"{v} faces\n{counts['splits'][SPLITS[i]]['identities']} ids", ha="center", va="bottom", fontsize=7
        )
    ax.set_ylabel("faces")
    ax.set_title("split sizes (identity-disjoint)")
    fig.tight_layout()
    _save(fig, folder / PLOTS["splits"])
    plt.close(fig)

    bins = manifest["config"]["intensity_bins"]
    rows = [*CATEGORIES, "none"]
    grid = np.zeros((len(rows), bins), dtype=int)
    for split_bins in counts["category_bins"].values():
        for cat, per_bin in split_bins.items():
            grid[rows.index(cat)] += np.array(per_bin)
    fig, ax = plt.subplots(figsize=(4 + bins * 0.6, 5))
    ax.imshow(grid, cmap="Blues", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xticks(range(bins), [f"{j / bins:.2f}-{(j + 1) / bins:.2f}" for j in range(bins)])
    ax.set_xlabel("intensity of the dominant category")
    ax.set_title("faces per dominant category and intensity")
    fig.tight_layout()
    _save(fig, folder / PLOTS["bins"])
    plt.close(fig)

    corr = np.array([[np.nan if v is None else v for v in row] for row in manifest["pairs"]["correlation"]["matrix"]])
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(corr, cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(len(CATEGORIES)), CATEGORIES, rotation=90)
    ax.set_yticks(range(len(CATEGORIES)), CATEGORIES)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("score correlation (train split)")
    fig.tight_layout()
    _save(fig, folder / PLOTS["correlation"])
    plt.close(fig)
    return list(PLOTS.values())


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in r) + " |" for r in rows])


def card_text(manifest: dict, shards: dict[str, list[str]]) -> str:
    """The dataset card; `shards` names each split's shard files."""
    v, c, counts = manifest["version"], manifest["config"], manifest["counts"]
    split = next((s for s in SPLITS if shards.get(s)), "train")
    pattern = shard_pattern(shards[split]) if shards.get(split) else f"{split}-000000.tar"
    per_split = ", ".join(f"{s}: {len(shards.get(s, []))}" for s in SPLITS)
    snap = manifest["annotation_snapshot"]
    labelled_by = ", ".join("labels imported with the images (labels.csv)" if m == "imported" else f"pre-labels of {m}"
                            for m in snap["model_versions"]) or "-"  # fmt: skip
    split_rows = [[s, counts["splits"][s]["identities"], counts["splits"][s]["faces"],
                   counts["triplets"].get(s, "-")] for s in SPLITS]  # fmt: skip
    pairs = [f"{a} / {b}" for a, b in manifest["pairs"]["configured"]]
    found = [f"{a} / {b}" for a, b in manifest["pairs"]["found"]]
    sources = ", ".join(f"{n} {s}" for s, n in snap["by_source"].items())
    return f"""# FFE release {v}

The Flex Facial Expression dataset, release `{v}`: aligned face crops (512 px), each with a score in
[0, 1] for each of 12 expressions ({", ".join(CATEGORIES)}), grouped by identity, split so that no
identity appears in two splits, with the training triplets of PixelSmile (arXiv 2603.25728).
The version is a hash of every face's id, identity and rounded scores and of the release config:
the same inputs always give this version and these bytes.

## Contents

{_table(["split", "identities", "faces", "triplets"], split_rows)}

- `bench` is held out for FFE-Bench and never trains; splits follow a hash of the identity id, so an
  identity keeps its split in every later release.
- Faces by dominant category and intensity bin: `manifest.json` (`counts.category_bins`) and the plot.
- Confusable pairs (triplet targets): {", ".join(pairs)}; found from the score correlations:
  {", ".join(found) or "none above " + str(c["min_pair_correlation"])}.

![split sizes]({PLOTS["splits"]})
![scores]({PLOTS["scores"]})
![category and intensity]({PLOTS["bins"]})
![correlation]({PLOTS["correlation"]})

## Files

- `splits.parquet`: one row per face: ids, split, domain, provenance (real or generated) and
  `source_uri`, the 12 scores, dominant category, intensity bin, label source, crop sha256.
- `images/<face_id>.png`: the aligned crops.
- `triplets.jsonl`, `triplets_val.jsonl`: training triplets in the PixelSmile reference's format
  (JSON Schema: `triplets.schema.json`).
- `shards/{{train,val,bench}}-NNNNNN.tar`: WebDataset shards ({per_split}), one sample per identity:
  `<identity>.json` and one `<identity>.<face_id>.png` per face.
- `shards/index.parquet`: shard, key, faces, byte offset and size of every sample.
- `manifest.json`: counts, config, provenance and the sha256 of every file.

## How to load it

From this folder (paths are relative to it, wherever it was copied). Our loader (fresh symmetric
triplets every epoch, split by node and worker):

```python
from storage.loader import TripletStream
ds = TripletStream.from_release(".", split="train", resolution=512)
loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=4)
```

Plain webdataset:

```python
import webdataset as wds
ds = wds.WebDataset("shards/{pattern}", shardshuffle=False).decode("pil")
# a sample: "json" (the identity, its faces and scores) and one "<face_id>.png" (PIL image) per face
```

The reference code: point its training data at `triplets.jsonl`; image paths are relative to this
folder. Check a copy with `ffe release verify {v}`.

## Provenance and licences

- Labels: {sources} faces (`human`: consensus of annotators in Label Studio, weighted by gold
  accuracy; `model`: {labelled_by}). affect_scores sha256
  `{snap["affect_scores_sha256"]}`.
- Images come from the ingest batches {", ".join(snap["batches"]) or "-"}; each face's source file is
  in `splits.parquet` (`source_uri`). The licence of each image is its source's: this release adds none
  and grants none.
- Built by pixelsmile-ffe (Apache-2.0). Config: `manifest.json` (`config`).
"""


def shard_pattern(names: list[str]) -> str:
    """WebDataset's brace notation for a split's shards: `train-000000.tar` for one shard,
    `train-{000000..000003}.tar` for four."""
    if len(names) == 1:
        return names[0]
    prefix, first, last = names[0].rsplit("-", 1)[0], names[0].rsplit("-", 1)[1][:-4], names[-1].rsplit("-", 1)[1][:-4]
    return f"{prefix}-{{{first}..{last}}}.tar"


def write_card(folder: Path, manifest: dict, faces: pa.Table) -> list[str]:
    from storage.releases.config import ReleaseConfig
    from storage.releases.shards import plan_shards

    plots = write_plots(folder, manifest, faces)
    # The shards are written later, but their names follow from the faces and the config.
    config = ReleaseConfig.from_json(manifest["config"])
    names = {split: [s.name for s in plan_shards(faces, config.shard_target_bytes) if s.split == split]
             for split in SPLITS}  # fmt: skip
    atomic_write_text(folder / "README.md", card_text(manifest, names))
    return ["README.md", *plots]
