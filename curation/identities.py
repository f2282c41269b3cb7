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
    """Every identity's centre as rows of one matrix, in the order identities were made; the
    nearest centre to a vector, with the earliest identity winning a tie.

    Faces come in blocks (`prefetch`): one search proposes each face's CANDIDATES nearest centres,
    and the face then measures exactly those and every centre made or moved since the block began.
    Up to EXACT_LIMIT identities the block search is one float64 matrix product over every centre
    (`_prefetch_exact`), with a bound that sends a face to a full pass when a centre left out could
    tie: exact (60,000 faces searched exactly: 18 s face by face, 7.4 s by blocks). Past it, a
    faiss inverted-file index (IndexIVFFlat over the centres) proposes them; a face then joins the
    identity the exact search picks unless that one is neither proposed nor new in the block:
    measured in benches/scale.py (`identities_ann_agreement`), documented in docs/curation.md.
    faiss because it is well kept, ships CPU wheels, and its IVF index adds and moves vectors in
    ~20 us (an HNSW graph, usearch's or hnswlib's, took 0.85 ms to add and 7 ms to move one here).
    """

    EXACT_LIMIT = 4_096  # identities; below, the block search is exact and a face costs <= 4,096 BLAS rows
    CANDIDATES = 8
    NPROBE = 16  # of ~4 sqrt(n) lists: 99.98% the exact ids on 60k made-up faces (8: 99.7%)
    TIE_MARGIN = 1e-6  # squared distance; far above the rounding of the two products compared
    GROWTH = 4  # retrain the index once the identities are this many times what it was trained on

    def __init__(self, ids: dict[str, _Identity], exact_limit: int | None = None):
        self.idents: list[_Identity] = []
        self.row: dict[str, int] = {}
        self.matrix: np.ndarray | None = None
        self.sq_norms = np.zeros(0)
        self.exact_limit = self.EXACT_LIMIT if exact_limit is None else exact_limit
        self.index = None  # faiss IndexIVFFlat, once there are more than exact_limit identities
        self.trained_on = 0
        self.stale: set[int] = set()  # rows made or moved since the last block search
        self.candidates: dict[str, np.ndarray] = {}  # face_id -> rows the block search proposed
        self.bounds: dict[str, float] = {}  # face_id -> the block search's first value left out (exact only)
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
        self.stale.add(row)

    def prefetch(self, face_ids: list[str], vectors: np.ndarray) -> None:
        """Ask the index for the candidates of the faces that come next (one batched search), after
        bringing it up to date; nothing while the search is exact."""
        n = len(self.idents)
        if not n or not len(face_ids):
            return
        if n <= self.exact_limit:
            self._prefetch_exact(face_ids, np.asarray(vectors, dtype=np.float64))
            return
        import faiss

        if self.index is None or n > self.GROWTH * self.trained_on:
            # (Re)train with ~4 sqrt(n) lists: a list's length, what a search scans, then grows as
            # sqrt(n), not n (with lists fixed, 1M faces cost 18x what 100k did, not ~13x).
            faiss.omp_set_num_threads(1)  # one face at a time between searches: threads cost more
            dim = self.matrix.shape[1]
            lists = max(1, min(4 * int(np.sqrt(n)), n // 39))  # faiss wants ~39 training points per list
            sample = np.random.default_rng(0).permutation(n)[: 64 * lists]  # k-means on a sample: linear
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists)
            self.index.train(np.ascontiguousarray(self.matrix[np.sort(sample)], dtype=np.float32))
            self.index.set_direct_map_type(faiss.DirectMap.Hashtable)  # moves in O(1)
            self.index.nprobe = self.NPROBE
            self.trained_on, self.stale = n, set(range(n))
        if self.stale:
            rows = np.fromiter(sorted(self.stale), dtype=np.int64)
            self.index.remove_ids(rows)
            self.index.add_with_ids(np.ascontiguousarray(self.matrix[rows], dtype=np.float32), rows)
            self.stale.clear()
        _, found = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), self.CANDIDATES)
        self.candidates, self.bounds = dict(zip(face_ids, found, strict=True)), {}

    def _prefetch_exact(self, face_ids: list[str], vectors: np.ndarray) -> None:
        """Every centre against the block's faces in one matrix product (BLAS, float64): each face
        keeps its CANDIDATES nearest rows and the value of the next one, `bound`. Rows that do not
        move stay as measured, so the nearest centre later is among the candidates and the rows
        made or moved since, unless that best is within TIE_MARGIN of `bound` (then `nearest`
        measures every centre): exact, and a face costs one BLAS row instead of a pass of its own."""
        n = len(self.idents)
        approx = self.sq_norms[None, :n] - 2.0 * (vectors @ self.matrix[:n].T)
        keep = min(self.CANDIDATES, n)
        if keep == n:
            found, bound = np.broadcast_to(np.arange(n), (len(face_ids), n)), np.full(len(face_ids), np.inf)
        else:
            part = np.argpartition(approx, keep, axis=1)
            found = part[:, :keep]
            bound = np.take_along_axis(approx, part[:, keep : keep + 1], axis=1)[:, 0]
        self.stale = set()
        self.candidates = dict(zip(face_ids, found, strict=True))
        self.bounds = dict(zip(face_ids, bound.tolist(), strict=True))

    def nearest(self, vec: np.ndarray, face_id: str | None = None) -> tuple[_Identity | None, float]:
        """The identity whose centre is nearest to `vec` and that distance (Euclidean); (None, inf)
        when there are none. With the index, among `face_id`'s prefetched candidates and the
        centres made or moved since."""
        if self.matrix is None:
            return None, float("inf")
        found = self.candidates.pop(face_id, None) if face_id is not None else None
        bound = self.bounds.pop(face_id, None) if face_id is not None else None
        if found is not None:
            rows = np.unique(np.concatenate([found[found >= 0], np.fromiter(self.stale, dtype=np.int64)]))
            live, sq = self.matrix[rows], self.sq_norms[rows]
            approx = sq - 2.0 * (live @ vec)
            if bound is not None and approx.min() + self.TIE_MARGIN >= bound:
                found = None  # a centre the block search ranked lower might be as near: measure all
        if found is None:  # exact: every centre
            rows = None
            live, sq = self.matrix[: len(self.idents)], self.sq_norms[: len(self.idents)]
            approx = sq - 2.0 * (live @ vec)
        # |c - v|^2 = |c|^2 - 2 c.v + |v|^2: one matrix-vector product. Its rounding can reorder
        # near-ties, so the few within 1e-9 of the best are measured exactly, the earliest winning.
        close = np.flatnonzero(approx <= approx.min() + 1e-9)
        if rows is not None:
            close = rows[close]
        exact = [float(np.linalg.norm(self.idents[i].centre - vec)) for i in close]
        k = int(np.argmin(exact))
        return self.idents[int(close[k])], exact[k]


PREFETCH_BLOCK = 256  # faces per block search


def assign_vectors(face_ids: list[str], vectors: np.ndarray, same: float,
                   exact_limit: int | None = None) -> list[str]:  # fmt: skip
    """The heart of `assign_identities` on bare vectors (n x d, in order): each face joins the
    nearest identity within `same` of its centre, else opens its own; returns each face's identity
    id. No labels, variants or duplicates: what benches/scale.py times at 1M faces and the tests
    compare between the exact search and the index (`exact_limit`)."""
    ids: dict[str, _Identity] = {}
    centres = _Centres(ids, exact_limit=exact_limit)
    out = []
    for i, face_id in enumerate(face_ids):
        if i % PREFETCH_BLOCK == 0:
            centres.prefetch(face_ids[i : i + PREFETCH_BLOCK], vectors[i : i + PREFETCH_BLOCK])
        vec = np.asarray(vectors[i], dtype=np.float64)
        best, dist = centres.nearest(vec, face_id)
        if best is not None and dist <= same:
            ident = best
        else:
            ident = ids[f"idn_{face_id}"] = _Identity(f"idn_{face_id}")
        ident.add(face_id, vec, 0)
        centres.update(ident)
        out.append(ident.id)
    return out


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
        vectors.update(zip(emb.column("face_id").to_pylist(), _vectors(emb), strict=True))
        if emb.num_rows:
            model = emb.column("model")[0].as_py()
    hashes = _phashes(layout, assigned)
    for r in sorted(rows, key=lambda r: (r["assigned_at"], r["face_id"])):
        ident = ids.setdefault(r["identity_id"], _Identity(r["identity_id"]))
        # A face whose vector or crop row is gone (its batch's faces rebuilt since, and this one
        # failed then) no longer shapes its identity; its row stays, as assigned rows do.
        if r["duplicate_of"] is None and r["face_id"] in vectors and r["face_id"] in hashes:
            ident.add(r["face_id"], vectors[r["face_id"]], hashes[r["face_id"]])
    return ids, model


def _vectors(emb) -> np.ndarray:
    """A `face_embeddings` table's vectors as one float64 array (rows x dim), without a Python
    list per vector (what made loading 60k faces' state take seconds)."""
    column = emb.column("vector").combine_chunks()
    if not len(column):
        return np.zeros((0, 0))
    return np.asarray(column.flatten(), dtype=np.float64).reshape(len(column), -1)


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
            zip(emb.column("face_id").to_pylist(), _vectors(emb), strict=True),
            key=lambda fv: (-facts[fv[0]][1], fv[0]),
        )
        for i, (face_id, vector) in enumerate(order):
            if i % PREFETCH_BLOCK == 0:  # the index's candidates for the next block, in one search
                block = order[i : i + PREFETCH_BLOCK]
                centres.prefetch([f for f, _ in block], np.asarray([v for _, v in block], dtype=np.float64))
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
                best, dist = centres.nearest(vec, face_id)
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
