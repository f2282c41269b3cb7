"""A full disk stops the batch with a clear error naming the file; nothing done is lost, and a rerun
after space is freed ingests every good file exactly once. Uses a real, tiny tmpfs (needs root,
as in CI)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from curation.batches import register_new_batch
from curation.ingest import IngestSettings, batch_is_ingested, ingest_batch
from curation.sample import BROKEN
from pipelines.cli import main
from storage import tables
from storage.errors import StorageError
from storage.layout import Layout


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _grow(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)


def test_full_disk_stops_clearly_and_a_rerun_finishes(small_disk, sample_dir):
    layout = Layout.at(small_disk / "work")
    batch = register_new_batch(layout, sample_dir).batch
    with pytest.raises(StorageError) as info:
        ingest_batch(layout, batch, IngestSettings(chunk_size=2, workers=1))
    message = str(info.value)
    assert "No space left on device" in message and str(sample_dir) in message and "rerun to resume" in message
    assert not batch_is_ingested(layout, batch)

    _grow(small_disk)
    summary = ingest_batch(layout, batch, IngestSettings(chunk_size=2, workers=1))
    assert summary.resumed > 0
    rows = tables.read_partition(layout, "images", batch).to_pylist()
    assert len(rows) == len({r["source_uri"] for r in rows}) == len({r["image_id"] for r in rows}) == 15
    assert all((layout.root / r["path"]).stat().st_size == r["bytes"] for r in rows)
    reasons = tables.read_partition(layout, "failures", f"raw_images__{batch}").column("reason").to_pylist()
    assert sorted(reasons) == sorted(BROKEN.values())
    assert not list(layout.images_temp.glob("*")), "no temp file of a failed write is left"


def test_full_disk_through_ffe_build_names_file_and_reason(small_disk, sample_dir, capsys):
    # The Dagster instance shares the full disk: it cannot record the failure either, and the
    # error must still name the batch, the folder and the reason.
    work = small_disk / "work"
    code = main(["build", "--input", str(sample_dir), "--workdir", str(work)])
    err = capsys.readouterr().err
    assert code == 1
    (line,) = [line for line in err.splitlines() if line.startswith("ffe build: error:")]
    assert "batch-" in line and f"the disk holding {work} is full" in line and "rerun to resume" in line
    assert "Traceback" not in err

    _grow(small_disk)
    assert main(["build", "--input", str(sample_dir), "--workdir", str(work)]) == 0
    assert main(["query", "SELECT count(*) AS n FROM images", "--workdir", str(work), "--json"]) == 0
    assert '"n": 15' in capsys.readouterr().out
