"""The Dagster instance of a work folder: <workdir>/dagster, configured by the repo's dagster.yaml."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from pipelines.errors import FFEError
from storage.atomic import atomic_write_bytes
from storage.layout import Layout
from storage.locks import work_lock

INSTANCE_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
GPU_POOL = "gpu"


def prepare_dagster_home(layout: Layout) -> Path:
    """Create <workdir>/dagster with the project's dagster.yaml (refreshed if the repo's changed)."""
    if not INSTANCE_YAML.is_file():
        raise FFEError(f"instance config {INSTANCE_YAML} is missing: install the project with `pip install -e .`")
    home = layout.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    wanted = INSTANCE_YAML.read_bytes()
    target = home / "dagster.yaml"
    if not target.is_file() or target.read_bytes() != wanted:
        atomic_write_bytes(target, wanted)
    return home


@contextlib.contextmanager
def dagster_home_env(home: Path) -> Iterator[None]:
    """DAGSTER_HOME set to `home` for the block (dagster.yaml reads its storage paths from it)."""
    before = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = before


@contextlib.contextmanager
def open_instance(layout: Layout) -> Iterator[dg.DagsterInstance]:
    home = prepare_dagster_home(layout)
    with dagster_home_env(home):
        # Two commands on a fresh folder would both create the instance's SQLite tables ("table
        # alembic_version already exists"): creation takes turns; opening an existing one is cheap.
        with work_lock(layout, "dagster-instance", what="create the Dagster instance", timeout_s=300):
            instance = dg.DagsterInstance.from_config(str(home))
        try:
            ensure_gpu_pool(instance)
            yield instance
        finally:
            instance.dispose()


def ensure_gpu_pool(instance: dg.DagsterInstance) -> None:
    """One GPU step at a time: dagster.yaml can set only a default pool limit, so name this one."""
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits and GPU_POOL not in storage.get_concurrency_keys():
        storage.set_concurrency_slots(GPU_POOL, 1)
