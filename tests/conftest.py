"""Shared fixtures: real pictures (scikit-image's, via `ffe sample`) in temporary folders."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def distinct_jpegs(folder: Path, n: int, size: tuple[int, int] = (256, 192)) -> list[Path]:
    """`n` different JPEGs (each with its own pixel noise, so each has its own hash)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    base = np.asarray(Image.fromarray(data.astronaut()).resize(size), dtype=np.int16)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        noisy = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, "JPEG", quality=92)
        path = folder / f"img_{i:05d}.jpg"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths
