"""Bench tasks: (source face, target category, alpha grid) from a release's bench split, whose people
never train. One source per person, the most neutral of their faces; every category (or those
configured) for each. Stored with the release, under `bench/`, named by the config's hash, written
once: the same release and config always give the same tasks, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_open, atomic_write_text
from storage.schemas import CATEGORIES

TASKS = pa.schema(
    [
        pa.field("task_id", pa.string(), nullable=False),  # <identity_id>-<category>: no dots
        pa.field("identity_id", pa.string(), nullable=False),
        pa.field("source_face_id", pa.string(), nullable=False),
        pa.field("image", pa.string(), nullable=False),  # in the release folder
        pa.field("domain", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("alphas", pa.list_(pa.float64()), nullable=False),
    ]
)


@dataclass(frozen=True)
class BenchConfig:
    categories: tuple[str, ...] = CATEGORIES
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
    max_sources: int | None = None  # None: every bench person; else the first N by identity id
    seed: int = 0  # of the editor's noise: part of a task's definition
    bootstrap: int = 1000  # resamples of the sources for the intervals

    def __post_init__(self):
        if unknown := sorted(set(self.categories) - set(CATEGORIES)):
            raise ValueError(f"bench config: unknown categories {unknown}")
        if not all(isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a) for a in self.alphas):
            raise ValueError(f"bench config: alphas must be numbers, not {list(self.alphas)}")
        if not self.alphas or sorted(self.alphas) != list(self.alphas) or self.alphas[0] < 0:
            raise ValueError(f"bench config: alphas must be non-negative and increasing, not {self.alphas}")
        for key, low in (("seed", 0), ("bootstrap", 1), ("max_sources", 1)):
            value = getattr(self, key)
            if value is None and key == "max_sources":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"bench config: {key} must be an integer of at least {low}, not {value!r}")

    @classmethod
    def from_dict(cls, d: dict) -> BenchConfig:
        known = set(cls.__dataclass_fields__)
        if unknown := sorted(set(d) - known):
            raise ValueError(f"bench config: unknown key(s) {unknown}; known: {sorted(known)}")
        d = {k: tuple(v) if k in ("categories", "alphas") else v for k, v in d.items()}
        return cls(**d)

    def digest(self) -> str:
        """What makes two task lists differ (the bootstrap count does not)."""
        key = {k: v for k, v in asdict(self).items() if k != "bootstrap"}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def sources(release: Path) -> list[dict]:
    """The most neutral face of every bench-split person (lowest top intensity; ties: face id), a
    real photo where the person has one (a generated variant only where they have none)."""
    columns = ["face_id", "identity_id", "split", "image", "domain", "intensity"]
    table = pq.read_table(Path(release) / "splits.parquet")
    if "provenance" not in table.column_names:  # a release made before format 2
        table = table.append_column("provenance", pa.nulls(table.num_rows, pa.string()))
    rows = table.select([*columns, "provenance"]).to_pylist()
    best: dict[str, dict] = {}
    bench = [r for r in rows if r["split"] == "bench"]
    for r in sorted(bench, key=lambda r: (r["provenance"] == "generated", r["intensity"], r["face_id"])):
        best.setdefault(r["identity_id"], {k: r[k] for k in columns})
    return [best[i] for i in sorted(best)]


def tasks_path(release: Path, config: BenchConfig) -> Path:
    return Path(release) / "bench" / f"tasks-{config.digest()}.parquet"


def bench_tasks(release: Path, config: BenchConfig = BenchConfig()) -> pa.Table:
    """The release's tasks for `config`, computed once and then read from `bench/`."""
    path = tasks_path(release, config)
    if path.is_file():
        return pq.read_table(path, schema=TASKS)
    chosen = sources(release)
    if config.max_sources is not None:
        chosen = chosen[: config.max_sources]
    if not chosen:
        raise ValueError(f"release {Path(release).name} has no bench faces: nothing to benchmark")
    rows = [{"task_id": f"{s['identity_id']}-{c}", "identity_id": s["identity_id"], "source_face_id": s["face_id"],
             "image": s["image"], "domain": s["domain"], "category": c, "alphas": list(config.alphas)}
            for s in chosen for c in config.categories]  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=TASKS)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path.with_suffix(".json"), json.dumps(asdict(config), indent=1, sort_keys=True) + "\n")
    with atomic_open(path) as f:
        pq.write_table(table, f, compression="zstd")
    return table
