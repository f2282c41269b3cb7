"""Releases on made-up labelled work folders: versions, splits, triplets, shards, verification, diff."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest

from storage import catalog, tables
from storage.errors import StorageError
from storage.layout import Layout
from storage.releases.build import build_release
from storage.releases.config import ReleaseConfig
from storage.releases.diff import diff_releases
from storage.releases.plan import plan_release, release_dir, split_of, write_plan
from storage.releases.sample import write_sample_tables
from storage.releases.shards import write_shards
from storage.releases.triplets import TRIPLET_SCHEMA
from storage.releases.verify import verify_release
from storage.schemas import CATEGORIES

SMALL_SHARDS = ReleaseConfig(shard_target_bytes=60_000)  # two or three samples a shard


def release(layout: Layout, config: ReleaseConfig = SMALL_SHARDS) -> str:
    """Plan, build and shard the release the work folder's tables give; its version."""
    plan = plan_release(layout, config)
    write_plan(layout, plan)
    build_release(layout, plan.version)
    write_shards(layout, plan.version)
    return plan.version


def digests(folder: Path, pattern: str) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob(pattern))}  # fmt: skip


def test_two_builds_from_the_same_inputs_are_byte_identical(tmp_path):
    a, b = Layout.at(tmp_path / "a"), Layout.at(tmp_path / "b")
    for layout in (a, b):
        write_sample_tables(layout, identities=30, faces_per_identity=5)
    va, vb = release(a), release(b)
    assert va == vb
    fa, fb = release_dir(a, va), release_dir(b, vb)
    tars = digests(fa, "shards/*.tar")
    assert len(tars) > 3 and tars == digests(fb, "shards/*.tar")
    for name in ("splits.parquet", "triplets.jsonl", "triplets_val.jsonl", "README.md", "shards/index.parquet"):
        assert (fa / name).read_bytes() == (fb / name).read_bytes(), name
    assert digests(fa, "plots/*.png") == digests(fb, "plots/*.png")
    # A tar holds nothing of the machine or the moment that wrote it.
    with tarfile.open(next(fa.glob("shards/train-*.tar"))) as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}

    # Planning again from unchanged inputs: the same version, and nothing is written.
    again = plan_release(a, SMALL_SHARDS)
    assert again.version == va and write_plan(a, again) is False


def test_splits_are_identity_disjoint_stable_and_sized_as_configured(tmp_path):
    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=400, faces_per_identity=2, crop_px=8)
    config = ReleaseConfig(val_fraction=0.1, bench_fraction=0.15)
    plan = plan_release(layout, config)
    rows = plan.faces.select(["identity_id", "split"]).to_pylist()
    split_of_id: dict[str, set[str]] = {}
    for r in rows:
        split_of_id.setdefault(r["identity_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_id.values())  # no identity in two splits
    share = {s: sum(v == {s} for v in split_of_id.values()) / 400 for s in ("train", "val", "bench")}
    assert abs(share["bench"] - 0.15) < 0.05 and abs(share["val"] - 0.1) < 0.05

    write_sample_tables(layout, batch="batch-sample1", identities=50, faces_per_identity=2, crop_px=8)
    later = {r["identity_id"]: r["split"] for r in plan_release(layout, config).faces.to_pylist()}
    assert all(later[i] == next(iter(s)) for i, s in split_of_id.items())  # nobody moved
    assert split_of("idn_x", config) == split_of("idn_x", ReleaseConfig(val_fraction=0.1, bench_fraction=0.15))


def test_triplets_follow_the_reference_format_and_the_rules(tmp_path):
    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=40, faces_per_identity=9)
    version = release(layout)
    folder = release_dir(layout, version)
    faces = {r["face_id"]: r for r in pq.read_table(folder / "splits.parquet").to_pylist()}
    manifest = json.loads((folder / "manifest.json").read_text())
    pairs = {tuple(p) for p in manifest["pairs"]["configured"] + manifest["pairs"]["found"]}
    lines = (folder / "triplets.jsonl").read_text().splitlines()
    assert len(lines) == manifest["counts"]["triplets"]["train"] > 40
    for line in lines:
        t = json.loads(line)
        jsonschema.validate(t, TRIPLET_SCHEMA)
        src = faces[t["src"]["face_id"]]
        a, b = (faces[d["face_id"]] for d in t["dst"])
        assert src["identity_id"] == a["identity_id"] == b["identity_id"] == t["identity_id"]
        assert src["split"] == "train"
        assert (t["dst"][0]["category"], t["dst"][1]["category"]) in pairs
        for d, face in zip(t["dst"], (a, b), strict=True):
            assert d["category"] == face["category"] and d["scores"] == {c: face[c] for c in CATEGORIES}
            assert (folder / d["image"]).is_file()
        same_person = [f for f in faces.values() if f["identity_id"] == src["identity_id"]]
        assert src["intensity"] == min(f["intensity"] for f in same_person)  # the most neutral face
    # The bench split never trains.
    train_ids = {json.loads(line)["identity_id"] for line in lines}
    assert not train_ids & {f["identity_id"] for f in faces.values() if f["split"] != "train"}


def test_targets_are_balanced_over_intensity_bins(tmp_path):
    from storage.releases.triplets import Face, identity_triplets

    def face(i: int, cat: str, level: float) -> Face:
        scores = dict.fromkeys(CATEGORIES, 0.0) | {cat: level}
        return Face(f"f{i}", f"f{i}.png", scores, cat, level, min(int(level * 3), 2))

    # Five low, one mid and one high fear face: the first three triplets take one of each bin.
    fear = [face(i, "fear", lv) for i, lv in enumerate([0.31, 0.32, 0.31, 0.32, 0.33, 0.5, 0.9])]
    others = [face(10, "surprised", 0.6), face(11, "happy", 0.01)]
    for seed in range(5):
        out = identity_triplets("idn", fear + others, [("fear", "surprised")], max_per_pair=3, seed=seed)
        assert sorted(t.target_a.bin for t in out) == [0, 1, 2]
        assert all(t.source.face_id == "f11" and t.target_b.face_id == "f10" for t in out)


def test_adding_a_batch_gives_a_new_version_and_the_diff_shows_exactly_its_faces(tmp_path):
    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=10, faces_per_identity=3)
    v1 = release(layout)
    added = write_sample_tables(layout, batch="batch-sample1", identities=4, faces_per_identity=3)
    v2 = release(layout)
    assert v1 != v2
    d = diff_releases(layout, v1, v2)
    assert sorted(d["added"]["face_ids"]) == sorted(added) and d["added"]["count"] == 12
    assert d["removed"]["count"] == d["score_changes"]["count"] == d["split_moves"]["count"] == 0
    with catalog.connect(layout, persist=False) as con:
        per_version = dict(con.execute("SELECT version, count(*) FROM release_faces GROUP BY ALL").fetchall())
        complete = con.execute("SELECT version FROM releases WHERE complete ORDER BY planned_at").fetchall()
    assert per_version == {v1: 30, v2: 42} and [v for (v,) in complete] == [v1, v2]


def test_a_changed_score_shows_in_the_diff(tmp_path):
    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=5, faces_per_identity=3)
    v1 = release(layout)
    scores = tables.read_table(layout, "affect_scores").to_pylist()
    scores[0]["happy"] = 0.9
    tables.write_partition(layout, "affect_scores", "all", scores)
    v2 = release(layout)
    d = diff_releases(layout, v1, v2)
    (change,) = d["score_changes"]["largest"]
    assert change["face_id"] == scores[0]["face_id"] and set(change["delta"]) == {"happy"}
    assert d["added"]["count"] == d["removed"]["count"] == 0


def test_verification_names_a_truncated_or_edited_shard(tmp_path):
    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=20, faces_per_identity=4)
    version = release(layout)
    assert verify_release(layout, version) == []
    shards = sorted((release_dir(layout, version) / "shards").glob("train-*.tar"))
    truncated, edited = shards[0], shards[1]
    truncated.write_bytes(truncated.read_bytes()[:3000])
    data = bytearray(edited.read_bytes())
    data[1500] ^= 0xFF  # inside the first member's bytes: same size, other content
    edited.write_bytes(bytes(data))
    problems = verify_release(layout, version)
    assert any(p.startswith(truncated.name) and "truncated" in p for p in problems)
    assert any(p.startswith(edited.name) and "sha256" in p for p in problems)
    assert all(p.startswith((truncated.name, edited.name)) for p in problems)


def _evil_tar(path: Path, name: str) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))


@pytest.mark.parametrize("name", ["../escape.json", "/etc/ffe.json", "a/../../b.json"])
def test_tars_with_members_outside_the_folder_are_refused(tmp_path, name):
    from storage.loader import TripletStream
    from storage.tarstream import UnsafeTarError

    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=6, faces_per_identity=3)
    version = release(layout, ReleaseConfig(shard_target_bytes=10**9))
    shard = next((release_dir(layout, version) / "shards").glob("train-*.tar"))
    _evil_tar(shard, name)
    problems = verify_release(layout, version)
    assert any(p.startswith(shard.name) and "outside the folder" in p for p in problems)
    with pytest.raises(UnsafeTarError, match="outside the folder"):
        list(TripletStream([str(shard)], [("fear", "surprised")], decode=False))
    assert not (tmp_path / "escape.json").exists()


def test_a_missing_crop_is_recorded_or_stops_the_release_by_config(tmp_path):
    layout = Layout.at(tmp_path / "w")
    ids = write_sample_tables(layout, identities=5, faces_per_identity=3)
    layout.crop_path(ids[4]).unlink()
    with pytest.raises(StorageError, match=ids[4]):
        plan_release(layout, ReleaseConfig(missing_crop="fail"))
    version = release(layout)
    faces = pq.read_table(release_dir(layout, version) / "splits.parquet").column("face_id").to_pylist()
    assert len(faces) == 14 and ids[4] not in faces
    (failure,) = tables.read_table(layout, "failures").to_pylist()
    assert (failure["item"], failure["stage"], failure["reason"]) == (ids[4], "ffe_release", "missing_crop")
    assert verify_release(layout, version) == []


def test_a_full_disk_while_sharding_keeps_finished_shards_and_the_rerun_finishes(tmp_path, monkeypatch):
    import errno

    from storage.releases import shards as shards_mod

    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=24, faces_per_identity=4)
    plan = plan_release(layout, SMALL_SHARDS)
    write_plan(layout, plan)
    build_release(layout, plan.version)
    real_open, budget = shards_mod.atomic_open, {"bytes": 150_000}

    class FillingDisk:  # a file on a disk that fills up after `budget` bytes
        def __init__(self, f):
            self.f = f

        def write(self, data):
            budget["bytes"] -= len(data)
            if budget["bytes"] < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextlib.contextmanager
    def filling_open(path, **kw):
        with real_open(path, **kw) as f:
            yield FillingDisk(f)

    monkeypatch.setattr(shards_mod, "atomic_open", filling_open)
    with pytest.raises(StorageError, match=r"cannot write shard \w+-\d{6}\.tar: No space left on device"):
        write_shards(layout, plan.version, workers=1)
    folder = release_dir(layout, plan.version)
    kept = sorted(p.name for p in (folder / "shards").glob("*.tar"))
    assert kept and not list((folder / "shards").glob(".*tmp*"))  # finished shards stay, no partial one

    monkeypatch.setattr(shards_mod, "atomic_open", real_open)
    manifest = write_shards(layout, plan.version, workers=1)
    stats = json.loads((folder / "shards" / "_stats.json").read_text())
    assert stats["skipped_finished"] == len(kept) and stats["written_this_run"] == stats["shards"] - len(kept)
    assert manifest["complete"] and verify_release(layout, plan.version) == []

    clean = Layout.at(tmp_path / "clean")
    write_sample_tables(clean, identities=24, faces_per_identity=4)
    assert release(clean) == plan.version
    assert digests(folder, "shards/*.tar") == digests(release_dir(clean, plan.version), "shards/*.tar")


def test_a_bad_release_config_is_one_clear_error():
    with pytest.raises(ValueError, match="val_fraction \\+ bench_fraction"):
        ReleaseConfig(val_fraction=0.5, bench_fraction=0.5)
    with pytest.raises(ValueError, match="pair \\['fear', 'joy'\\]"):
        ReleaseConfig(pairs=(("fear", "joy"),))
    with pytest.raises(ValueError, match="unknown release config key"):
        ReleaseConfig.from_json({"shard_size": 3})


def test_the_card_describes_the_release(tmp_path):
    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=12, faces_per_identity=4)
    version = release(layout)
    folder = release_dir(layout, version)
    card = (folder / "README.md").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert f"# FFE release {version}" in card and "TripletStream.from_release" in card and "wds.WebDataset" in card
    train = manifest["counts"]["splits"]["train"]
    assert f"| train | {train['identities']} | {train['faces']} |" in card
    for png in folder.glob("plots/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(folder.glob("plots/*.png"))) == 4
    assert set(manifest["files"]) >= {"README.md", "splits.parquet", "triplets.jsonl", "shards/index.parquet"}


@pytest.mark.slow
def test_killed_while_writing_a_shard_no_half_shard_is_visible_and_the_rerun_finishes(tmp_path):
    """The writer is SIGKILLed while it is blocked reading one image (a named pipe stands in for
    the file), so the kill lands inside a shard for certain."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from storage.releases.shards import plan_shards

    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=24, faces_per_identity=4)
    plan = plan_release(layout, SMALL_SHARDS)
    write_plan(layout, plan)
    build_release(layout, plan.version)
    folder = release_dir(layout, plan.version)
    specs = plan_shards(pq.read_table(folder / "splits.parquet"), SMALL_SHARDS.shard_target_bytes)
    victim = next(s for s in specs[2:] if len(s.samples) > 1)  # shards before it finish; its 2nd sample blocks
    before = specs[: specs.index(victim)]
    image = folder / "images" / f"{victim.samples[1].face_ids[0]}.png"
    saved = image.read_bytes()
    image.unlink()
    os.mkfifo(image)

    code = f"from storage.layout import Layout; from storage.releases.shards import write_shards; " \
           f"write_shards(Layout.at({str(layout.root)!r}), {plan.version!r}, workers=1)"  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    shards = folder / "shards"
    try:
        deadline = time.monotonic() + 60
        while not list(shards.glob(f".{victim.name}.tmp-*")):
            assert proc.poll() is None and time.monotonic() < deadline, "the writer never reached the shard"
            time.sleep(0.01)
        time.sleep(0.2)  # it is blocked on the pipe now
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    visible = sorted(p.name for p in shards.glob("*.tar"))
    assert visible == sorted(s.name for s in before)  # finished ones only: no half shard
    assert list(shards.glob(f".{victim.name}.tmp-*"))  # the half one stayed hidden

    image.unlink()
    image.write_bytes(saved)
    manifest = write_shards(layout, plan.version, workers=1)
    assert manifest["complete"] and verify_release(layout, plan.version) == []
    assert not list(shards.glob(".*tmp*"))  # the dead writer's temp file is gone
    stats = json.loads((shards / "_stats.json").read_text())
    assert stats["skipped_finished"] == len(before)

    clean = Layout.at(tmp_path / "clean")
    write_sample_tables(clean, identities=24, faces_per_identity=4)
    assert release(clean) == plan.version
    assert digests(folder, "shards/*.tar") == digests(release_dir(clean, plan.version), "shards/*.tar")


def test_a_release_rebuilt_from_its_plan_has_the_same_bytes(tmp_path):
    from storage.releases.verify import rebuild_matches

    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=10, faces_per_identity=4)
    version = release(layout)
    assert rebuild_matches(layout, version) == []
    assert not (layout.staging / f"rebuild-{version}").exists()
    index = release_dir(layout, version) / "triplets.jsonl"
    index.write_text(index.read_text().replace('"fear"', '"surprised"', 1))  # someone edits a file
    assert rebuild_matches(layout, version) == []  # the rebuild compares with the manifest, not the file
    assert any(p.startswith("triplets.jsonl") for p in verify_release(layout, version))


def test_a_face_held_twice_by_a_table_stops_the_plan_with_its_id(tmp_path):
    layout = Layout.at(tmp_path / "w")
    ids = write_sample_tables(layout, identities=3, faces_per_identity=3)
    rows = tables.read_partition(layout, "identities", "batch-sample0").to_pylist()
    tables.write_partition(layout, "identities", "batch-sample0", rows + rows[:1])
    with pytest.raises(StorageError, match=f"appear more than once .*{ids[0]}"):
        plan_release(layout, ReleaseConfig())


def test_the_cards_webdataset_snippet_loads_a_one_shard_release(tmp_path):
    """Found: the card's snippet hard-coded `train-{000000..000009}.tar` and failed on a release with
    one shard. The pattern in the card is the real one, and webdataset reads every sample with it."""
    import re

    import webdataset as wds

    from pixelsmile.synthetic import world_release
    from storage.releases.card import shard_pattern

    folder = world_release(Layout.at(tmp_path / "w"), people=4, faces_per_person=3, size=32)
    card = (folder / "README.md").read_text()
    (pattern,) = re.findall(r'wds\.WebDataset\("shards/([^"]+)"', card)
    assert pattern == "train-000000.tar" and "(train: 1, val: 0, bench: 0)" in card
    samples = list(wds.WebDataset(str(folder / "shards" / pattern), shardshuffle=False))
    assert len(samples) == 4
    assert shard_pattern(["train-000000.tar", "train-000001.tar", "train-000002.tar"]) == "train-{000000..000002}.tar"
