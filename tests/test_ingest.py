"""Ingest of real batches: outcomes per file, stored originals, dedup, resume after interruption."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from curation.batches import register_new_batch
from curation.ingest import IngestSettings, batch_is_ingested, failures_partition, ingest_batch
from curation.parallel import worker_count
from curation.sample import BROKEN, write_variants
from storage import tables


def _rows(layout, table, partition):
    return tables.read_partition(layout, table, partition).to_pylist()


def test_sample_batch_sorts_every_file_into_images_or_failures(layout, sample_dir):
    batch = register_new_batch(layout, sample_dir).batch
    summary = ingest_batch(layout, batch)
    images = _rows(layout, "images", batch)
    failures = _rows(layout, "failures", failures_partition(batch))

    by_name = {os.path.basename(f["item"]): f for f in failures}
    assert {name: f["reason"] for name, f in by_name.items()} == BROKEN
    assert all(f["stage"] == "raw_images" and f["detail"] and f["partition"] == batch for f in failures)
    good = {p.name for p in sample_dir.iterdir()} - set(BROKEN)
    assert {os.path.basename(r["source_uri"]) for r in images} == good
    assert summary.images == len(good) and summary.files == len(good) + len(BROKEN)
    assert batch_is_ingested(layout, batch)
    assert not layout.staging_dir("raw_images", batch).exists()

    for row in images:  # the original is stored under its hash, byte for byte
        stored = layout.root / row["path"]
        data = stored.read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["image_id"] == stored.stem
        assert data == Path(row["source_uri"]).read_bytes()
        assert row["bytes"] == len(data)

    rows = {os.path.basename(r["source_uri"]): r for r in images}
    assert (
        rows["astronaut_exif_rotated.jpg"]["exif_orientation"],
        rows["astronaut_exif_rotated.jpg"]["width"],
        rows["astronaut_exif_rotated.jpg"]["height"],
    ) == (6, 512, 512)
    assert (rows["astronaut_rotated_90.jpg"]["width"], rows["astronaut_rotated_90.jpg"]["height"]) == (512, 512)
    assert (rows["chelsea_cat.jpg"]["width"], rows["chelsea_cat.jpg"]["height"]) == (451, 300)
    assert rows["astronaut_grey.png"]["mode"] == "L" and rows["astronaut_alpha.png"]["mode"] == "RGBA"
    assert rows["astronaut.webp"]["format"] == "WEBP" and rows["astronaut.webp"]["path"].endswith(".webp")
    assert "astronaut.jpg" in by_name["astronaut_copy.jpg"]["detail"]


def test_exif_rotation_is_recorded_on_a_portrait_picture(layout, tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (300, 100), "white").save(folder / "sideways.jpg", exif=exif)
    batch = register_new_batch(layout, folder).batch
    ingest_batch(layout, batch)
    (row,) = _rows(layout, "images", batch)
    assert (row["width"], row["height"], row["exif_orientation"]) == (100, 300, 8)


def test_content_ingested_by_an_earlier_batch_is_a_duplicate(layout, sample_dir, tmp_path):
    first = register_new_batch(layout, sample_dir).batch
    before = ingest_batch(layout, first)
    later = tmp_path / "later"
    later.mkdir()
    (later / "again.png").write_bytes((sample_dir / "astronaut.png").read_bytes())
    (later / "new.png").write_bytes((sample_dir / "camera.png").read_bytes()[:-1] + b"\x00")  # other bytes
    second = register_new_batch(layout, later).batch
    summary = ingest_batch(layout, second)
    (dup,) = _rows(layout, "failures", failures_partition(second))
    assert dup["reason"] == "duplicate" and dup["item"].endswith("again.png")
    assert summary.failures == {"duplicate": 1}
    # Re-running the first batch: its own earlier rows are no duplicates of themselves.
    again = ingest_batch(layout, first)
    assert (again.images, again.failures) == (before.images, before.failures)


def test_a_file_gone_before_ingest_is_unreadable_and_the_rest_proceeds(layout, sample_dir):
    batch = register_new_batch(layout, sample_dir).batch
    (sample_dir / "coffee.jpg").unlink()
    summary = ingest_batch(layout, batch)
    fails = {os.path.basename(f["item"]): f for f in _rows(layout, "failures", failures_partition(batch))}
    assert fails["coffee.jpg"]["reason"] == "unreadable"
    assert "No such file" in fails["coffee.jpg"]["detail"]
    assert summary.images == 14


def test_a_directory_named_like_an_image_is_never_a_file(layout, tmp_path):
    folder = tmp_path / "in"
    (folder / "album.jpg").mkdir(parents=True)  # a folder: walked into, not ingested
    (folder / "album.jpg" / "x.txt").write_text("hello")
    batch = register_new_batch(layout, folder).batch
    ingest_batch(layout, batch)
    (fail,) = _rows(layout, "failures", failures_partition(batch))
    assert fail["reason"] == "not_an_image" and fail["item"].endswith("album.jpg/x.txt")


class Interrupt(Exception):
    pass


def test_interrupted_batch_resumes_and_ingests_every_file_once(layout, tmp_path):
    paths = write_variants(tmp_path / "in", 40)
    batch = register_new_batch(layout, tmp_path / "in").batch
    settings = IngestSettings(chunk_size=8, workers=1)

    def crash_after_20(done, total):
        if done == 20:
            raise Interrupt

    with pytest.raises(Interrupt):
        ingest_batch(layout, batch, settings, progress=crash_after_20)
    assert not tables.has_partition(layout, "images", batch)  # nothing looks finished
    assert not batch_is_ingested(layout, batch)

    summary = ingest_batch(layout, batch, settings)
    assert summary.resumed == 16  # two whole chunks of 8 were staged before the crash
    ids = [r["image_id"] for r in _rows(layout, "images", batch)]
    assert len(ids) == len(set(ids)) == 40
    assert sorted(r["source_uri"] for r in _rows(layout, "images", batch)) == sorted(map(str, paths))
    assert _rows(layout, "failures", failures_partition(batch)) == []


def test_process_pool_gives_the_same_rows_as_one_process(layout, tmp_path, sample_dir):
    write_variants(sample_dir / "more", 40)
    batch = register_new_batch(layout, sample_dir).batch

    def outcome(workers):
        ingest_batch(layout, batch, IngestSettings(workers=workers, chunk_size=16))
        imgs = {(r["source_uri"], r["image_id"], r["width"]) for r in _rows(layout, "images", batch)}
        fails = {(r["item"], r["reason"]) for r in _rows(layout, "failures", failures_partition(batch))}
        return imgs, fails

    assert worker_count(2, 64, 128) == 2  # as asked
    assert worker_count(0, 40, 128) == 1  # auto: too few files to pay for a pool
    assert outcome(1) == outcome(2)
