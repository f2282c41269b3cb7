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
