"""Start and stop a Label Studio server on loopback, as the tests and a person's first setup do.

Label Studio lives in its own virtual environment (`make label-studio`: its pins clash with ours).
The admin user and its API token come from the caller (for a person: environment variables, see
docs/annotating.md); the token is passed through the environment, never on a command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LocalServer:
    proc: subprocess.Popen
    url: str
    log: Path

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def server_env(data_dir: Path, token: str, username: str, password: str, document_root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(data_dir),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LATEST_VERSION_CHECK": "false",  # no call home at every start
        "SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
    }


def start(
    binary: str | Path,
    data_dir: Path,
    port: int,
    *,
    token: str,
    username: str = "admin@ffe.local",
    password: str,
    document_root: Path,
    timeout: float = 180,
) -> LocalServer:
    """Start `label-studio` on 127.0.0.1:`port` and wait until /health answers UP."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.log"
    argv = [str(Path(binary).resolve()), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, env=server_env(data_dir, token, username, password, document_root), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=data_dir,
        )  # fmt: skip
    server = LocalServer(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as resp:
                if b"UP" in resp.read():
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"Label Studio did not come up within {timeout:.0f} s; see {log}")
        time.sleep(1)
