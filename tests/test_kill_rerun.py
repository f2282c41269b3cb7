"""A build SIGKILLed mid-batch and run again ends with every good file ingested exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.batches import manifests
from curation.ingest import batch_is_ingested
from curation.sample import write_variants
from storage import catalog, tables
from storage.layout import Layout

FFE = str(Path(sys.executable).parent / "ffe")


def _staged_chunks(work: Path) -> list[Path]:
    return list((work / "staging").glob("raw_images/*/tables/images/*.parquet"))


@pytest.mark.slow
def test_sigkill_mid_batch_then_rerun_ingests_every_good_file_once(tmp_path):
    inp, work = tmp_path / "in", tmp_path / "work"
    good = write_variants(inp, 600, size=(640, 480))
    (inp / "broken.jpg").write_bytes(good[0].read_bytes()[:2000])
    cfg = tmp_path / "ffe.yaml"
    cfg.write_text("raw_images:\n  chunk_size: 10\n  workers: 1\n")
    argv = [FFE, "build", "--input", str(inp), "--workdir", str(work), "--config", str(cfg), "--select", "raw_images"]

    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(_staged_chunks(work)) < 3:
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "no chunk was staged in time"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    layout = Layout.at(work)
    (manifest,) = manifests(layout)
    assert not batch_is_ingested(layout, manifest.batch)  # killed mid-batch: not finished
    assert not tables.has_partition(layout, "images", manifest.batch)
    staged_before = len(_staged_chunks(work))

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert batch_is_ingested(layout, manifest.batch)

    with catalog.connect(layout, persist=False) as con:
        sources = [r[0] for r in con.execute("SELECT source_uri FROM images").fetchall()]
        ids = [r[0] for r in con.execute("SELECT image_id FROM images").fetchall()]
        failures = con.execute("SELECT item, reason FROM failures").fetchall()
    raw = tables.read_partition(layout, "images", manifest.batch)
    assert raw.num_rows == len(good)  # no row twice, before any view-level dedup
    assert sorted(sources) == sorted(map(str, good)) and len(set(ids)) == len(good)
    assert failures == [(str(inp / "broken.jpg"), "truncated")]
    assert staged_before >= 3 and "resumed" in rerun.stderr  # the rerun picked up the staged chunks
    stored = list((work / "images").rglob("*.jpg"))
    assert len(stored) == len(good)
    leftovers = [p.relative_to(work) for p in work.rglob(".*.tmp-*")]
    assert not leftovers, f"temp files of the killed run must be swept: {leftovers}"
