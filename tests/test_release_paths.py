"""Paths a release's own files list stay inside the release folder: a manifest entry, a shard name
of the manifest or of shards/index.parquet, or a face id that makes an image path, which is
absolute, has `..` or goes through a link out is refused by `ffe release verify` (a problem naming
the entry: the release is not intact) and by the loader (an error naming the release and the
entry), and the file outside is never opened."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.blobs import file_digest
from storage.errors import StorageError
from storage.layout import Layout
from storage.loader import TripletStream
from storage.releases.build import build_release
from storage.releases.config import ReleaseConfig
from storage.releases.paths import release_path
from storage.releases.plan import plan_release, release_dir, write_plan
from storage.releases.sample import write_sample_tables
from storage.releases.shards import write_shards
from storage.releases.verify import verify_release
from storage.schemas import RELEASE_FACES, SHARD_INDEX

INDEX = "shards/index.parquet"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One small release with a few train shards, copied by each test (`copy_release`)."""
    layout = Layout.at(tmp_path_factory.mktemp("paths") / "w")
    write_sample_tables(layout, identities=8, faces_per_identity=4, crop_px=16)
    plan = plan_release(layout, ReleaseConfig(shard_target_bytes=6_000, val_fraction=0.0, bench_fraction=0.0))
    write_plan(layout, plan)
    build_release(layout, plan.version)
    write_shards(layout, plan.version)
    return release_dir(layout, plan.version)


def copy_release(built: Path, tmp_path: Path) -> tuple[Layout, str, Path]:
    layout = Layout.at(tmp_path / "w")
    folder = release_dir(layout, built.name)
    shutil.copytree(built, folder)
    return layout, built.name, folder


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def digest(path: Path) -> dict:
    sha, size = file_digest(path)
    return {"sha256": sha, "bytes": size}


def first_train_shard(folder: Path) -> str:
    return read_manifest(folder)["shards"]["train"][0]["name"]


def rename_shard(folder: Path, old: str, new: str, *, in_manifest: bool = True, in_index: bool = True) -> None:
    """Shard `old` listed as `new` by the manifest and/or index.parquet; the manifest's sha256 of
    index.parquet follows, as a careful forger would make it."""
    manifest = read_manifest(folder)
    if in_index:
        rows = pq.read_table(folder / INDEX, schema=SHARD_INDEX).to_pylist()
        for r in rows:
            r["shard"] = new if r["shard"] == old else r["shard"]
        pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_INDEX), folder / INDEX)
        manifest["files"][INDEX] = digest(folder / INDEX)
    if in_manifest:
        for r in manifest["shards"]["train"]:
            r["name"] = new if r["name"] == old else r["name"]
    write_manifest(folder, manifest)


_watched: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if _watched and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _watched[-1].append(os.fsdecode(args[0]))


_hooked: list[bool] = []


@contextlib.contextmanager
def never_opened(*outside: Path):
    """Fails when anything opens one of `outside` (through whatever path or link) meanwhile."""
    if not _hooked:
        sys.addaudithook(_audit)  # for the rest of the process; idle when nothing is watched
        _hooked.append(True)
    opened: list[str] = []
    _watched.append(opened)
    try:
        yield
    finally:
        _watched.pop()
    targets = {p.resolve() for p in outside}
    assert not [p for p in opened if Path(p).resolve() in targets], f"opened {outside}"


def cli_verify(layout: Layout, version: str, capsys) -> tuple[int, str]:
    from pipelines.releases import release_command

    capsys.readouterr()
    code = release_command(argparse.Namespace(action="verify", version=version, rebuild=False), layout, None)
    return code, capsys.readouterr().out


# --- the helper ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, why",
    [("/etc/hostname", "an absolute path"), ("../../etc/hostname", "a '..' component"),
     ("shards/../../x", "a '..' component"), ("a/..", "a '..' component")],
)  # fmt: skip
def test_an_entry_that_leaves_the_folder_is_refused_by_name(tmp_path, entry, why):
    folder = tmp_path / "r1"
    folder.mkdir()
    expected = f"manifest.json entry {entry!r} of release r1 leaves the release folder ({why})"
    with pytest.raises(StorageError, match=re.escape(expected)):
        release_path(folder, entry)


@pytest.mark.parametrize("entry", ["", None, 3, "a\0b"])
def test_an_entry_that_is_no_file_name_is_refused(tmp_path, entry):
    with pytest.raises(StorageError, match=r"manifest\.json entry .* of release r1 is not a file name"):
        release_path(tmp_path / "r1", entry)


def test_names_inside_the_folder_come_back_as_named(tmp_path):
    folder = tmp_path / "r1"
    (folder / "shards").mkdir(parents=True)
    (folder / "shards" / "train-000000.tar").write_bytes(b"x")
    (folder / "also.tar").symlink_to(folder / "shards" / "train-000000.tar")  # a link that stays inside
    assert release_path(folder, "train-000000.tar", under="shards") == folder / "shards" / "train-000000.tar"
    assert release_path(folder, "also.tar") == folder / "also.tar"
    assert release_path(folder, "not/there/yet.png") == folder / "not/there/yet.png"
    (folder / "loop").symlink_to(folder / "loop")
    with pytest.raises(StorageError, match=r"'loop' of release r1 leaves the release folder \(a link that cannot be"):
        release_path(folder, "loop")


# --- an intact release -----------------------------------------------------------------------------


def test_an_intact_release_verifies_and_loads(built, tmp_path, capsys):
    layout, version, folder = copy_release(built, tmp_path)
    (folder / "README.md").rename(folder / "card.md")  # a link inside the folder is the release's own
    (folder / "README.md").symlink_to("card.md")
    assert verify_release(layout, version) == []
    code, out = cli_verify(layout, version, capsys)
    assert code == 0 and f"release {version}: intact" in out
    ds = TripletStream.from_release(folder, resolution=16, decode=False)
    assert len(ds.shards) == len(read_manifest(folder)["shards"]["train"]) > 1
    items = list(ds)
    assert items and all(isinstance(t["source"], bytes) for t in items)


# --- (a) a manifest file entry that leads out --------------------------------------------------------


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_a_file_entry_leading_out_with_its_true_sha256_is_refused_unread(built, tmp_path, capsys, kind):
    layout, version, folder = copy_release(built, tmp_path)
    outside = tmp_path / "hostname"
    outside.write_text("secret-host\n")
    entry = "../../../hostname" if kind == "dotdot" else str(outside)
    assert (folder / entry).resolve() == outside
    manifest = read_manifest(folder)
    del manifest["files"]["triplets.jsonl"]
    manifest["files"][entry] = digest(outside)  # the right sha256 and size: only the path gives it away
    write_manifest(folder, manifest)

    why = "a '..' component" if kind == "dotdot" else "an absolute path"
    line = f"manifest.json entry {entry!r} of release {version} leaves the release folder ({why})"
    with never_opened(outside):
        assert verify_release(layout, version) == [line]
        code, out = cli_verify(layout, version, capsys)
    assert code == 1 and f"  {line}" in out and f"release {version}: 1 problem(s)" in out and "intact" not in out


# --- (b) shard names of the manifest and of index.parquet -------------------------------------------------


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_a_shard_named_out_of_the_folder_is_refused_by_loader_and_verify(built, tmp_path, capsys, kind):
    layout, version, folder = copy_release(built, tmp_path)
    name = first_train_shard(folder)
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    shutil.move(folder / "shards" / name, outside)  # the very shard, with its sha256: only its place is wrong
    entry = f"../../../../elsewhere/{name}" if kind == "dotdot" else str(outside)
    assert (folder / "shards" / entry).resolve() == outside
    rename_shard(folder, name, entry)

    why = "a '..' component" if kind == "dotdot" else "an absolute path"
    line = f"manifest.json entry {entry!r} of release {version} leaves the release folder ({why})"
    with never_opened(outside):
        with pytest.raises(StorageError, match=re.escape(line)):
            TripletStream.from_release(folder, resolution=16, decode=False)
        with pytest.raises(StorageError, match=re.escape(line)):  # also when the shards are read from elsewhere
            TripletStream.from_release(folder, shard_url="pipe:cat /dev/null # {name}", decode=False)
        assert verify_release(layout, version) == [line]
        code, out = cli_verify(layout, version, capsys)
    assert code == 1 and line in out and "intact" not in out


def test_a_shard_name_with_shell_characters_is_never_pasted_into_a_pipe_url(built, tmp_path, monkeypatch):
    """A `pipe:` shard_url runs in a shell: `x.tar; touch pwned` must not run `touch`."""
    layout, version, folder = copy_release(built, tmp_path)
    name = first_train_shard(folder)
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    entry = f"{name}; touch pwned"
    (folder / "shards" / name).rename(folder / "shards" / entry)
    rename_shard(folder, name, entry)
    with pytest.raises(StorageError, match=r"names shard .*only letters, digits and \._- are put into a shard_url"):
        TripletStream.from_release(folder, shard_url="pipe:cat {name}", decode=False)
    assert not marker.exists()


def test_a_shard_name_of_index_parquet_leading_out_is_refused_not_only_a_mismatch(built, tmp_path, capsys):
    layout, version, folder = copy_release(built, tmp_path)
    name = first_train_shard(folder)
    entry = f"/srv/other/{name}"
    rename_shard(folder, name, entry, in_manifest=False)

    line = f"shards/index.parquet entry {entry!r} of release {version} leaves the release folder (an absolute path)"
    with pytest.raises(StorageError, match=re.escape(line)):
        TripletStream.from_release(folder, resolution=16, decode=False)
    problems = verify_release(layout, version)
    assert problems[0] == line
    assert any(p.startswith(f"{name}: holds samples") for p in problems[1:])  # the mismatch it also is
    code, out = cli_verify(layout, version, capsys)
    assert code == 1 and line in out


# --- (c) links out of the folder ------------------------------------------------------------------------------


def test_a_file_linked_out_of_the_folder_is_refused_unread(built, tmp_path, capsys):
    layout, version, folder = copy_release(built, tmp_path)
    outside = tmp_path / "triplets.jsonl"
    shutil.move(folder / "triplets.jsonl", outside)
    (folder / "triplets.jsonl").symlink_to(outside)  # the same bytes: the sha256 alone would pass it

    line = (f"manifest.json entry 'triplets.jsonl' of release {version} leaves the release folder "
            f"(a link to {outside}, outside it)")  # fmt: skip
    with never_opened(outside):
        assert verify_release(layout, version) == [line]
        code, out = cli_verify(layout, version, capsys)
    assert code == 1 and line in out and "intact" not in out


def test_a_shard_linked_out_of_the_folder_is_refused_by_loader_and_verify(built, tmp_path, capsys):
    layout, version, folder = copy_release(built, tmp_path)
    name = first_train_shard(folder)
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    shutil.move(folder / "shards" / name, outside)
    (folder / "shards" / name).symlink_to(outside)

    line = (f"manifest.json entry {name!r} of release {version} leaves the release folder "
            f"(a link to {outside}, outside it)")  # fmt: skip
    with never_opened(outside):
        with pytest.raises(StorageError, match=re.escape(line)):
            TripletStream.from_release(folder, resolution=16, decode=False)
        assert verify_release(layout, version) == [line]
        code, out = cli_verify(layout, version, capsys)
    assert code == 1 and line in out and "intact" not in out


def test_a_shards_folder_linked_out_is_refused(built, tmp_path):
    layout, version, folder = copy_release(built, tmp_path)
    outside = tmp_path / "elsewhere"
    shutil.move(folder / "shards", outside)
    (folder / "shards").symlink_to(outside)

    leaves = f"of release {version} leaves the release folder (a link to {outside}/"
    with pytest.raises(StorageError, match=re.escape(leaves)):
        TripletStream.from_release(folder, resolution=16, decode=False)
    problems = verify_release(layout, version)
    assert f"manifest.json entry {INDEX!r} {leaves}index.parquet, outside it)" in problems
    assert all("leaves the release folder" in p for p in problems)


# --- the build's own listings: face ids that make image paths -------------------------------------------


def test_a_face_id_that_makes_an_image_path_out_of_the_folder_stops_the_shards(built, tmp_path):
    layout, version, folder = copy_release(built, tmp_path)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"not the release's")
    faces = pq.read_table(folder / "splits.parquet", schema=RELEASE_FACES).to_pylist()
    faces[0]["face_id"] = "../../../../secret"
    pq.write_table(pa.Table.from_pylist(faces, schema=RELEASE_FACES), folder / "splits.parquet")
    manifest = read_manifest(folder)
    write_manifest(folder, {**manifest, "shards": None, "complete": False})  # to be sharded (again)

    line = f"splits.parquet entry 'images/../../../../secret.png' of release {version} leaves the release folder"
    with never_opened(outside), pytest.raises(StorageError, match=re.escape(line)):
        write_shards(layout, version)
