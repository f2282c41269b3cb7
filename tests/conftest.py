"""Shared fixtures: real pictures (scikit-image's, via `ffe sample`) in temporary folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from curation.sample import write_sample
from storage.layout import Layout

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_master(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("sample") / "input")[0].parent


@pytest.fixture
def sample_dir(sample_master: Path, tmp_path: Path) -> Path:
    """A private copy of the sample input (tests may add or remove files)."""
    dst = tmp_path / "input"
    shutil.copytree(sample_master, dst, symlinks=True)
    # The dangling link pointed into the master folder; keep it dangling in the copy.
    link = dst / "moved_away.jpg"
    link.unlink()
    link.symlink_to(dst / "no_such_file.jpg")
    return dst


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout.at(tmp_path / "work")


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio server on loopback for the session (installed by `make label-studio`,
    which `make test` runs first). Its local-files document root is pytest's temp folder, so every
    test's work folder can serve its crops."""
    import os
    import secrets

    from annotation.local_server import start

    binary = label_studio_binary()
    port = free_port()
    token = secrets.token_hex(20)
    server = start(
        binary, tmp_path_factory.mktemp("label-studio"), port, token=token, password=secrets.token_hex(12),
        document_root=tmp_path_factory.getbasetemp(),
    )  # fmt: skip
    # Image URLs are relative to the server's document root: tell `ffe` where it is.
    previous = os.environ.get("FFE_LABEL_STUDIO_DOCUMENT_ROOT")
    os.environ["FFE_LABEL_STUDIO_DOCUMENT_ROOT"] = str(tmp_path_factory.getbasetemp())
    try:
        yield server.url, token
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("FFE_LABEL_STUDIO_DOCUMENT_ROOT", None)
        else:
            os.environ["FFE_LABEL_STUDIO_DOCUMENT_ROOT"] = previous


def label_studio_binary() -> Path:
    import os

    binary = Path(os.environ.get("FFE_LABEL_STUDIO_BIN", REPO / ".venv-ls" / "bin" / "label-studio"))
    if not binary.is_file():
        pytest.skip("Label Studio is not installed: run `make label-studio` (make test does)")
    return binary


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
