"""The `ffe` CLI end to end on real files; errors are one line without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from curation.sample import BROKEN
from pipelines.cli import main

FFE = str(Path(sys.executable).parent / "ffe")


def ffe(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sample_writes_good_and_broken_files(tmp_path, capsys):
    code, out, _ = ffe(capsys, "sample", str(tmp_path / "s"))
    assert code == 0 and "wrote 24 files" in out
    names = {p.name for p in (tmp_path / "s").iterdir()}
    assert set(BROKEN) <= names and "astronaut_exif_rotated.jpg" in names


def test_build_status_query_and_rebuild(tmp_path, sample_dir, capsys):
    work = str(tmp_path / "w")
    code, out, _ = ffe(capsys, "build", "--input", str(sample_dir), "--workdir", work)
    assert code == 0 and "0 failed" in out

    code, out, _ = ffe(capsys, "status", "--workdir", work, "--json")
    info = json.loads(out)
    assert (info["tables"]["images"], info["tables"]["failures"], info["tables"]["faces"]) == (15, 13, 11)
    assert info["batches"]["ingested"] == 1 and info["batches"]["pending"] == []
    reasons = {f["reason"]: f["count"] for f in info["failures_by_reason"] if f["stage"] == "raw_images"}
    broken = {r: list(BROKEN.values()).count(r) for r in set(BROKEN.values())}
    # A byte duplicate is not broken: counted apart from the failures.
    assert reasons == {r: n for r, n in broken.items() if r != "duplicate"} and info["known_files"] == 1
    assert info["behind"] == {}  # every stage up to date
    assert [(f["stage"], f["reason"], f["count"]) for f in info["failures_by_reason"] if f["stage"] == "faces"] == [
        ("faces", "no_face", 4)  # camera, cat, coffee, rocket
    ]

    code, out, _ = ffe(capsys, "status", "--workdir", work)
    assert code == 0 and "unsupported_format" in out and "images                 15" in out
    assert "1 file(s) with bytes already held" in out and "every stage up to date" in out
    # Runs are named by what they build, as the daemon's are (never __ephemeral_asset_job__).
    from pipelines.instance import open_instance
    from storage.layout import Layout

    with open_instance(Layout.at(work)) as instance:
        jobs = {r.job_name for r in instance.get_runs()}
        events = [r for key in instance.get_asset_keys()
                  for r in instance.fetch_materializations(key, limit=1000).records]  # fmt: skip
        floats = [(e.asset_key.to_user_string(), k, v) for e in events
                  for k, v in _floats(e.asset_materialization.metadata)]  # fmt: skip
    assert jobs == {"batch_job", "variants_job", "across_batches_job", "release_job", "model_job"}
    # Found: metadata at full float precision (0.07000000029802322): the UI shows what a person reads.
    assert floats and all(round(v, 4) == v for _, _, v in floats), [f for f in floats if round(f[2], 4) != f[2]]

    code, out, _ = ffe(
        capsys, "query", "SELECT count(*) AS n FROM images WHERE exif_orientation = 6", "--workdir", work, "--json"
    )
    assert json.loads(out) == [{"n": 1}]
    code, out, _ = ffe(
        capsys, "query", "SELECT format, count(*) AS n FROM images GROUP BY 1 ORDER BY 1", "--workdir", work
    )
    assert out.splitlines()[0].split() == ["format", "n"] and "(3 rows)" in out

    code, out, _ = ffe(capsys, "release", "list", "--workdir", work, "--json")
    (rel,) = json.loads(out)
    assert rel["state"] == "complete" and rel["faces"] == 2  # the astronaut and her mirror image
    assert ffe(capsys, "release", "verify", "latest", "--workdir", work)[0] == 0
    tars = {p.name: p.read_bytes() for p in (tmp_path / "w" / "releases" / rel["version"]).glob("shards/*.tar")}

    code, out, _ = ffe(capsys, "build", "--input", str(sample_dir), "--workdir", work)
    assert code == 0 and "2 partition(s) (batches, releases) already built" in out  # the batch, the release
    code, out, _ = ffe(capsys, "release", "build", "--workdir", work)
    assert code == 0 and f"release {rel['version']}: unchanged since the last build, complete" in out
    assert json.loads(ffe(capsys, "status", "--workdir", work, "--json")[1])["releases"] == [rel["version"]]
    again = {p.name: p.read_bytes() for p in (tmp_path / "w" / "releases" / rel["version"]).glob("shards/*.tar")}
    assert again == tars and tars


def test_build_without_input_uses_the_sample(tmp_path, capsys):
    work = tmp_path / "w"
    code, out, _ = ffe(capsys, "build", "--workdir", str(work), "--select", "raw_images")
    assert code == 0 and "wrote the sample input" in out
    assert (work / "input" / "astronaut.jpg").is_file()


def test_build_config_file_reaches_the_asset(tmp_path, sample_dir, capsys):
    cfg = tmp_path / "ffe.yaml"
    cfg.write_text("raw_images:\n  max_megapixels: 0.2\n")  # below the 512x512 sample pictures
    work = str(tmp_path / "w")
    assert ffe(capsys, "build", "--input", str(sample_dir), "--workdir", work, "--config", str(cfg),
               "--select", "raw_images")[0] == 0  # fmt: skip
    _, out, _ = ffe(
        capsys, "query", "SELECT count(*) AS n FROM failures WHERE reason = 'too_large'", "--workdir", work, "--json"
    )
    assert json.loads(out)[0]["n"] > 5


@pytest.mark.parametrize(
    "argv,message",
    [
        (["status", "--workdir", "{tmp}/none"], "does not exist (run `ffe build` first)"),
        (["query", "SELECT nope FROM images", "--workdir", "{work}"], 'column "nope" not found'),
        (["query", "SELECT * FROM faces_not_yet", "--workdir", "{work}"], "faces_not_yet"),
        (["build", "--input", "{tmp}/missing", "--workdir", "{work}"], "input folder"),
        (["build", "--input", "{sample}", "--workdir", "{work}", "--select", "no_such_asset"], "no_such_asset"),
        (["build", "--input", "{sample}", "--workdir", "{work}", "--config", "{tmp}/bad.yaml"], "max_pixels"),
        (["build", "--input", "{sample}", "--workdir", "{work}", "--config", "{tmp}/nope.yaml"], "nope.yaml"),
        (["build", "--input", "{sample}", "--workdir", "{work}", "--config", "{tmp}/typo.yaml"], "raw_image;"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, sample_dir, capsys, argv, message):
    (tmp_path / "w").mkdir()
    (tmp_path / "bad.yaml").write_text("raw_images:\n  max_pixels: 3\n")
    (tmp_path / "typo.yaml").write_text("raw_image:\n  max_megapixels: 3\n")
    subst = {"tmp": str(tmp_path), "work": str(tmp_path / "w"), "sample": str(sample_dir)}
    code, _, err = ffe(capsys, *[a.format(**subst) for a in argv])
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("ffe ")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_a_failing_step_fails_the_build_and_names_the_batch(tmp_path, sample_dir, capsys):
    cfg = tmp_path / "ffe.yaml"
    (tmp_path / "junk.task").write_bytes(b"not a model")  # there, so not refused up front; fails in its step
    cfg.write_text(f"faces:\n  landmarker_model: {tmp_path}/junk.task\n")
    code, out, _ = ffe(
        capsys, "build", "--input", str(sample_dir), "--workdir", str(tmp_path / "w"), "--config", str(cfg),
        "--select", "+faces",
    )  # fmt: skip
    assert code == 1
    assert "FAILED batch-" in out and f"{tmp_path}/junk.task is not a valid" in out and "1 failed" in out


def test_a_setting_out_of_range_is_refused_before_any_run(tmp_path, sample_dir, capsys):
    cfg = tmp_path / "ffe.yaml"
    cfg.write_text("raw_images:\n  chunk_size: 0\n")
    code, out, err = ffe(
        capsys, "build", "--input", str(sample_dir), "--workdir", str(tmp_path / "w"), "--config", str(cfg),
        "--select", "raw_images",
    )  # fmt: skip
    assert code == 1 and not (tmp_path / "w").exists()
    assert f"config {cfg}: raw_images.chunk_size: Input should be greater than 0 (given 0)" in err


@pytest.mark.slow
def test_console_script_runs_and_errors_without_traceback(tmp_path):
    ok = subprocess.run([FFE, "sample", str(tmp_path / "s")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [FFE, "status", "--workdir", str(tmp_path / "none")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def _floats(metadata: dict, prefix: str = ""):
    """Every float in Dagster metadata, nested dicts and lists included."""
    for key, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, float):
            yield prefix + key, raw
        elif isinstance(raw, dict):
            yield from _floats(raw, f"{prefix}{key}.")
        elif isinstance(raw, list):
            yield from _floats({str(i): v for i, v in enumerate(raw)}, f"{prefix}{key}.")


def test_query_prints_readable_cells_and_json_keeps_full_values(tmp_path, sample_dir, capsys):
    """Found: `select * from faces limit 3` printed 152 KB in lines of 30,000 characters and float32
    values like 0.07000000029802322."""
    work = str(tmp_path / "w")
    assert ffe(capsys, "build", "--input", str(sample_dir), "--workdir", work, "--select", "faces")[0] == 0
    code, out, _ = ffe(capsys, "query", "SELECT * FROM faces LIMIT 3", "--workdir", work)
    assert code == 0 and len(out) < 8000 and max(len(line) for line in out.splitlines()) < 2500
    assert "[1434 floats]" in out and "{52 fields}" in out and "(3 rows)" in out
    code, out, _ = ffe(capsys, "query", "SELECT 0.07::FLOAT AS f, [0.1::FLOAT] AS l, 'x' AS s", "--workdir", work)
    assert out.splitlines()[2].split() == ["0.07", "[0.1]", "x"]
    code, out, _ = ffe(capsys, "query", "SELECT * FROM faces LIMIT 1", "--workdir", work, "--json")
    (row,) = json.loads(out)
    assert len(row["landmarks"]) == 1434 and len(row["blendshapes"]) == 52
    assert all(len(repr(v)) <= 12 for v in row["landmarks"])  # float32 read back at its shortest
    code, out, _ = ffe(capsys, "query", "SELECT 0.07::FLOAT AS f", "--workdir", work, "--json")
    assert json.loads(out) == [{"f": 0.07}]


def test_a_moved_work_folder_knows_its_own_input(tmp_path, capsys):
    """Found: a copied or moved work folder re-ingested its own input folder as new files and
    counted them all as `duplicate` failures (manifests kept absolute paths)."""
    import shutil

    from pixelsmile.synthetic import write_world_input

    work = tmp_path / "w"
    write_world_input(work / "input", people=2, faces_per_person=2, size=64)
    assert ffe(capsys, "build", "--workdir", str(work), "--pre-cropped", "--select", "raw_images")[0] == 0
    for moved in (tmp_path / "copied", tmp_path / "moved"):
        if moved.name == "copied":
            shutil.copytree(work, moved, symlinks=True)
        else:
            work.rename(moved)
        code, out, _ = ffe(capsys, "build", "--workdir", str(moved), "--select", "raw_images")
        assert code == 0 and "registered" not in out, out
        info = json.loads(ffe(capsys, "status", "--workdir", str(moved), "--json")[1])
        assert info["batches"]["registered"] == 1 and info["known_files"] == 0 and info["tables"]["images"] == 4


def test_status_shows_quality_rejects_and_stages_not_up_to_date(tmp_path, sample_dir, capsys):
    """Found: faces 168 -> embeddings 159 with "failures: none": quality rejects were nowhere, and
    nothing said that identities were older than faces."""
    from PIL import Image, ImageEnhance

    work = str(tmp_path / "w")
    with Image.open(sample_dir / "astronaut.jpg") as im:  # a face too dark to label
        ImageEnhance.Brightness(im).enhance(0.12).save(sample_dir / "astronaut_dark.jpg")
    assert ffe(capsys, "build", "--input", str(sample_dir), "--workdir", work, "--select", "faces")[0] == 0
    info = json.loads(ffe(capsys, "status", "--workdir", work, "--json")[1])
    faces, rejected = info["tables"]["faces"], info["quality"]["rejected"]
    assert rejected >= 1 and info["quality"]["by_reason"].get("too_dark", 0) >= 1
    assert "too_dark" in ffe(capsys, "status", "--workdir", work)[1]
    with_query = json.loads(ffe(capsys, "query", "SELECT count(*) AS n FROM faces WHERE quality_ok", "--workdir",
                                work, "--json")[1])[0]["n"]  # fmt: skip
    assert rejected == faces - with_query
    assert set(info["behind"]) == {"face_embeddings", "prelabels"}
    assert info["behind"]["face_embeddings"].startswith("1 batch(es) not done: batch-")
    text = ffe(capsys, "status", "--workdir", work)[1]
    assert "not up to date" in text and "face_embeddings" in text
    assert ffe(capsys, "build", "--input", str(sample_dir), "--workdir", work)[0] == 0
    info = json.loads(ffe(capsys, "status", "--workdir", work, "--json")[1])
    assert info["behind"] == {} and "every stage up to date" in ffe(capsys, "status", "--workdir", work)[1]


def test_the_sample_never_enters_a_work_folder_that_holds_batches(tmp_path, sample_dir, capsys):
    """Found: `ffe build` without --input on a folder built from another input wrote the demo sample
    into <workdir>/input and ingested it (two of its pictures were then pushed to annotators)."""
    work = tmp_path / "w"
    assert ffe(capsys, "build", "--input", str(sample_dir), "--workdir", str(work), "--select", "raw_images")[0] == 0
    (work / "settings.yaml").unlink()  # a folder built before settings were remembered
    code, out, _ = ffe(capsys, "build", "--workdir", str(work), "--select", "raw_images")
    assert code == 0 and "building the batches registered before" in out
    assert not (work / "input").exists()
    assert json.loads(ffe(capsys, "status", "--workdir", str(work), "--json")[1])["batches"]["registered"] == 1
