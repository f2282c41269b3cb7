"""Identity vectors and clusters: flips of one person close, different people far, ids stable as
batches arrive, copies of one shot marked as duplicates; the ArcFace path on a tiny ONNX model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from curation.batches import register_new_batch
from curation.curate import curate_batch
from curation.embeddings import ArcFaceEmbedder, EmbeddingSettings, embed_batch, embedder
from curation.faces import FaceSettings, describe, face_models, find_faces
from curation.identities import DEFAULT_SAME_PERSON, assign_identities
from curation.ingest import ingest_batch
from curation.models import ModelError
from storage import catalog, tables
from tests.test_faces import group_photo


def _vector(rgb, which=0, emb=None):
    s = FaceSettings()
    rgb = np.ascontiguousarray(rgb)
    d = describe(rgb, find_faces(rgb, face_models(s), s)[which], s)
    return (emb or embedder(EmbeddingSettings())).embed(d.crop, np.asarray(d.fields["kps5"]).reshape(5, 2))


def test_flipped_copy_is_the_same_person_and_other_people_are_not():
    from skimage import data

    threshold = DEFAULT_SAME_PERSON["dlib_resnet_v1"]
    astro = data.astronaut()
    v, v_flip = _vector(astro), _vector(astro[:, ::-1])
    assert v.shape == (128,) and np.linalg.norm(v - v_flip) < threshold / 2
    group = group_photo()
    others = [_vector(group, k) for k in range(6)]
    pairs = [np.linalg.norm(a - b) for i, a in enumerate(others) for b in others[i + 1 :]]
    assert min(pairs) > threshold and min(np.linalg.norm(v - o) for o in others) > threshold


def build(layout, folder):
    batch = register_new_batch(layout, folder).batch
    ingest_batch(layout, batch)
    curate_batch(layout, batch, workers=1)
    embed_batch(layout, batch, EmbeddingSettings(workers=1))
    return batch


def test_sample_astronauts_are_one_identity_and_ids_stay_stable(layout, sample_dir, tmp_path):
    first = build(layout, sample_dir)
    info = assign_identities(layout)
    assert info["batches_assigned"] == 1 and info["identities"] == 1
    with catalog.connect(layout, persist=False) as con:
        rows = con.execute(
            "SELECT regexp_extract(i.source_uri, '[^/]+$') AS name, d.identity_id, d.duplicate_of "
            "FROM identities d JOIN faces f USING (face_id) JOIN images i USING (image_id)"
        ).fetchall()
    names = {name for name, _, _ in rows}
    for expected in ("astronaut.jpg", "astronaut_flipped.jpg", "astronaut_face_crop.jpg", "astronaut_exif_rotated.jpg",
                     "astronaut_rotated_90.jpg", "astronaut_tilted_15.jpg", "astronaut.webp"):  # fmt: skip
        assert expected in names
    assert len({ident for _, ident, _ in rows}) == 1
    dup = {name: d for name, _, d in rows}
    assert dup["astronaut_flipped.jpg"] is None  # a mirror image is a picture of its own
    assert dup["astronaut_exif_rotated.jpg"] is not None and dup["astronaut.webp"] is not None  # same shot
    before = {r["face_id"]: r["identity_id"] for r in tables.read_table(layout, "identities").to_pylist()}

    # A new batch: a group photo of six other people and one more astronaut copy.
    more = tmp_path / "more"
    more.mkdir()
    import insightface.data

    shutil.copy(insightface.data.__file__.replace("__init__.py", "images/t1.jpg"), more / "group.jpg")
    from PIL import Image

    Image.open(sample_dir / "astronaut_flipped.jpg").save(more / "astro_again.jpg", quality=70)  # re-encoded
    second = build(layout, more)
    info = assign_identities(layout)
    assert info["batches_assigned"] == 1 and info["new_identities"] >= 4  # six people; a turned one may fail pose
    after = tables.read_table(layout, "identities").to_pylist()
    assert {r["face_id"]: r["identity_id"] for r in after if r["batch"] == first} == before  # ids unchanged
    second_rows = [r for r in after if r["batch"] == second]
    astro_id = next(iter(set(before.values())))
    (again,) = [r for r in second_rows if r["identity_id"] == astro_id]  # the copy joins her ...
    assert again["duplicate_of"] is not None  # ... as a copy of the flipped shot
    assert assign_identities(layout)["batches_assigned"] == 0  # nothing left: a no-op


def tiny_arcface(path):
    """A random ArcFace-shaped ONNX model: 1x3x112x112 in, 1x512 out (what insightface routes to
    ArcFaceONNX), built here so no weights are downloaded."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3 * 8 * 8, 512)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 3 * 8 * 8], np.int64), "shape")
    nodes = [
        helper.make_node("AveragePool", ["data"], ["pooled"], kernel_shape=[14, 14], strides=[14, 14], name="pool"),
        helper.make_node("Reshape", ["pooled", "shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["fc1"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 512])],
        [w, shape],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_arcface_path_runs_a_local_onnx_model(tmp_path, layout, sample_dir):
    model_dir = tmp_path / "antelope"
    model_dir.mkdir()
    tiny_arcface(model_dir / "glintr100.onnx")
    emb = ArcFaceEmbedder(str(model_dir))
    from skimage import data

    v = _vector(data.astronaut(), emb=emb)
    assert v.shape == (512,) and abs(np.linalg.norm(v) - 1) < 1e-5 and emb.name == "arcface:glintr100.onnx"
    v2 = _vector(data.astronaut(), emb=emb)
    assert np.allclose(v, v2)  # deterministic

    batch = register_new_batch(layout, sample_dir).batch
    ingest_batch(layout, batch)
    curate_batch(layout, batch, workers=1)
    info = embed_batch(layout, batch, EmbeddingSettings(model="arcface", arcface_model=str(model_dir), workers=1))
    assert info["model"] == "arcface:glintr100.onnx" and info["faces"] == 10
    vectors = tables.read_partition(layout, "face_embeddings", batch).column("vector").to_pylist()
    assert {len(v) for v in vectors} == {512}


def test_bad_arcface_model_paths_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="face_embeddings.arcface_model: no model path is configured"):
        ArcFaceEmbedder("")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="holds no .onnx model"):
        ArcFaceEmbedder(str(tmp_path / "empty"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage" * 50)
    with pytest.raises(ModelError, match=r"face_embeddings.arcface_model: .*bad.onnx is not a valid insightface"):
        ArcFaceEmbedder(str(bad))


def test_nearest_centre_is_the_exhaustive_answer_ties_included():
    """The vectorised search picks what a loop over every identity picks (the earliest of equals),
    while identities are made and their centres move."""
    import numpy as np

    from curation.identities import _Centres, _Identity

    rng = np.random.default_rng(0)
    people = rng.normal(0, 0.05, (60, 128))
    ids: dict[str, _Identity] = {}
    centres = _Centres(ids)
    for k in range(600):
        vec = people[k % 60] + (0 if k % 7 == 0 else rng.normal(0, 0.01, 128))  # exact repeats: ties
        best, dist = centres.nearest(vec)
        loop = min(ids.values(), key=lambda i: float(np.linalg.norm(i.centre - vec)), default=None)
        assert best is loop and (loop is None or dist == float(np.linalg.norm(loop.centre - vec)))
        if best is None or dist > 0.2:
            best = ids[f"i{k}"] = _Identity(f"i{k}")
        best.add(str(k), vec, 0)
        centres.update(best)
    assert 55 <= len(ids) <= 65  # merges happened: the centres moved under the search


def test_the_index_past_the_exact_limit_picks_what_the_exact_search_picks():
    """Past `exact_limit` identities a faiss IVF index proposes candidates: on 2,000 made-up people
    x 5 faces (dlib-like spreads), in a shuffled order, every face gets the identity the exact
    search gives it."""
    import numpy as np

    from curation.identities import assign_vectors

    rng = np.random.default_rng(1)
    people = rng.normal(0, 0.05, (2000, 128))
    faces = np.repeat(people, 5, axis=0) + rng.normal(0, 0.01, (10_000, 128))
    order = rng.permutation(len(faces))
    face_ids, vectors = [f"f{k}" for k in order], faces[order]
    exact = assign_vectors(face_ids, vectors, 0.5, exact_limit=10**9)
    indexed = assign_vectors(face_ids, vectors, 0.5, exact_limit=200)
    assert len(set(exact)) == 2000  # each made-up person one identity
    assert indexed == exact


def test_the_block_search_is_the_exact_search_face_by_face_ties_included():
    """Below the limit, each block of faces is measured against every centre in one matrix product
    and later faces see only the candidates and the centres moved since: the same identity, for
    every face, as measuring every centre face by face, the earliest identity winning a tie (here
    exact ties: people given twice, faces equidistant from two centres) and near-ties."""
    import numpy as np

    from curation.identities import assign_vectors

    rng = np.random.default_rng(3)
    people = rng.normal(0, 0.05, (150, 16))
    people[75:] = people[:75]  # every person twice: their centres tie until faces move them apart
    faces = np.repeat(people, 4, axis=0) + rng.normal(0, 0.02, (600, 16))
    faces[::7] = np.repeat(people, 4, axis=0)[::7]  # some faces on a person's exact vector
    mid = (people[0] + people[1]) / 2
    faces = np.concatenate([faces, np.repeat(mid[None], 20, axis=0)])  # between two people, many times
    order = rng.permutation(len(faces))
    face_ids, vectors = [f"f{k}" for k in order], faces[order]

    def face_by_face(same: float) -> list[str]:
        names, totals, counts, out = [], [], [], []
        for face_id, vec in zip(face_ids, vectors, strict=True):
            if names:
                dist = np.linalg.norm(np.asarray(totals) / np.asarray(counts)[:, None] - vec, axis=1)
                best = int(np.flatnonzero(dist <= dist.min() + 1e-12)[0])  # the earliest of a tie
            if names and dist[best] <= same:
                totals[best] = totals[best] + vec
                counts[best] += 1
            else:
                best = len(names)
                names.append(f"idn_{face_id}"), totals.append(vec.copy()), counts.append(1)
            out.append(names[best])
        return out

    for same in (0.05, 0.12, 0.3):  # many identities, about one per person, and merging people
        assert assign_vectors(face_ids, vectors, same, exact_limit=10**9) == face_by_face(same), same
