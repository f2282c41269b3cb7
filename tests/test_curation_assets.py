"""The curation assets in Dagster and through `ffe build`: the issue's acceptance on the sample."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from curation import align
from curation.batches import register_new_batch
from curation.curate import curate_batch
from curation.ingest import ingest_batch
from pipelines.cli import main
from pipelines.definitions import build_definitions
from pipelines.defs.ingest import ingest_batches
from storage import tables


def query(capsys, work, sql):
    assert main(["query", sql, "--workdir", str(work), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ffe_build_plus_identities_on_the_sample(tmp_path, sample_dir, capsys):
    work = tmp_path / "w"
    assert main(["build", "--input", str(sample_dir), "--workdir", str(work), "--select", "+identities"]) == 0
    capsys.readouterr()
    ids = query(capsys, work, """
        SELECT regexp_extract(i.source_uri, '[^/]+$') AS name, d.identity_id
        FROM identities d JOIN faces f USING (face_id) JOIN images i USING (image_id)""")  # fmt: skip
    by_name = {r["name"]: r["identity_id"] for r in ids}
    wanted = ["astronaut.jpg", "astronaut_flipped.jpg", "astronaut_face_crop.jpg", "astronaut_exif_rotated.jpg"]
    assert len({by_name[n] for n in wanted}) == 1

    smile = query(
        capsys,
        work,
        """
        SELECT min(blendshapes.mouthSmileLeft) AS l, min(blendshapes.mouthSmileRight) AS r
        FROM faces JOIN images USING (image_id) WHERE source_uri LIKE '%astronaut.jpg'""",
    )[0]
    assert smile["l"] > 0.5 and smile["r"] > 0.5

    no_face = query(
        capsys,
        work,
        """
        SELECT regexp_extract(i.source_uri, '[^/]+$') AS name FROM failures x JOIN images i ON x.item = i.image_id
        WHERE x.stage = 'faces' AND x.reason = 'no_face' ORDER BY 1""",
    )
    assert [r["name"] for r in no_face] == ["camera.png", "chelsea_cat.jpg", "coffee.jpg", "rocket.jpg"]

    crops = query(capsys, work, "SELECT crop_path, kps5 FROM faces WHERE quality_ok")
    for row in crops:
        img = Image.open(work / row["crop_path"])
        assert img.size == (512, 512)
        eyes = np.asarray(row["kps5"]).reshape(5, 2)[:2]
        assert np.abs(eyes - align.CANONICAL_5[:2] * 512).max() < 3.0  # the axis also follows the mouth

    assert query(capsys, work, "SELECT count(*) AS n FROM faces")[0]["n"] == 11
    assert query(capsys, work, "SELECT count(*) AS n FROM face_embeddings")[0]["n"] == 10


def test_materialize_the_batch_job_and_identities_with_checks(layout, sample_dir):
    defs = build_definitions(str(layout.root), str(sample_dir))
    batch = register_new_batch(layout, sample_dir).batch
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ingest_batches.name, [batch])
        result = defs.resolve_job_def("batch_job").execute_in_process(
            partition_key=batch, instance=instance, resources=defs.resources
        )
        assert result.success
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks == {"every_file_accounted_for": True, "every_image_accounted_for": True, "crops_exist": True}
        (mat,) = result.asset_materializations_for_node("faces")
        assert mat.metadata["faces"].value == 11 and mat.metadata["images_without_face"].value == 4

        result = dg.materialize(defs.assets, selection=["identities"], instance=instance, resources=defs.resources)
        assert result.success
        (check,) = result.get_asset_check_evaluations()
        assert check.passed
        (mat,) = result.asset_materializations_for_node("identities")
        assert mat.metadata["identities"].value == 1


def test_interrupted_faces_step_resumes(layout, sample_dir):
    batch = register_new_batch(layout, sample_dir).batch
    ingest_batch(layout, batch)

    class Stop(Exception):
        pass

    def stop_after_6(done, total):
        if done == 6:
            raise Stop

    with pytest.raises(Stop):
        curate_batch(layout, batch, workers=1, chunk_size=3, progress=stop_after_6)
    assert not tables.has_partition(layout, "faces", batch)
    summary = curate_batch(layout, batch, workers=1, chunk_size=3)
    assert summary.resumed == 6
    ids = tables.read_partition(layout, "faces", batch).column("face_id").to_pylist()
    assert len(ids) == len(set(ids)) == 11


def test_a_missing_model_fails_the_build_naming_key_and_path(tmp_path, sample_dir, capsys):
    """Refused before any run (it failed in its step, after the batch was ingested); a file that is
    there but not a model still fails in the step, naming key and path."""
    cfg = tmp_path / "ffe.yaml"
    cfg.write_text(f"faces:\n  landmarker_model: {tmp_path}/missing.task\n")
    code = main(["build", "--input", str(sample_dir), "--workdir", str(tmp_path / "w"), "--config", str(cfg),
                 "--select", "faces"])  # fmt: skip
    assert code == 1 and not (tmp_path / "w").exists()
    assert f"faces.landmarker_model: model file {tmp_path}/missing.task does not exist" in capsys.readouterr().err
    (tmp_path / "junk.task").write_bytes(b"not a model")
    cfg.write_text(f"faces:\n  landmarker_model: {tmp_path}/junk.task\n")
    code = main(["build", "--input", str(sample_dir), "--workdir", str(tmp_path / "w"), "--config", str(cfg),
                 "--select", "faces"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    (line,) = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert "faces.landmarker_model" in line and f"{tmp_path}/junk.task is not a valid" in line


def test_a_whole_images_batch_takes_every_image_whole_even_where_a_face_is_found(tmp_path, capsys):
    """The synthetic world's drawn faces: a detector aligns some and not others, so the world is
    ingested with --whole-images; the setting is remembered, and every face is the image's frame."""
    from skimage import data

    from pixelsmile.synthetic import write_world_input

    folder = write_world_input(tmp_path / "world", people=2, faces_per_person=2)
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")  # a photo any detector finds
    work = tmp_path / "w"
    argv = ["build", "--input", str(folder), "--workdir", str(work), "--whole-images", "--select", "faces"]
    assert main(argv) == 0
    capsys.readouterr()
    rows = query(capsys, work, "SELECT detector, bbox_x0, bbox_y0 FROM faces")
    assert len(rows) == 5 and {(r["detector"], r["bbox_x0"], r["bbox_y0"]) for r in rows} == {("whole_image", 0, 0)}
    assert "whole_images: true" in (work / "settings.yaml").read_text()


def test_anime_pre_cropped_batch_keeps_whole_images(tmp_path, capsys):
    from skimage import data

    folder = tmp_path / "anime"
    folder.mkdir()
    Image.fromarray(data.chelsea()).save(folder / "character.png")  # no human face: taken whole
    work = tmp_path / "w"
    argv = ["build", "--input", str(folder), "--workdir", str(work), "--domain", "anime", "--pre-cropped",
            "--select", "faces"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    (row,) = query(capsys, work, "SELECT domain, detector, quality_ok FROM faces")
    assert row == {"domain": "anime", "detector": "whole_image", "quality_ok": True}
