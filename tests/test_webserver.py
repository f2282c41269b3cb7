"""dagster-webserver on loopback serves our graph: the assets are found through its GraphQL API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipelines.instance import prepare_dagster_home
from storage.layout import Layout
from tests.conftest import REPO

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def wait_until_up(proc: subprocess.Popen, port: int, timeout_s: float = 180, log: Path | None = None) -> None:
    """Until the webserver answers; `log`: where the process writes (else its stderr pipe)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, (log.read_text() if log else proc.stderr.read().decode())[-3000:]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert time.monotonic() < deadline, "the webserver did not come up"
            time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.server
def test_webserver_lists_the_assets_over_graphql(tmp_path):
    layout = Layout.at(tmp_path / "work")
    home = prepare_dagster_home(layout)  # the same instance config that `ffe ui` uses
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "FFE_WORKDIR": str(layout.root)}
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-m", "pipelines.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_until_up(proc, port)
        nodes = graphql(port, "{ assetNodes { assetKey { path } groupName isPartitioned } }")["data"]["assetNodes"]
        by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        assert by_key["raw_images"] == {
            "assetKey": {"path": ["raw_images"]},
            "groupName": "ingest",
            "isPartitioned": True,
        }
        sensors = graphql(
            port,
            '{ sensorsOrError(repositorySelector: {repositoryLocationName: "pipelines.definitions", '
            'repositoryName: "__repository__"}) { ... on Sensors { results { name } } } }',
        )["data"]["sensorsOrError"]["results"]
        assert "new_input_files" in [s["name"] for s in sensors]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert (home / "dagster.yaml").is_file()
