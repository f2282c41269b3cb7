"""The leaderboard: measured runs rank beside the paper's reported rows, never mixed; a failed run is
recorded with its reason and never ranks; `ffe bench show` prints both."""

from __future__ import annotations

import json
import math

import pytest

from pipelines.cli import main
from storage.layout import Layout
from storage.leaderboard import RunExists, failed_runs, leaderboard, record_run
from storage.reported import REPORTED

GOOD = {"mSCR": 0.08, "Acc-6": 0.7, "Acc-12": 0.6, "CLS-6": 0.8, "CLS-12": 0.75, "ID Sim": 0.9, "HES": 0.5,
        "CLS-12/task": 0.7, "|I-a|": 0.1, "Acc-12@1": 0.65}  # fmt: skip


def test_measured_rows_rank_by_hes_beside_the_reported_ones(tmp_path):
    layout = Layout.at(tmp_path / "w")
    record_run(layout, "run-a", release="r1", model="pixelsmile-lora@a", metrics=GOOD,
               ci95={"mSCR": [0.05, 0.1]}, judge="exact@1", tasks=840, config_hash="c1", git_commit="abc")  # fmt: skip
    record_run(layout, "run-b", release="r1", model="pixelsmile-lora@b", metrics=GOOD | {"HES": 0.6})
    record_run(layout, "noedit", release="r1", model="no-edit", kind="baseline", metrics=GOOD | {"HES": 0.9})
    rows = leaderboard(layout)
    assert [r["model"] for r in rows[:3]] == ["pixelsmile-lora@b", "pixelsmile-lora@a", "no-edit"]
    reported = [r for r in rows if r["kind"] == "reported"]
    assert [r["model"] for r in reported] == [r["model"] for r in REPORTED]
    paper = next(r for r in reported if r["model"] == "PixelSmile")
    assert paper["mscr"] == 0.055 and paper["cls12"] == 0.7305 and paper["release"] is None
    assert next(r for r in reported if r["model"] == "SliderEdit")["mscr"] is None  # blank in the paper
    a = next(r for r in rows if r["run_id"] == "run-a")
    assert a["cls12_task"] == 0.7 and json.loads(a["ci95"]) == {"mSCR": [0.05, 0.1]} and a["git_commit"] == "abc"
    assert [r["model"] for r in leaderboard(layout, release="r2") if r["kind"] != "reported"] == []
    with pytest.raises(RunExists):
        record_run(layout, "run-a", release="r1", model="again", metrics=GOOD)


def test_a_bad_run_is_recorded_as_failed_and_never_ranks(tmp_path):
    layout = Layout.at(tmp_path / "w")
    record_run(layout, "nan", release="r1", model="m", metrics=GOOD | {"CLS-12": math.nan})
    record_run(layout, "crash", release="r1", model="m", reason="training stopped: the loss is not finite at step 12")
    assert [r for r in leaderboard(layout) if r["kind"] != "reported"] == []
    reasons = {f["run_id"]: f["reason"] for f in failed_runs(layout)}
    assert reasons == {"nan": "CLS-12 not a number (too few edits?)",
                       "crash": "training stopped: the loss is not finite at step 12"}  # fmt: skip


def test_ffe_bench_show_prints_measured_and_reported_rows(tmp_path, capsys):
    work = tmp_path / "w"
    layout = Layout.at(work)
    record_run(layout, "run-a", release="r1", model="pixelsmile-lora@a", metrics=GOOD)
    record_run(layout, "crash", release="r1", model="pixelsmile-lora@c", reason="bench: 3 edited images missing")
    assert main(["bench", "show", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    measured = next(line for line in lines if line.startswith("measured"))
    assert "pixelsmile-lora@a" in measured and "0.0800" in measured and "0.7500" in measured
    assert any(line.startswith("reported") and "PixelSmile " in line and "0.0550" in line for line in lines)
    assert "reported by the paper" in out and "crash (pixelsmile-lora@c, release r1): bench: 3 edited" in out
    assert main(["bench", "show", "--workdir", str(work), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["leaderboard"]) == 1 + len(REPORTED) and shown["failed"][0]["run_id"] == "crash"


def test_ffe_bench_show_names_run_and_judge_gives_intervals_and_direction(tmp_path, capsys):
    """Found: no run id or judge column, no intervals, no direction; in --json `tasks` held the
    number of edits and `ci95` was a JSON string inside the JSON."""
    work = tmp_path / "w"
    layout = Layout.at(work)
    record_run(layout, "run-a", release="r1", model="pixelsmile-lora@a", metrics=GOOD | {"mSCR": -1e-9},
               ci95={"mSCR": [0.05, 0.1], "HES": [0.4, 0.6]}, judge="exact@1", tasks=60, edits=420)  # fmt: skip
    assert main(["bench", "show", "--workdir", str(work)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "mSCR↓" in lines[0] and "HES↑" in lines[0] and "judge" in lines[0]
    k = next(i for i, line in enumerate(lines) if line.startswith("measured"))
    assert "exact@1" in lines[k] and "0.0000" in lines[k] and "-0.0000" not in lines[k]
    assert "run run-a" in lines[k + 1] and "0.050-0.100" in lines[k + 1] and "0.400-0.600" in lines[k + 1]
    assert main(["bench", "show", "--workdir", str(work), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    (row,) = [r for r in shown["leaderboard"] if r["kind"] == "measured"]
    assert (row["tasks"], row["edits"]) == (60, 420) and row["ci95"]["mscr"] == [0.05, 0.1]
    assert shown["better"]["mscr"] == "lower" and shown["better"]["hes"] == "higher"
    assert main(["bench", "show", "--workdir", str(work), "--release", "nope"]) == 1  # Found: accepted anything
