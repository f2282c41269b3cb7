"""The triplet loader over real shards: correct triplets, each identity once per epoch across
simulated nodes and DataLoader workers, fresh triplets per epoch, tensors at the chosen size."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch

from storage.layout import Layout
from storage.loader import TripletStream
from storage.releases.build import build_release
from storage.releases.config import ReleaseConfig
from storage.releases.plan import plan_release, release_dir, write_plan
from storage.releases.sample import write_sample_tables
from storage.releases.shards import write_shards
from storage.schemas import CATEGORIES


@pytest.fixture(scope="module")
def release_folder(tmp_path_factory):
    layout = Layout.at(tmp_path_factory.mktemp("loader") / "w")
    write_sample_tables(layout, identities=48, faces_per_identity=7, crop_px=24)
    plan = plan_release(layout, ReleaseConfig(shard_target_bytes=30_000, val_fraction=0.05, bench_fraction=0.05))
    write_plan(layout, plan)
    build_release(layout, plan.version)
    write_shards(layout, plan.version)
    return release_dir(layout, plan.version)


def _keys(ds: TripletStream, workers: int) -> list[str]:
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    return [item["__key__"] for item in loader]


def test_triplets_are_right_with_two_workers(release_folder):
    faces = {r["face_id"]: r for r in pq.read_table(release_folder / "splits.parquet").to_pylist()}
    manifest = json.loads((release_folder / "manifest.json").read_text())
    pairs = {tuple(p) for p in manifest["pairs"]["configured"] + manifest["pairs"]["found"]}
    ds = TripletStream.from_release(release_folder, resolution=16)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    seen = 0
    for batch in loader:
        assert batch["source"].shape[1:] == (3, 16, 16) and batch["source"].dtype == torch.float32
        assert float(batch["target_a"].min()) >= -1.0 and float(batch["target_b"].max()) <= 1.0
        for i, identity in enumerate(batch["identity_id"]):
            src, a, b = (faces[batch["face_ids"][k][i]] for k in range(3))
            assert src["identity_id"] == a["identity_id"] == b["identity_id"] == identity
            assert a["split"] == "train"
            assert (batch["category_a"][i], batch["category_b"][i]) in pairs
            assert batch["category_a"][i] == a["category"] and batch["category_b"][i] == b["category"]
            assert float(batch["alpha_a"][i]) == pytest.approx(a[a["category"]])
            assert float(batch["alpha_b"][i]) == pytest.approx(b[b["category"]])
            assert batch["scores_a"][i].tolist() == pytest.approx([a[c] for c in CATEGORIES])
        seen += len(batch["identity_id"])
    assert seen == manifest["counts"]["triplets"]["train"] > 0


def test_each_sample_exactly_once_per_epoch_across_two_nodes_and_two_workers(release_folder, monkeypatch):
    whole = TripletStream.from_release(release_folder, decode=False)
    assert len(whole.shards) >= 4
    expected = [item["__key__"] for item in whole]
    assert len(expected) == len(set(expected))
    parts = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        parts.append(_keys(TripletStream.from_release(release_folder, decode=False), workers=2))
    assert all(parts)  # both nodes got work
    assert Counter(parts[0] + parts[1]) == Counter(expected)  # all of it, once
    identities = [{k.split("/")[0] for k in p} for p in parts]
    assert not identities[0] & identities[1]  # a sample (identity) is read by one node only


def test_every_epoch_forms_fresh_triplets_from_the_same_samples(release_folder):
    ds = TripletStream.from_release(release_folder, decode=False)
    first = [item["__key__"] for item in ds]
    ds.set_epoch(1)
    second = [item["__key__"] for item in ds]
    assert first != second  # new order and new target choices
    assert {k.split("/")[0] for k in first} == {k.split("/")[0] for k in second}
    ds.set_epoch(0)
    assert [item["__key__"] for item in ds] == first  # an epoch is reproducible


def test_shards_stream_through_a_pipe_as_from_object_storage(release_folder, tmp_path):
    """`pipe:` URLs are how webdataset reads from S3 or GCS (`aws s3 cp ... -`); `cat` stands in."""
    import shutil

    remote = tmp_path / "bucket" / "shards"
    shutil.copytree(release_folder / "shards", remote)
    local = TripletStream.from_release(release_folder, decode=False)
    piped = TripletStream.from_release(release_folder, decode=False, shard_url=f"pipe:cat {remote}/{{name}}")
    assert piped.shards[0].startswith("pipe:cat ") and str(release_folder) not in piped.shards[0]
    assert [i["__key__"] for i in piped] == [i["__key__"] for i in local]


def test_plain_webdataset_reads_the_shards_as_the_card_says(release_folder):
    import webdataset as wds
    from PIL import Image

    shards = [str(p) for p in sorted((release_folder / "shards").glob("train-*.tar"))]
    for sample in wds.WebDataset(shards, shardshuffle=False).decode("pil"):
        doc = sample["json"]
        assert doc["identity_id"] == sample["__key__"]
        for face in doc["faces"]:
            assert isinstance(sample[face["member"]], Image.Image)


# --- nothing damaged is trained on --------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_shards(tmp_path_factory):
    """A release whose shards hold several samples each."""
    layout = Layout.at(tmp_path_factory.mktemp("loader-big") / "w")
    write_sample_tables(layout, identities=24, faces_per_identity=7, crop_px=24)
    plan = plan_release(layout, ReleaseConfig(shard_target_bytes=400_000, val_fraction=0.0, bench_fraction=0.0))
    write_plan(layout, plan)
    build_release(layout, plan.version)
    write_shards(layout, plan.version)
    return release_dir(layout, plan.version)


def _copy_release(release_folder, tmp_path):
    import shutil

    copy = tmp_path / release_folder.name
    shutil.copytree(release_folder, copy)
    shard = sorted((copy / "shards").glob("train-*.tar"))[0]
    return copy, shard


def _members(shard):
    import tarfile

    with tarfile.open(shard) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def _write_tar(path, members):
    import io
    import tarfile

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _drain(folder):
    ds = TripletStream.from_release(folder, split="train", resolution=16)
    return sum(1 for _ in ds)


def test_a_shard_cut_at_a_sample_boundary_is_an_error(shared_shards, tmp_path):
    """Found: a shard cut between two samples is a valid tar: 45 triplets instead of 50, no error."""
    from storage.loader import ShardError

    copy, shard = _copy_release(shared_shards, tmp_path)
    members = _members(shard)
    last_key = members[-1][0].name.split(".")[0]
    _write_tar(shard, [(m.name, d) for m, d in members if not m.name.startswith(last_key)])
    with pytest.raises(ShardError, match=rf"{shard.name}: (\d+) samples where the release wrote (\d+)") as info:
        _drain(copy)
    written = json.loads((copy / "manifest.json").read_text())["shards"]["train"][0]["samples"]
    assert f"{written - 1} samples where the release wrote {written}" in str(info.value) and written > 1


def test_a_flipped_byte_in_a_crop_is_caught_by_its_hash(shared_shards, tmp_path):
    """Found: 13% of single-byte flips in a crop still decode, to other pixels, and were trained on;
    the others raised OSError without the shard's name."""
    from storage.loader import ShardError

    copy, shard = _copy_release(shared_shards, tmp_path)
    members = _members(shard)
    k = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".png"))
    name, data = members[k][0].name, bytearray(members[k][1])
    data[len(data) // 2] ^= 0x01  # deep in the image data: often still a decodable PNG
    _write_tar(shard, [(m.name, bytes(data) if i == k else d) for i, (m, d) in enumerate(members)])
    key, face = name.split(".")[0], name.split(".")[1]
    with pytest.raises(ShardError, match=rf"{shard.name}: sample {key}: face {face}: the crop's sha256"):
        _drain(copy)


@pytest.mark.parametrize("damage", ["out_of_order", "no_json", "no_png"])
def test_a_malformed_sample_yields_nothing_and_names_shard_and_key(shared_shards, tmp_path, damage):
    """Found: a malformed sample yielded triplets from the half sample, then failed with a bare
    `KeyError: 'json'`."""
    from storage.loader import ShardError

    copy, shard = _copy_release(shared_shards, tmp_path)
    members = [(m.name, d) for m, d in _members(shard)]
    first_key = members[0][0].split(".")[0]
    mine = [x for x in members if x[0].startswith(first_key + ".")]
    rest = [x for x in members if not x[0].startswith(first_key + ".")]
    if damage == "out_of_order":  # the json first, the pngs after the next sample
        members = [mine[0], *rest[:3], *mine[1:], *rest[3:]]
        expected = "appears twice"
    elif damage == "no_json":
        members = [x for x in mine if not x[0].endswith(".json")] + rest
        expected = "no json member"
    else:
        members = [x for x in mine if not x[0].endswith(".png")][:1] + mine[2:] + rest
        expected = "has no member"
    _write_tar(shard, members)
    ds = TripletStream([str(shard)], [("fear", "surprised"), ("angry", "disgust")], resolution=16)
    got = []
    with pytest.raises(ShardError, match=rf"{shard.name}: sample .*{expected}"):
        for item in ds:
            got.append(item["identity_id"])
    assert first_key.split("/")[-1] not in got  # nothing from the damaged sample


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_decoding_gives_pillows_pixels_for_every_png_kind(mode):
    """Release crops (8-bit RGB) take libpng's faster path; every other kind goes through Pillow;
    both give Pillow's RGB pixels exactly, at the size asked for."""
    import io

    import numpy as np
    from PIL import Image

    from storage.loader import _rgb8_png, decode_image, image_to_tensor

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    im = rgb.convert(mode) if mode != "I;16" else Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint16))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    data = buf.getvalue()
    assert (_rgb8_png(data, 48) is not None) == (mode == "RGB")
    with Image.open(io.BytesIO(data)) as ref:
        expected = image_to_tensor(ref.convert("RGB"))
    assert torch.equal(decode_image(data, 48), expected)
    assert decode_image(data, 24).shape == (3, 24, 24)


def test_an_empty_shard_list_is_a_clear_error():
    with pytest.raises(ValueError, match="no shards"):
        TripletStream([], [("happy", "sad")])


def test_a_shard_replaced_by_another_of_the_release_is_refused(release_folder, tmp_path):
    """Found: a shard overwritten by a copy of another shard with as many samples trained silently
    (those identities twice, the others never); the release's index says which keys each shard holds."""
    import shutil

    from storage.loader import ShardError

    copy = tmp_path / release_folder.name
    shutil.copytree(release_folder, copy)
    first, second = sorted((copy / "shards").glob("train-*.tar"))[:2]
    shutil.copyfile(second, first)
    with pytest.raises(ShardError, match=rf"{first.name}: sample \S+ is not one the release wrote in this shard"):
        _drain(copy)


def _rewrite_first_json(shard, change):
    """The shard with its first sample's json document changed by `change(doc)` (extra members kept)."""
    members = [(m.name, d) for m, d in _members(shard)]
    k = next(i for i, (n, _) in enumerate(members) if n.endswith(".json"))
    doc = json.loads(members[k][1])
    change(doc)
    members[k] = (members[k][0], json.dumps(doc).encode())
    _write_tar(shard, members)
    return members[k][0].split(".")[0], doc


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("score_out_of_range", r"happy=5\.0 \(scores are in \[0, 1\]"),
        ("score_missing", r"sad=None"),
        ("face_dropped", r"its json lists faces .* the release's index"),
        ("no_member_field", r"its json cannot be read \(KeyError: 'member'\)"),
        ("other_identity", r"its json is of identity someone-else"),
        ("score_bool", r"happy=True"),
        ("intensity_missing", r"intensity '\(missing\)'"),
        ("intensity_bin_text", r"intensity_bin 'a'"),
        ("no_crop_sha256", r"crop_sha256 None"),
        ("unknown_score_key", r"unknown categories in scores: joy"),
    ],
)
def test_a_damaged_sample_json_is_refused(shared_shards, tmp_path, damage, expected):
    """Found: the sample json was not checked: a score of 5.0 trained, a face dropped from the json
    (its png still there) was ignored, a face without `member` raised a bare KeyError."""
    from storage.loader import ShardError

    copy, shard = _copy_release(shared_shards, tmp_path)

    def change(doc):
        face = doc["faces"][0]
        if damage == "score_out_of_range":
            face["scores"]["happy"] = 5.0
        elif damage == "score_missing":
            del face["scores"]["sad"]
        elif damage == "face_dropped":
            doc["faces"] = doc["faces"][1:]
        elif damage == "no_member_field":
            del face["member"]
        elif damage == "score_bool":
            face["scores"]["happy"] = True
        elif damage == "intensity_missing":
            del face["intensity"]
        elif damage == "intensity_bin_text":
            face["intensity_bin"] = "a"
        elif damage == "no_crop_sha256":
            face["crop_sha256"] = None
        elif damage == "unknown_score_key":
            face["scores"]["joy"] = 5
        else:
            doc["identity_id"] = "someone-else"

    key, _ = _rewrite_first_json(shard, change)
    with pytest.raises(ShardError, match=rf"{shard.name}: sample {key}: .*{expected}"):
        _drain(copy)


def test_a_face_the_json_does_not_list_is_refused_without_the_index(shared_shards, tmp_path):
    """Shards read from elsewhere (no index.parquet beside them): a png no face lists is still refused."""
    from storage.loader import ShardError

    copy, shard = _copy_release(shared_shards, tmp_path)
    key, doc = _rewrite_first_json(shard, lambda d: d.update(faces=d["faces"][1:]))
    (copy / "shards" / "index.parquet").unlink()
    with pytest.raises(ShardError, match=rf"{shard.name}: sample {key}: members no face lists: \S+\.png"):
        _drain(copy)


def test_a_shard_cut_inside_a_member_is_a_shard_error(shared_shards, tmp_path):
    """Found: a tar cut inside a member raised TruncatedTarError, which is not a ShardError."""
    from storage.loader import ShardError

    copy, shard = _copy_release(shared_shards, tmp_path)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardError, match=rf"{shard.name}: ends inside"):
        _drain(copy)


def test_shards_read_through_commands_are_checked_and_their_failures_named(shared_shards, tmp_path):
    """Found: a failing `pipe:` command raised a bare OSError (from closing the pipe), and a URL
    whose last word was not the shard (`pipe:cat -- PATH`, `curl -s -L URL`) switched every
    release check off: a cut shard trained silently."""
    from storage.loader import ShardError

    copy, shard = _copy_release(shared_shards, tmp_path)
    members = _members(shard)
    last_key = members[-1][0].name.split(".")[0]
    _write_tar(shard, [(m.name, d) for m, d in members if not m.name.startswith(last_key)])
    through_cat = TripletStream.from_release(copy, resolution=16, shard_url=f"pipe:cat -- {copy}/shards/{{name}}")
    with pytest.raises(ShardError, match=rf"{shard.name}: \d+ samples where the release wrote \d+"):
        sum(1 for _ in through_cat)
    failing = TripletStream.from_release(copy, resolution=16, shard_url="pipe:false {name}")
    with pytest.raises(ShardError, match=r"train-\d+\.tar: (cannot be read|its stream failed).*exit 1"):
        sum(1 for _ in failing)
    unnamed = TripletStream.from_release(copy, resolution=16, shard_url=f"pipe:cat {copy}/shards/$(echo {{name}})")
    with pytest.raises(ShardError, match=r"no shard of this release is named '\$\(echo train-\d+\.tar\)'"):
        sum(1 for _ in unnamed)


def test_a_missing_shard_file_is_a_shard_error(shared_shards, tmp_path):
    """Found: FileNotFoundError (IsADirectoryError for a folder) from webdataset's opener."""
    from storage.loader import ShardError

    copy, shard = _copy_release(shared_shards, tmp_path)
    shard.unlink()
    with pytest.raises(ShardError, match=rf"{shard.name}: cannot be opened \(FileNotFoundError"):
        _drain(copy)
    shard.mkdir()
    with pytest.raises(ShardError, match=rf"{shard.name}: cannot be opened \(IsADirectoryError"):
        _drain(copy)
