from __future__ import annotations

import datetime as dt
import hashlib
import os

import pyarrow as pa
import pytest

from storage import catalog, tables
from storage.atomic import atomic_open, atomic_write_bytes, sweep_temp_files
from storage.blobs import put_image
from storage.schemas import CATEGORIES, CATEGORIES_6, TABLES

UTC = dt.UTC


def _failure(item: str, partition: str = "p") -> dict:
    return dict(item=item, stage="t", reason="r", detail="d", partition=partition, at=dt.datetime.now(UTC))


def _image(image_id: str, batch: str, at: dt.datetime) -> dict:
    return dict(
        image_id=image_id,
        path=f"images/{image_id}.jpg",
        source_uri=f"/in/{batch}/{image_id}",
        batch=batch,
        format="JPEG",
        mode="RGB",
        width=10,
        height=20,
        exif_orientation=1,
        bytes=5,
        ingested_at=at,
    )


def test_categories_are_the_papers_twelve_in_order():
    assert CATEGORIES == (
        "happy",
        "sad",
        "angry",
        "fear",
        "surprised",
        "disgust",
        "confused",
        "contempt",
        "confident",
        "shy",
        "sleepy",
        "anxious",
    )
    assert CATEGORIES[:6] == CATEGORIES_6


def test_atomic_write_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "t.parquet"
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half of it")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temp file is cleaned up too

    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"new but unfinished")
        raise RuntimeError
    assert target.read_bytes() == b"old"


def test_temp_files_of_killed_writers_match_no_glob_and_are_swept(tmp_path):
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs: a SIGKILLed writer
    (tmp_path / f".x.parquet.tmp-{gone.pid}-abcd").write_bytes(b"partial")
    live = tmp_path / f".y.parquet.tmp-{os.getpid()}-beef"  # a writer still at work
    live.write_bytes(b"in progress")
    (tmp_path / "done.parquet").write_bytes(b"ok")
    assert [p.name for p in tmp_path.glob("*.parquet")] == ["done.parquet"]
    assert sweep_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "done.parquet"]


def test_write_partition_validates_before_writing(layout):
    with pytest.raises(ValueError, match="failures.stage must not be null"):  # a missing column
        tables.write_partition(layout, "failures", "p", [{"item": "a"}])
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):  # a wrong type
        tables.write_partition(layout, "failures", "p", [{**_failure("a"), "at": "yesterday"}])
    assert not layout.table_file("failures", "p").exists()
    with pytest.raises(KeyError, match="unknown table"):
        tables.write_partition(layout, "nope", "p", [])

    tables.write_partition(layout, "failures", "p", [_failure("a"), _failure("b")])
    got = tables.read_partition(layout, "failures", "p")
    assert got.schema == TABLES["failures"]
    assert got.column("item").to_pylist() == ["a", "b"]


def test_read_table_unions_partitions_and_is_typed_when_empty(layout):
    empty = tables.read_table(layout, "failures")
    assert empty.num_rows == 0 and empty.schema == TABLES["failures"]
    tables.write_partition(layout, "failures", "p1", [_failure("a", "p1")])
    tables.write_partition(layout, "failures", "p2", [_failure("b", "p2"), _failure("c", "p2")])
    assert sorted(tables.read_table(layout, "failures").column("item").to_pylist()) == ["a", "b", "c"]
    assert tables.read_table(layout, "failures", exclude=["p2"]).column("item").to_pylist() == ["a"]
    assert tables.partitions(layout, "failures") == ["p1", "p2"]


def test_catalog_has_every_table_typed_before_any_row(layout):
    with catalog.connect(layout) as con:
        for table, schema in TABLES.items():
            cols = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
            assert cols == schema.names
            assert con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] == 0
    assert layout.catalog.is_file()


def test_catalog_views_follow_new_partitions_and_keep_the_first_copy_of_an_image(layout):
    t0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
    tables.write_partition(layout, "images", "b1", [_image("aa", "b1", t0), _image("bb", "b1", t0)])
    assert catalog.table_counts(layout)["images"] == 2
    # A batch that ran in parallel stored "aa" again, later: the view keeps b1's row.
    tables.write_partition(layout, "images", "b2", [_image("aa", "b2", t0 + dt.timedelta(seconds=1))])
    with catalog.connect(layout) as con:
        rows = con.execute("SELECT image_id, batch FROM images ORDER BY image_id").fetchall()
    assert rows == [("aa", "b1"), ("bb", "b1")]


def test_catalog_file_locked_by_another_connection_falls_back_to_memory(layout):
    import duckdb

    layout.root.mkdir(parents=True)
    tables.write_partition(layout, "failures", "p", [_failure("a")])
    holder = duckdb.connect(str(layout.catalog))
    try:
        # Same process: DuckDB shares the file; a second process would get a lock error, which
        # `connect` answers with an in-memory catalog. Both paths must give the same rows.
        with catalog.connect(layout, persist=False) as con:
            assert con.execute("SELECT count(*) FROM failures").fetchone()[0] == 1
    finally:
        holder.close()


def test_put_image_is_content_addressed_and_idempotent(layout):
    data = b"\xff\xd8\xff fake jpeg bytes"
    image_id = hashlib.sha256(data).hexdigest()
    path = put_image(layout, data, image_id, "jpg")
    assert path == layout.root / "images" / image_id[:2] / f"{image_id}.jpg"
    mtime = path.stat().st_mtime_ns
    assert put_image(layout, data, image_id, "jpg") == path
    assert path.stat().st_mtime_ns == mtime  # not rewritten
    path.write_bytes(data[:5])  # a torn copy (power loss without fsync)
    put_image(layout, data, image_id, "jpg")
    assert path.read_bytes() == data


def test_temp_files_of_a_zombie_writer_are_swept(tmp_path):
    """A killed writer that nobody reaped (a container whose init does not reap) still answers
    kill(pid, 0); its temp files must go all the same."""
    import os
    import time

    from storage.atomic import sweep_temp_files

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        time.sleep(0.2)  # now a zombie: exited, not reaped
        (tmp_path / f".a.png.tmp-{pid}-abcd").write_bytes(b"half")
        (tmp_path / f".b.png.tmp-{os.getpid()}-abcd").write_bytes(b"ours, still writing")
        assert sweep_temp_files(tmp_path) == 1
        assert [p.name for p in tmp_path.iterdir()] == [f".b.png.tmp-{os.getpid()}-abcd"]
    finally:
        os.waitpid(pid, 0)
