"""`ffe ui` starts Dagster (webserver + daemon) on loopback over the work folder's instance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_webserver import free_port, graphql, wait_until_up

FFE = str(Path(sys.executable).parent / "ffe")


@pytest.mark.slow
@pytest.mark.server
def test_ffe_ui_serves_the_graph_on_the_work_folders_instance(tmp_path, sample_dir):
    work, port = tmp_path / "work", free_port()
    proc = subprocess.Popen(
        [FFE, "ui", "--workdir", str(work), "--input", str(sample_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_until_up(proc, port)
        info = graphql(port, "{ instance { info } }")["data"]["instance"]["info"]
        assert str(work / "dagster") in info  # runs and event logs live in the work folder
        nodes = graphql(port, "{ assetNodes { assetKey { path } } }")["data"]["assetNodes"]
        assert ["raw_images"] in [n["assetKey"]["path"] for n in nodes]
    finally:
        # Ctrl-C's path; `dagster dev` owns its shutdown and has been seen to hang on a loaded
        # machine, so whatever is left after a minute is killed (no process outlives the test).
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert (work / "dagster" / "dagster.yaml").is_file()
