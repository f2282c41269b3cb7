"""Identity clusters across all batches, built incrementally so that ids never change.

Batches are assigned in registration order, once each: a batch's faces (those that passed quality
and have a vector) join the nearest existing identity when within `same_person_distance` of its
centre (the mean vector of its members), else open a new one named after its first face. A face
that is the same shot as an earlier member (perceptual hash of the aligned crops within
`duplicate_hash_bits` and vectors within `duplicate_distance`: re-encoded, resized, cropped or
rotated copies) is marked `duplicate_of` that member, does not move the centre, and stays out of
releases. Rows of an assigned batch are never rewritten.

A face of a generated batch (an expression variant, curation/generation.py) joins its source's
identity when its vector is within `max_variant_drift` of its source face's; further, it is
rejected (`failures`, stage `identities`, reason `identity_drift`, with the distance): an edit that
changed who the person is must not teach the model to.

A face whose image came with an identity label (curation/labels.py) joins the identity that label
names (`idn_l<hash of the label>`, the same across batches) instead of the nearest one; and two
faces whose imported scores differ are different pictures, however alike their crops.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from curation.batches import manifests
from curation.generation import variant_sources
from curation.labels import labels_by_face
from curation.quality import hamming
from storage import tables
from storage.layout import Layout

# Same-person distance by embedding model (Euclidean; ArcFace vectors are unit length).
DEFAULT_SAME_PERSON = {"dlib_resnet_v1": 0.5, "arcface": 1.1}  # arcface: cos similarity > 0.395
# Copies of one shot: dlib moves a grey or re-encoded copy by up to ~0.2; a mirror image differs by
# ~0.2 too, but its hash by ~32 bits, so it is a new picture (as it is for training).
DEFAULT_DUPLICATE = {"dlib_resnet_v1": 0.25, "arcface": 0.5}


@dataclass(frozen=True)
class IdentitySettings:
    same_person_distance: float = 0.0  # 0: the embedding model's default (DEFAULT_SAME_PERSON)
    duplicate_distance: float = 0.0  # 0: the model's default (DEFAULT_DUPLICATE)
    duplicate_hash_bits: int = 12  # of 64
    max_variant_drift: float = 0.0  # a variant's distance to its source face; 0: same_person_distance

    def thresholds(self, model: str) -> tuple[float, float]:
        family = "arcface" if model.startswith("arcface") else model
        same = self.same_person_distance or DEFAULT_SAME_PERSON.get(family, 0.5)
        dup = self.duplicate_distance or DEFAULT_DUPLICATE.get(family, 0.25)
        return same, dup


def labelled_identity_id(label: str) -> str:
    return f"idn_l{hashlib.sha256(label.encode()).hexdigest()[:15]}"


def _same_scores(a: dict | None, b: dict | None, tolerance: float = 0.05) -> bool:
    """Whether two faces' imported scores allow them to be one shot (unknown scores do)."""
    return a is None or b is None or max(abs(a[c] - b[c]) for c in a) <= tolerance


class _Identity:
    def __init__(self, identity_id: str):
        self.id = identity_id
        self.total: np.ndarray | None = None
        self.count = 0
        self.originals: list[tuple[str, np.ndarray, int]] = []  # (face_id, vector, phash)

    def add(self, face_id: str, vec: np.ndarray, phash: int) -> None:
        self.total = vec.copy() if self.total is None else self.total + vec
        self.count += 1
        self.originals.append((face_id, vec, phash))

    @property
    def centre(self) -> np.ndarray:
        return self.total / self.count


class _Centres:
    """Every identity's centre as rows of one matrix, in the order identities were made: the
    nearest centre to a vector is one vectorised pass (the Python loop over identities it replaces
    cost 73 s for 8,000 faces), with the same tie-break (the earliest identity)."""

    def __init__(self, ids: dict[str, _Identity]):
        self.idents: list[_Identity] = []
        self.row: dict[str, int] = {}
        self.matrix: np.ndarray | None = None
        self.sq_norms = np.zeros(0)
        for ident in ids.values():
            self.update(ident)

    def update(self, ident: _Identity) -> None:
        """Add `ident`, or move its row to its current centre."""
        if ident.id not in self.row:
            if self.matrix is None:
                self.matrix, self.sq_norms = np.zeros((16, len(ident.centre))), np.zeros(16)
            elif len(self.idents) == len(self.matrix):  # grow by doubling: amortised O(1) per identity
                self.matrix = np.concatenate([self.matrix, np.zeros_like(self.matrix)])
                self.sq_norms = np.concatenate([self.sq_norms, np.zeros_like(self.sq_norms)])
            self.row[ident.id] = len(self.idents)
            self.idents.append(ident)
        row, centre = self.row[ident.id], ident.centre
        self.matrix[row], self.sq_norms[row] = centre, centre @ centre

    def nearest(self, vec: np.ndarray) -> tuple[_Identity | None, float]:
        """The identity whose centre is nearest to `vec` and that distance (Euclidean); (None, inf)
        when there are none."""
        if self.matrix is None:
            return None, float("inf")
        live = self.matrix[: len(self.idents)]
        # |c - v|^2 = |c|^2 - 2 c.v + |v|^2: one matrix-vector product. Its rounding can reorder
        # near-ties, so the few within 1e-9 of the best are measured exactly, the earliest winning.
        approx = self.sq_norms[: len(self.idents)] - 2.0 * (live @ vec)
        close = np.flatnonzero(approx <= approx.min() + 1e-9)
        exact = [float(np.linalg.norm(self.idents[i].centre - vec)) for i in close]
        k = int(np.argmin(exact))
        return self.idents[int(close[k])], exact[k]


def _load_state(layout: Layout, assigned: list[str]) -> tuple[dict[str, _Identity], str | None]:
    """Identities as the already-assigned batches left them."""
    ids: dict[str, _Identity] = {}
    model = None
    if not assigned:
        return ids, model
    rows = tables.read_table(layout, "identities").to_pylist()
    vectors = {}
    for batch in assigned:
        emb = tables.read_partition(layout, "face_embeddings", batch)
        vectors.update(zip(emb.column("face_id").to_pylist(), emb.column("vector").to_pylist(), strict=True))
        if emb.num_rows:
            model = emb.column("model")[0].as_py()
    hashes = _phashes(layout, assigned)
    for r in sorted(rows, key=lambda r: (r["assigned_at"], r["face_id"])):
        ident = ids.setdefault(r["identity_id"], _Identity(r["identity_id"]))
        if r["duplicate_of"] is None:
            ident.add(r["face_id"], np.asarray(vectors[r["face_id"]], dtype=np.float64), hashes[r["face_id"]])
    return ids, model


def _phashes(layout: Layout, batches: list[str]) -> dict[str, int]:
    return {face_id: h for face_id, (h, _) in _face_facts(layout, batches).items()}


def _face_facts(layout: Layout, batches: list[str]) -> dict[str, tuple[int, float]]:
    """face_id -> (crop hash, face size in source pixels)."""
    out = {}
    for batch in batches:
        for r in tables.read_partition(layout, "faces", batch).select(["face_id", "crop_phash", "face_px"]).to_pylist():
            out[r["face_id"]] = (r["crop_phash"], r["face_px"])
    return out


def pending_batches(layout: Layout) -> tuple[list[str], list[str]]:
    """(batches already assigned, batches with vectors waiting), in registration order."""
    order = [m.batch for m in manifests(layout)]
    have_vectors = set(tables.partitions(layout, "face_embeddings"))
    assigned = set(tables.partitions(layout, "identities"))
    return [b for b in order if b in assigned], [b for b in order if b in have_vectors and b not in assigned]


def assign_identities(layout: Layout, settings: IdentitySettings = IdentitySettings()) -> dict:
    """Assign every waiting batch; returns counts for the run's metadata."""
    assigned, waiting = pending_batches(layout)
    ids, model = _load_state(layout, assigned)
    centres = _Centres(ids)
    labels = labels_by_face(layout, assigned)  # scores of earlier originals, for the duplicate test
    new_faces = new_ids = dups = drifted = 0
    for batch in waiting:
        emb = tables.read_partition(layout, "face_embeddings", batch)
        batch_models = set(emb.column("model").to_pylist())
        if model is not None and batch_models - {model}:
            raise ValueError(
                f"{batch} has vectors of {sorted(batch_models)} but identities use {model}: "
                "re-embed the batch with the same model"
            )
        if batch_models:
            model = next(iter(batch_models))
        same, dup = settings.thresholds(model or "")
        facts = _face_facts(layout, [batch])
        hashes = {f: h for f, (h, _) in facts.items()}
        labels.update(labels_by_face(layout, [batch]))
        variant_of = variant_sources(layout, batch)
        # A variant's source is a usable face, so an original of its identity: (identity, vector).
        source_of = {f: (i, v) for i in ids.values() for f, v, _ in i.originals} if variant_of else {}
        rows, rejected = [], []
        # Biggest faces first: of several copies of a shot, the sharpest source stays the original.
        order = sorted(
            zip(emb.column("face_id").to_pylist(), emb.column("vector").to_pylist(), strict=True),
            key=lambda fv: (-facts[fv[0]][1], fv[0]),
        )
        for face_id, vector in order:
            vec = np.asarray(vector, dtype=np.float64)
            label = labels.get(face_id, {})
            best, dist = None, float("inf")
            if variant := variant_of.get(face_id):
                source, source_vec = source_of.get(variant["source_face_id"], (None, None))
                drift = float("inf") if source is None else float(np.linalg.norm(source_vec - vec))
                limit = settings.max_variant_drift or same
                if drift > limit:
                    rejected.append(dict(item=face_id, stage="identities", reason="identity_drift", partition=batch,
                                         detail=f"variant {variant['variant_key']} of face {variant['source_face_id']} "
                                                f"({variant['category']} {variant['intensity']:.2f}, "
                                                f"{variant['generator']}): distance {drift:.3f} to its source "
                                                f"> {limit:.3f}", at=datetime.now(UTC)))  # fmt: skip
                    continue
                best, dist, same_person = source, float(np.linalg.norm(source.centre - vec)), True
            elif label.get("identity"):
                best = ids.get(labelled_identity_id(label["identity"]))
                dist = 0.0 if best is None else float(np.linalg.norm(best.centre - vec))
                same_person = best is not None
            else:
                best, dist = centres.nearest(vec)
                same_person = best is not None and dist <= same
            duplicate_of = None
            if same_person:
                for orig_id, orig_vec, orig_hash in best.originals:
                    if (hamming(orig_hash, hashes[face_id]) <= settings.duplicate_hash_bits
                            and float(np.linalg.norm(orig_vec - vec)) <= dup
                            and _same_scores(labels.get(orig_id, {}).get("scores"), label.get("scores"))):  # fmt: skip
                        duplicate_of = orig_id
                        break
                ident = best
            else:
                new_id = labelled_identity_id(label["identity"]) if label.get("identity") else f"idn_{face_id}"
                ident = ids[new_id] = _Identity(new_id)
                dist = 0.0
                new_ids += 1
            if duplicate_of is None:
                ident.add(face_id, vec, hashes[face_id])
                centres.update(ident)
            else:
                dups += 1
            rows.append(
                dict(
                    face_id=face_id,
                    identity_id=ident.id,
                    duplicate_of=duplicate_of,
                    distance=dist,
                    batch=batch,
                    assigned_at=datetime.now(UTC),
                )
            )
        drifted += len(rejected)
        tables.write_partition(layout, "identities", batch, rows)
        if rejected or variant_of:
            tables.write_partition(layout, "failures", tables.failures_partition("identities", batch), rejected)
        new_faces += len(rows)
    return {
        "batches_assigned": len(waiting),
        "faces_assigned": new_faces,
        "new_identities": new_ids,
        "duplicates": dups,
        "variants_rejected": drifted,
        "identities": len(ids),
        "model": model or "",
    }
