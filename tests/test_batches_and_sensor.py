"""Batch registration and the sensor: a file is registered once, each batch is requested once."""

from __future__ import annotations

import os
import shutil
import time

import dagster as dg

from curation.batches import batch_id_for, manifests, register_new_batch, scan_input
from curation.ingest import ingest_batch
from pipelines.defs.ingest import ingest_batches, new_input_files
from pipelines.resources import FFEStorage
from storage.layout import Layout


def test_registration_takes_only_new_or_changed_files(layout, sample_dir):
    first = register_new_batch(layout, sample_dir)
    assert len(first.files) == len(os.listdir(sample_dir))
    assert register_new_batch(layout, sample_dir) is None  # nothing new

    (sample_dir / "extra.jpg").write_bytes((sample_dir / "coffee.jpg").read_bytes())
    rewritten = sample_dir / "rocket.jpg"
    rewritten.write_bytes(rewritten.read_bytes() + b"\x00")  # changed in place: new size
    second = register_new_batch(layout, sample_dir)
    assert sorted(os.path.basename(f.path) for f in second.files) == ["extra.jpg", "rocket.jpg"]
    assert [m.batch for m in manifests(layout)] == [first.batch, second.batch]


def test_batch_ids_are_deterministic_and_dagster_safe(tmp_path, sample_dir):
    a = register_new_batch(Layout.at(tmp_path / "w1"), sample_dir).batch
    b = register_new_batch(Layout.at(tmp_path / "w2"), sample_dir).batch
    assert a == b == batch_id_for(scan_input(sample_dir))
    assert a.startswith("batch-") and "." not in a and len(a) == len("batch-") + 12


def test_files_still_being_written_wait_for_a_later_scan(layout, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "old.jpg").write_bytes(b"x")
    past = time.time() - 120
    os.utime(folder / "old.jpg", (past, past))
    (folder / "copying.jpg").write_bytes(b"y")  # modified just now
    manifest = register_new_batch(layout, folder, min_age_s=30)
    assert [os.path.basename(f.path) for f in manifest.files] == ["old.jpg"]


def test_hidden_files_are_ignored(layout, tmp_path):
    folder = tmp_path / "in"
    (folder / ".thumbs").mkdir(parents=True)
    (folder / ".thumbs" / "a.jpg").write_bytes(b"x")
    (folder / ".DS_Store").write_bytes(b"x")
    assert scan_input(folder) == []
    assert register_new_batch(layout, folder) is None


def _tick(instance, ffe):
    with dg.build_sensor_context(instance=instance, resources={"ffe": ffe}) as ctx:
        return new_input_files(ctx)


def test_sensor_requests_each_batch_once_by_run_key(layout, sample_dir, tmp_path):
    ffe = FFEStorage(workdir=str(layout.root), input_dir=str(sample_dir), input_settle_seconds=0)
    with dg.instance_for_test() as instance:
        first = _tick(instance, ffe)
        (req,) = first.run_requests
        (batch,) = [m.batch for m in manifests(layout)]
        assert req.run_key == req.partition_key == batch
        (add,) = first.dynamic_partitions_requests
        assert add.partitions_def_name == ingest_batches.name and list(add.partition_keys) == [batch]
        instance.add_dynamic_partitions(ingest_batches.name, [batch])

        # Until the batch is ingested, every tick asks again under the same run key: the daemon
        # launches a run key once, so a tick that lost its run (a crash) is made good.
        again = _tick(instance, ffe)
        assert [r.run_key for r in again.run_requests] == [batch] and not again.dynamic_partitions_requests

        ingest_batch(layout, batch)
        assert isinstance(_tick(instance, ffe), dg.SkipReason)

        shutil.copy(sample_dir / "coffee.jpg", sample_dir / "coffee_2.jpg")
        third = _tick(instance, ffe)
        (req2,) = third.run_requests
        assert req2.run_key != batch and req2.run_key == [m.batch for m in manifests(layout)][-1]


def test_sensor_skips_a_missing_input_folder(layout, tmp_path):
    ffe = FFEStorage(workdir=str(layout.root), input_dir=str(tmp_path / "nowhere"))
    with dg.instance_for_test() as instance:
        result = _tick(instance, ffe)
    assert isinstance(result, dg.SkipReason) and "does not exist" in result.skip_message
