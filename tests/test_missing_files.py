"""A work folder knows when its files are gone (issue 18, part 2).

Found: with `tables/images/<batch>.parquet` deleted, `ffe status` said `images 0`, "failures: none",
and `ffe build` rebuilt nothing (Dagster had the partition as materialised); the same for
`affect_scores/all.parquet`; with `faces/<batch>.parquet` deleted every build failed in
`identities` with a bare FileNotFoundError. Now `ffe status` and `ffe check` name each missing or
unreadable file, and the next `ffe build` rebuilds it from upstream: the same rows as before.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_concurrency import fingerprint

FFE = str(Path(sys.executable).parent / "ffe")


def _ffe(*args: str, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run([FFE, *args, "--workdir", str(work)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from pixelsmile.synthetic import write_world_input

    root = tmp_path_factory.mktemp("missing")
    inp, work = root / "input", root / "built"
    write_world_input(inp, people=8, faces_per_person=5)
    done = subprocess.run([FFE, "build", "--workdir", str(work), "--input", str(inp), "--pre-cropped",
                           "--select", "+ffe_shards"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    return work, fingerprint(work)


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert found, pattern
    return found[0]


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    # kind: (what to damage, how, what `ffe check` names)
    "images_deleted": ("tables/images/*.parquet", Path.unlink, "raw_images batch-"),
    "faces_cut": ("tables/faces/*.parquet", _cut, "faces batch-"),
    "embeddings_deleted": ("tables/face_embeddings/*.parquet", Path.unlink, "face_embeddings batch-"),
    "prelabels_cut": ("tables/prelabels/*.parquet", _cut, "prelabels batch-"),
    # Found: a deleted labels table went unnoticed by check, status and build (the labels were lost).
    "imported_labels_deleted": ("tables/imported_labels/*.parquet", Path.unlink, "raw_images batch-"),
    "ingest_failures_deleted": ("tables/failures/raw_images__*.parquet", Path.unlink, "raw_images batch-"),
    "affect_scores_deleted": ("tables/affect_scores/all.parquet", Path.unlink, "affect_scores: "),
    "identities_cut": ("tables/identities/*.parquet", _cut, "identities: "),
    "crop_deleted": ("crops/**/*.png", Path.unlink, "crop missing"),
    "original_deleted": ("images/*/*.png", Path.unlink, "original missing"),
    "shard_deleted": ("releases/*/shards/train-*.tar", Path.unlink, "ffe_release r"),
    "release_file_cut": ("releases/*/splits.parquet", _cut, "wrong size"),
    "original_cut": ("images/*/*.png", _cut, "original wrong size"),
    "crop_cut": ("crops/**/*.png", _cut, "crop cut"),
    # Several at once in one batch (found by a new user: the broken faces table hid the missing
    # original from `ffe check`, faces were rebuilt without it, and a face was lost for good).
    "faces_prelabels_crop_and_its_original": (
        (("tables/faces/*.parquet", Path.unlink), ("tables/prelabels/*.parquet", _cut),
         ("crops/**/*.png", Path.unlink), ("images/*/*.png", "the crop's original")),
        None, ("faces batch-", "prelabels batch-", "original missing")),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_missing_or_cut_file_is_named_and_rebuilt_with_the_same_rows(built, tmp_path, kind):
    work_built, expected = built
    work = tmp_path / "work"
    shutil.copytree(work_built, work)
    pattern, damage, named = DAMAGE[kind]
    if damage is not None:
        pattern, named = ((pattern, damage),), (named,)
    target = None
    for glob, how in pattern:
        if how == "the crop's original":  # the original of the crop damaged just before: <image id>.png
            target = _one(work / "images", f"*/{target.name.split('_')[0]}*.png")
            target.unlink()
        else:
            target = _one(work, glob)
            how(target)

    check = _ffe("check", "--json", work=work)
    listed = _ffe("check", work=work).stdout
    assert check.returncode == 1 and all(n in listed for n in named), listed
    status = _ffe("status", work=work)
    assert status.returncode == 0 and "missing or unreadable (" in status.stdout, status.stdout + status.stderr

    rebuilt = _ffe("build", "--select", "+ffe_shards", work=work)
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert "rebuilding " in rebuilt.stdout, rebuilt.stdout[-2000:]
    assert fingerprint(work) == expected
    assert target.is_file()
    after = _ffe("check", work=work)
    assert after.returncode == 0, after.stdout


@pytest.mark.slow
def test_repair_builds_only_what_the_folder_was_built_with(built, tmp_path):
    """Found: `ffe check --repair` on a folder built with `--select +ffe_shards` ran the whole
    graph, training and benching a model (3 minutes, where the repair takes seconds)."""
    work_built, expected = built
    work = tmp_path / "work"
    shutil.copytree(work_built, work)
    _one(work, "tables/images/*.parquet").unlink()
    repair = _ffe("check", "--repair", work=work)
    assert repair.returncode == 0, repair.stdout[-3000:] + repair.stderr[-3000:]
    assert "model_job" not in repair.stdout and not (work / "runs").exists(), repair.stdout[-3000:]
    assert fingerprint(work) == expected


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut", "files_as_a_list"])
def test_a_cut_manifest_is_named_listed_as_damaged_and_rebuilt(built, tmp_path, damage):
    """Found: a `manifest.json` cut to 20 bytes made every command (status, check, build, release
    list) fail with a bare JSON error naming no file; one whose "files" was a list, with a bare
    AttributeError."""
    work_built, expected = built
    work = tmp_path / "work"
    shutil.copytree(work_built, work)
    manifest = _one(work, "releases/*/manifest.json")
    if damage == "cut":
        manifest.write_bytes(manifest.read_bytes()[:20])
    else:
        raw = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**raw, "files": sorted(raw["files"])}))
        verify = _ffe("release", "verify", raw["version"], work=work)
        assert verify.returncode == 1 and "is damaged (its 'files' is a list, not a dict)" in verify.stderr
    listed = _ffe("check", work=work)
    assert listed.returncode == 1 and "manifest.json unreadable" in listed.stdout, listed.stdout + listed.stderr
    status = _ffe("status", work=work)
    assert status.returncode == 0 and "damaged" in status.stdout, status.stdout + status.stderr
    releases = _ffe("release", "list", work=work)
    assert releases.returncode == 0 and "damaged" in releases.stdout, releases.stdout + releases.stderr
    rebuilt = _ffe("build", "--select", "+ffe_shards", work=work)
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert fingerprint(work) == expected and _ffe("check", work=work).returncode == 0


def test_a_problem_of_several_files_names_them():
    """`ffe check` said "(and 2 more)" without naming them."""
    from pipelines.check import Problem, _first_of, as_rows

    few = _first_of("raw_images", "batch-1", ["images/a.png", "images/b.png", "images/c.png"], "original_missing")
    assert few.describe() == "raw_images batch-1: images/a.png original missing; so are images/b.png, images/c.png"
    many = _first_of("raw_images", "batch-1", [f"images/{i}.png" for i in range(9)], "original_missing")
    assert many.describe().endswith("images/5.png, and 3 more (`ffe check --json` lists all)")
    assert as_rows([many])[0]["more"] == tuple(f"images/{i}.png" for i in range(1, 9))
    assert Problem("faces", None, "x", "missing").describe() == "faces: x missing"
