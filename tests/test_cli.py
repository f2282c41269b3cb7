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
    assert reasons == {r: list(BROKEN.values()).count(r) for r in set(BROKEN.values())}
    assert [(f["stage"], f["reason"], f["count"]) for f in info["failures_by_reason"] if f["stage"] == "faces"] == [
        ("faces", "no_face", 4)  # camera, cat, coffee, rocket
    ]

    code, out, _ = ffe(capsys, "status", "--workdir", work)
    assert code == 0 and "unsupported_format" in out and "images                 15" in out

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
    cfg.write_text("raw_images:\n  chunk_size: 0\n")
    code, out, _ = ffe(
        capsys, "build", "--input", str(sample_dir), "--workdir", str(tmp_path / "w"), "--config", str(cfg),
        "--select", "raw_images",
    )  # fmt: skip
    assert code == 1
    assert "FAILED batch-" in out and "greater than 0" in out and "1 failed" in out


@pytest.mark.slow
def test_console_script_runs_and_errors_without_traceback(tmp_path):
    ok = subprocess.run([FFE, "sample", str(tmp_path / "s")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [FFE, "status", "--workdir", str(tmp_path / "none")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
