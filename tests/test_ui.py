"""`ffe ui` starts Dagster (webserver + daemon) on loopback over the work folder's instance."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_webserver import free_port, graphql, wait_until_up

FFE = str(Path(sys.executable).parent / "ffe")


@contextlib.contextmanager
def ffe_ui(tmp_path: Path, *args: str, env: dict | None = None) -> Iterator[int]:
    """`ffe ui` on a free port, its output in tmp_path/ui.log (a pipe nobody reads fills up and blocks
    every run's logger); yields the port once the webserver answers, and stops it after."""
    port = free_port()
    log_path = tmp_path / "ui.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([FFE, "ui", *args, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)  # fmt: skip
        try:
            wait_until_up(proc, port, log=log_path)
            yield port
            assert proc.poll() is None, log_path.read_text()[-3000:]
        finally:
            # Ctrl-C's path; `dagster dev` owns its shutdown and has been seen to hang on a loaded
            # machine, so whatever is left after a minute is killed (no process outlives the test).
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.server
def test_ffe_ui_serves_the_graph_on_the_work_folders_instance(tmp_path, sample_dir):
    work = tmp_path / "work"
    with ffe_ui(tmp_path, "--workdir", str(work), "--input", str(sample_dir)) as port:
        info = graphql(port, "{ instance { info } }")["data"]["instance"]["info"]
        assert str(work / "dagster") in info  # runs and event logs live in the work folder
        nodes = graphql(port, "{ assetNodes { assetKey { path } } }")["data"]["assetNodes"]
        assert ["raw_images"] in [n["assetKey"]["path"] for n in nodes]
    assert (work / "dagster" / "dagster.yaml").is_file()


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(1500)
def test_under_ffe_ui_new_files_become_a_release_a_model_and_a_leaderboard_row(tmp_path):
    """The product's own loop, not an imitation of it: the real webserver and daemon (`ffe ui`),
    files dropped into the input folder, and nothing else until their release, trained model and
    leaderboard row exist. The settings the folder remembers (judge, pre-cropped) are the ones used."""
    import time

    from pipelines.cli import main
    from pixelsmile.synthetic import write_world_input
    from storage.layout import Layout
    from storage.leaderboard import failed_runs, leaderboard
    from storage.releases.plan import planned_versions

    work = tmp_path / "work"
    layout = Layout.at(work)
    assert main(["settings", "set", "bench.judge", "synthetic", "--workdir", str(work)]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFE_") or k == "FFE_LABEL_STUDIO_BIN"}
    with ffe_ui(tmp_path, "--workdir", str(work), "--pre-cropped", env=env) as port:
        write_world_input(work / "input", people=12, faces_per_person=7)
        deadline, rows = time.monotonic() + 1200, []
        while time.monotonic() < deadline and not rows:
            assert not failed_runs(layout), failed_runs(layout)
            failed = [r for r in _runs(port) if r["status"] == "FAILURE"]
            assert not failed, failed  # the daemon's run logs: <work>/dagster/storage/<run id>/
            time.sleep(10)
            rows = [r for r in leaderboard(layout) if r["kind"] == "measured"] if layout.tables.exists() else []
        assert rows, f"no leaderboard row after 20 minutes; runs: {_runs(port)}"
        (version,) = planned_versions(layout)
        (row,) = rows
        assert row["release"] == version and row["judge"] == "synthetic-exact@2"
        assert row["model"].startswith("pixelsmile-pixel@") and (layout.runs / version).is_dir()
        assert any(r["kind"] == "baseline" for r in leaderboard(layout, version))
        failed = [r for r in _runs(port) if r["status"] == "FAILURE"]
        assert not failed, failed


def _runs(port: int) -> list[dict]:
    """Every run the daemon launched: job, partition and status (through the webserver's GraphQL)."""
    data = graphql(port, "{ runsOrError { ... on Runs { results { jobName status tags { key value } } } } }")
    return [{"job": r["jobName"], "status": r["status"],
             "partition": next((t["value"] for t in r["tags"] if t["key"] == "dagster/partition"), None)}
            for r in data["data"]["runsOrError"]["results"]]  # fmt: skip
