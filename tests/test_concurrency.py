"""Runs that overlap on one work folder end in exactly what one clean build gives (issue 18).

Found: two `ffe build` started together on one work folder wrote the same staging folder and each
deleted it under the other: every row twice, or 40 of 168 faces with a release marked complete, or
nothing at all with both exiting 0; on a fresh folder the second died creating the Dagster
instance. Now each asset holds its partition's lock (pipelines/defs/writers.py) and the instance is
created under a lock (pipelines/instance.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import tables
from storage.layout import Layout

FFE = str(Path(sys.executable).parent / "ffe")
ROUNDS = int(os.environ.get("FFE_CONCURRENCY_ROUNDS", "10"))


def _argv(work: Path, inp: Path) -> list[str]:
    return [FFE, "build", "--workdir", str(work), "--input", str(inp), "--pre-cropped", "--select", "+ffe_shards"]


def _start(work: Path, inp: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(_argv(work, inp), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def fingerprint(work: Path) -> dict:
    """What a build leaves that matters: rows per table, face and identity ids, each release's
    version, completeness and shard bytes (sha256)."""
    layout = Layout.at(work)
    faces = tables.read_table(layout, "faces", columns=["face_id"]).column("face_id").to_pylist()
    identities = tables.read_table(layout, "identities").to_pylist()
    releases = {}
    for manifest in sorted((work / "releases").glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        shards = sorted((s["name"], s["sha256"]) for split in m["shards"].values() for s in split)
        releases[m["version"]] = (m.get("complete"), shards)
    return {
        "images": tables.read_table(layout, "images").num_rows,
        "faces": sorted(faces),
        "embeddings": tables.read_table(layout, "face_embeddings").num_rows,
        "identities": sorted((r["face_id"], r["identity_id"], r["duplicate_of"] or "", r["batch"]) for r in identities),
        "affect_scores": tables.read_table(layout, "affect_scores").num_rows,
        "failures": tables.read_table(layout, "failures").num_rows,
        "releases": releases,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The synthetic world's input (8 people x 5 faces) and what one clean build of it gives."""
    from pixelsmile.synthetic import write_world_input

    root = tmp_path_factory.mktemp("concurrency")
    inp = root / "input"
    write_world_input(inp, people=8, faces_per_person=5)
    clean = subprocess.run(_argv(root / "clean", inp), capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stdout[-3000:]
    expected = fingerprint(root / "clean")
    assert expected["images"] == 40 and len(expected["faces"]) > 30 and len(expected["releases"]) == 1
    assert next(iter(expected["releases"].values()))[0] is True
    return inp, expected


@pytest.mark.slow
def test_concurrent_builds_end_in_the_clean_build(world, tmp_path):
    """2, 3 or 4 builds at once, ROUNDS times, alternately on a fresh folder and on one whose
    instance exists: every build exits 0, and the folder holds the clean build's rows, ids,
    release version and shard bytes; a build after them has nothing to do."""
    inp, expected = world
    for i in range(ROUNDS):
        work, runs = tmp_path / f"round-{i}", 2 + i % 3
        if i % 2:  # an existing work folder: its instance made before
            assert subprocess.run([FFE, "status", "--workdir", str(work)], capture_output=True).returncode in (0, 1)
        procs = [_start(work, inp, tmp_path / f"round-{i}-{k}.log") for k in range(runs)]
        codes = [p.wait(timeout=900) for p in procs]
        logs = [(tmp_path / f"round-{i}-{k}.log").read_text()[-3000:] for k in range(runs)]
        assert codes == [0] * runs, f"round {i}: {codes}\n" + "\n---\n".join(logs)
        assert fingerprint(work) == expected, f"round {i} ({runs} builds)"
        again = subprocess.run(_argv(work, inp), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "0 run(s)" in again.stdout, again.stdout[-2000:]


@pytest.mark.slow
def test_one_of_two_concurrent_builds_killed_then_a_rerun_ends_in_the_clean_build(world, tmp_path):
    inp, expected = world
    work = tmp_path / "work"
    first, second = _start(work, inp, tmp_path / "a.log"), _start(work, inp, tmp_path / "b.log")
    deadline = time.monotonic() + 120
    while not list((work / "staging").glob("*/*")) and not (work / "tables" / "faces").exists():
        assert time.monotonic() < deadline and first.poll() is None, "nothing was staged in time"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert second.wait(timeout=900) == 0, (tmp_path / "b.log").read_text()[-3000:]
    rerun = subprocess.run(_argv(work, inp), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert fingerprint(work) == expected


def _register_two_batches(works: list[Path], inp: Path) -> list[str]:
    """The same two batches in each work folder: the world's first 4 people, then 4 more."""
    from curation.batches import register_new_batch
    from pixelsmile.synthetic import write_world_input

    batches = []
    for first in (0, 4):
        write_world_input(inp, people=4, faces_per_person=5, first_person=first)
        made = {register_new_batch(Layout.at(w), inp, pre_cropped=True).batch for w in works}
        assert len(made) == 1
        batches += made
    return batches


@pytest.mark.slow
def test_workers_build_batches_at_once_into_what_one_at_a_time_gives(tmp_path):
    """`ffe build --workers 2` runs the two batches' runs side by side, each in its own process,
    and ends in the rows, ids, release and shard bytes that `--workers 1` gives."""
    import dagster as dg

    from pipelines.instance import open_instance

    inp, one, two = tmp_path / "input", tmp_path / "one", tmp_path / "two"
    batches = _register_two_batches([one, two], inp)
    for work, n in ((one, 1), (two, 2)):
        done = subprocess.run([*_argv(work, inp), "--workers", str(n)], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:]
        assert ("2 batch partitions, 2 at a time" in done.stdout) == (n == 2), done.stdout[-3000:]
    assert fingerprint(two) == fingerprint(one)
    assert len(fingerprint(two)["faces"]) > 30
    with open_instance(Layout.at(two)) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="batch_job", statuses=[dg.DagsterRunStatus.SUCCESS]))
        assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(batches)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(1500)
def test_a_build_and_the_daemon_on_the_same_new_batch_end_in_the_clean_build(world, tmp_path):
    """`ffe ui`'s daemon and an `ffe build` both take up the same new files at once: the build
    exits 0, no run of the daemon fails, and the folder holds the clean build's rows, ids,
    release and shard bytes."""
    import shutil

    from tests.test_ui import _runs, ffe_ui

    inp, expected = world
    expected = _batch_named_x(expected)  # the batch id names its input folder, here <work>/input
    work = tmp_path / "work"
    assert subprocess.run([FFE, "settings", "set", "bench.judge", "synthetic", "--workdir", str(work)]).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFE_") or k == "FFE_LABEL_STUDIO_BIN"}
    with ffe_ui(tmp_path, "--workdir", str(work), "--pre-cropped", env=env) as port:
        shutil.copytree(inp, work / "input", dirs_exist_ok=True)
        deadline = time.monotonic() + 300
        while not any(r["job"] == "batch_job" for r in _runs(port)):  # the daemon has taken the batch up
            assert time.monotonic() < deadline, f"the daemon launched nothing: {_runs(port)}"
            time.sleep(1)
        build = subprocess.run([FFE, "build", "--workdir", str(work), "--pre-cropped", "--select", "+ffe_shards"],
                               capture_output=True, text=True, timeout=900, env=env)  # fmt: skip
        assert build.returncode == 0, build.stdout[-3000:]
        assert _batch_named_x(fingerprint(work)) == expected
        deadline = time.monotonic() + 900  # the daemon's own runs of the batch and release finish too
        while any(r["status"] in ("QUEUED", "STARTING", "STARTED") and r["job"] != "model_job" for r in _runs(port)):
            assert time.monotonic() < deadline, _runs(port)
            time.sleep(5)
        failed = [r for r in _runs(port) if r["status"] == "FAILURE" and r["job"] != "model_job"]
        assert not failed, failed
        assert _batch_named_x(fingerprint(work)) == expected


def _batch_named_x(fp: dict) -> dict:
    return {**fp, "identities": sorted((*row[:3], "x") for row in fp["identities"])}


@pytest.mark.slow
def test_a_new_batch_reaches_the_assets_across_batches_under_a_narrow_selection(tmp_path):
    """`--select +ffe_shards` names only the release's assets; what they need across batches
    (identities, scores, the plan) is built again when a batch finished after it, by this build or
    by another run beside it. Found with the daemon (its `identities` ran before the build's
    embeddings were in; the build took it as done and exited 0 without a release); a second batch
    under this selection was likewise never assigned identities, nor released."""
    from pixelsmile.synthetic import write_world_input

    inp, work = tmp_path / "input", tmp_path / "work"
    write_world_input(inp, people=4, faces_per_person=5)
    assert subprocess.run(_argv(work, inp), capture_output=True, timeout=600).returncode == 0
    first = fingerprint(work)
    write_world_input(inp, people=4, faces_per_person=5, first_person=4)
    done = subprocess.run(_argv(work, inp), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    second = fingerprint(work)
    assert len({row[3] for row in second["identities"]}) == 2  # both batches' faces have identities
    assert len(second["identities"]) == second["embeddings"] > len(first["identities"])
    assert len(second["releases"]) == 2 and all(complete for complete, _ in second["releases"].values())


def _wait_for_staging(work: Path, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while not list((work / "staging").glob("*/*")):
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_stops_the_build_and_a_rerun_ends_in_the_clean_build(world, tmp_path):
    """Found: Ctrl-C failed the running batch run, and the build went on to the assets across
    batches (an empty identities run, "nothing to release") before exiting 1. Now it stops there,
    exits 130 saying how to resume, and the rerun ends in the clean build."""
    inp, expected = world
    work, log = tmp_path / "work", tmp_path / "build.log"
    proc = _start(work, inp, log)
    _wait_for_staging(work, proc, log)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    out = log.read_text()
    assert "rerun the same command to resume" in out and "across_batches_job" not in out, out[-3000:]
    assert not (work / "tables" / "identities").exists()
    rerun = subprocess.run(_argv(work, inp), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert fingerprint(work) == expected


@pytest.mark.slow
def test_a_workers_build_killed_leaves_no_process_behind(tmp_path):
    """Found: kill -9 of `ffe build --workers 2` left its fork server and workers running (1.4 GB,
    one holding a partition lock another build waited for). Each worker now ends itself when the
    build is gone; a rerun ends in what one at a time gives."""
    import psutil

    inp, work, ref = tmp_path / "input", tmp_path / "work", tmp_path / "ref"
    _register_two_batches([work, ref], inp)
    log = tmp_path / "build.log"
    proc = subprocess.Popen([*_argv(work, inp), "--workers", "2"], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    _wait_for_staging(work, proc, log)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "no worker processes"
    proc.kill()  # the build alone, as `kill -9 <pid>` does
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [(p.pid, p.cmdline()[:4]) for p in alive]
    rerun = subprocess.run(_argv(work, inp), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    clean = subprocess.run(_argv(ref, inp), capture_output=True, text=True, timeout=900)
    assert clean.returncode == 0, clean.stdout[-3000:]
    assert fingerprint(work) == fingerprint(ref)
