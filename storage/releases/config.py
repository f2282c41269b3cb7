"""The release config: every knob that changes a release's bytes, and so its version."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from storage.schemas import CATEGORIES, CONFUSABLE_PAIRS

SPLITS: tuple[str, ...] = ("train", "val", "bench")
MISSING_CROP_POLICIES = ("skip", "fail")


@dataclass(frozen=True)
class ReleaseConfig:
    # Identity-disjoint splits: an identity's split is a hash of its id (with the salt), so it never
    # moves when data is added. The bench split never trains.
    val_fraction: float = 0.1
    bench_fraction: float = 0.1
    split_salt: str = "ffe-split-v1"
    score_decimals: int = 3  # scores are rounded to this many decimals (and so is the version's hash)
    domains: tuple[str, ...] = ("real", "anime")
    # Triplets: a face is a target of category c when c is its dominant score and at least this high.
    min_target_score: float = 0.3
    intensity_bins: int = 3  # equal-width bins of the target's score, balanced in triplets
    pairs: tuple[tuple[str, str], ...] = CONFUSABLE_PAIRS
    extra_pairs: int = 2  # more pairs: the most correlated categories (train split) not paired yet
    min_pair_correlation: float = 0.3
    max_triplets_per_pair: int = 4  # per identity and pair
    triplet_seed: int = 0
    shard_target_bytes: int = 1_000_000_000
    missing_crop: str = "skip"  # a face whose crop file is gone: leave it out (recorded) or stop
    # Provenance: which batches' faces enter (real photos, generated expression variants), and at most
    # this many generated faces per real face of an identity (0: no cap), chosen by a hash of face_id.
    provenances: tuple[str, ...] = ("real", "generated")
    max_generated_per_real: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not (0 <= self.val_fraction < 1 and 0 <= self.bench_fraction < 1):
            problems.append("val_fraction and bench_fraction must be in [0, 1)")
        elif self.val_fraction + self.bench_fraction >= 1:
            problems.append("val_fraction + bench_fraction must leave room for train (< 1)")
        if not 0 <= self.score_decimals <= 6:
            problems.append("score_decimals must be 0..6")
        if unknown := sorted(set(self.domains) - {"real", "anime"}):
            problems.append(f"unknown domain(s) {unknown}: real, anime")
        elif not self.domains or len(set(self.domains)) != len(self.domains):
            problems.append(f"domains must name at least one of real, anime, each once, not {list(self.domains)}")
        if not 0 < self.min_target_score <= 1:
            problems.append("min_target_score must be in (0, 1]")
        if self.intensity_bins < 1:
            problems.append("intensity_bins must be at least 1")
        seen: set[frozenset] = set()
        for pair in self.pairs:
            if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(CATEGORIES):
                problems.append(f"pair {list(pair)} must name two different categories of {list(CATEGORIES)}")
            elif frozenset(pair) in seen:
                problems.append(f"pair {list(pair)} is given twice (a pair has no order)")
            seen.add(frozenset(pair))
        if self.extra_pairs < 0 or self.max_triplets_per_pair < 1:
            problems.append("extra_pairs must be >= 0 and max_triplets_per_pair >= 1")
        if self.shard_target_bytes < 1:
            problems.append("shard_target_bytes must be positive")
        if unknown := sorted(set(self.provenances) - {"real", "generated"}):
            problems.append(f"unknown provenance(s) {unknown}: real, generated")
        elif not self.provenances:
            problems.append("provenances must name at least one of real, generated")
        if self.max_generated_per_real < 0:
            problems.append("max_generated_per_real must be >= 0")
        if self.missing_crop not in MISSING_CROP_POLICIES:
            problems.append(f"missing_crop must be one of {MISSING_CROP_POLICIES}")
        if problems:
            raise ValueError("invalid release config: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["domains"] = list(self.domains)
        d["provenances"] = list(self.provenances)
        d["pairs"] = [list(p) for p in self.pairs]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReleaseConfig:
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown release config key(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "domains" in d:
            d["domains"] = tuple(d["domains"])
        if "provenances" in d:
            d["provenances"] = tuple(d["provenances"])
        if "pairs" in d:
            d["pairs"] = tuple(tuple(p) for p in d["pairs"])
        return cls(**d)

    def bin_of(self, score: float) -> int:
        return min(int(score * self.intensity_bins), self.intensity_bins - 1)
