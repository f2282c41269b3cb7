"""The Dagster instance of a work folder: <workdir>/dagster, configured by the repo's dagster.yaml."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import psutil
from dagster._core.events import DagsterEventType
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.storage.dagster_run import FINISHED_STATUSES, DagsterRunStatus, RunsFilter

from pipelines.errors import FFEError
from storage.atomic import atomic_write_bytes
from storage.layout import Layout, write_refused
from storage.locks import work_lock

INSTANCE_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
GPU_POOL = "gpu"
PID_TAG = "ffe/pid"  # the process that runs an `ffe build` run (in process): how a dead one is told
HOST_TAG = "ffe/host"  # and its machine: a shared instance's runs of other machines are not judged here
REBUILD_TAG = "ffe/rebuild"  # a run asked for by `ffe build --rebuild`: trained afresh, not resumed


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
def open_instance(layout: Layout, echo: Callable[[str], None] | None = None) -> Iterator[dg.DagsterInstance]:
    """The work folder's Dagster instance, its `gpu` pool set and the runs of dead processes
    reclaimed (`echo` is told about each)."""
    if not _writable(layout.root / "locks") and (layout.dagster_home / "dagster.yaml").is_file():
        # A read-only work folder (a finished one mounted to look at): SQLite cannot open its
        # records in place (it writes beside them even to read), so a copy of them is read;
        # nothing is locked, reclaimed or set. Commands that write refuse the folder before this.
        with tempfile.TemporaryDirectory(prefix="ffe-records-") as tmp:
            home = Path(shutil.copytree(layout.dagster_home, Path(tmp) / "dagster", symlinks=True))
            with dagster_home_env(home):
                instance = dg.DagsterInstance.from_config(str(home))
                try:
                    yield instance
                finally:
                    instance.dispose()
        return
    home = prepare_dagster_home(layout)
    with dagster_home_env(home):
        # Two commands on a fresh folder would both create the instance's SQLite tables ("table
        # alembic_version already exists"): creation takes turns; opening an existing one is cheap.
        with work_lock(layout, "dagster-instance", what="create the Dagster instance", timeout_s=300):
            instance = dg.DagsterInstance.from_config(str(home))
        try:
            ensure_gpu_pool(instance)
            reclaim_dead_runs(instance, echo)
            yield instance
        finally:
            instance.dispose()


def _writable(folder: Path) -> bool:
    """Whether a file can be made in `folder` (or, while it does not exist, its parent): tried, as
    mode bits say nothing about a read-only mount."""
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return write_refused(folder) is None


def ensure_gpu_pool(instance: dg.DagsterInstance) -> None:
    """One GPU step at a time: dagster.yaml can set only a default pool limit, so name this one."""
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits and GPU_POOL not in storage.get_concurrency_keys():
        storage.set_concurrency_slots(GPU_POOL, 1)


def _run_process(instance: dg.DagsterInstance, record) -> tuple[int, float] | None:
    """(pid, a time by which it had started) of the process running a run on this machine: the pid
    `ffe build` tags its runs with (the run is created after its process started), else the one the
    run worker logged once started ("Executing steps in process (pid: N)": a queued run's record is
    older than its process). None when none is known, or the run is another machine's."""
    run = record.dagster_run
    if PID_TAG in run.tags:
        if run.tags.get(HOST_TAG, socket.gethostname()) != socket.gethostname():
            return None
        return int(run.tags[PID_TAG]), record.create_timestamp.timestamp()
    for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
        pid = getattr(entry.dagster_event.event_specific_data, "metadata", {}).get("pid")
        if pid is not None:
            return int(getattr(pid, "text", pid)), entry.timestamp
    return None


def _alive(pid: int, since: float) -> bool:
    """Whether process `pid` runs and is the one started by `since` (not a later one that was given
    the same pid). One of another user's is alive: it cannot be looked at, but it is there."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= since + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def reclaim_dead_runs(instance: dg.DagsterInstance, echo: Callable[[str], None] | None = None) -> list[str]:
    """Runs still in progress in the instance whose process is gone (a build killed with SIGKILL,
    a machine restarted) are marked failed, and every pool slot they hold is freed; so are slots of
    runs that ended without freeing theirs. Without this a killed training run holds the `gpu` slot
    for ever and every later build waits on it. Only for runs on this machine (the default run
    launcher): a cluster's launcher and Dagster's run monitoring watch their own. Returns the ids
    of the runs marked failed; `echo` is told about each."""
    if not isinstance(instance.run_launcher, DefaultRunLauncher):
        return []
    reclaimed = []
    in_progress = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.CANCELING]
    for record in instance.get_run_records(RunsFilter(statuses=in_progress)):
        run = record.dagster_run
        process = _run_process(instance, record)
        if process is None or _alive(*process):
            continue  # not started a process yet (the daemon is launching it), elsewhere, or at work
        pid = process[0]
        instance.report_run_failed(run, message=f"the run's process (pid {pid}) is gone: killed, or the "
                                   "machine restarted; marked failed by ffe and its pool slots freed")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reclaimed.append(run.run_id)
        if echo is not None:
            echo(f"run {run.run_id[:8]} ({run.job_name}) died with its process {pid}: marked failed, its slots freed")
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        held = storage.get_concurrency_run_ids()
        if held:
            ended = instance.get_run_records(RunsFilter(run_ids=list(held), statuses=FINISHED_STATUSES))
            for record in ended:
                storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
    return reclaimed


def wait_for_pool(instance: dg.DagsterInstance, pool: str, echo: Callable[[str], None],
                  poll_s: float = 1.0) -> None:  # fmt: skip
    """Wait, saying for whom, until `pool` has a free slot (a run about to use it would otherwise
    wait inside Dagster, where Ctrl-C is not heard). Runs that die meanwhile are reclaimed."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    told = None
    while True:
        info = storage.get_concurrency_info(pool)
        if info.limit is None or len(info.claimed_slots) < info.limit:
            return
        holders = sorted({c.run_id for c in info.claimed_slots})
        if holders != told:
            echo(f"waiting for the {pool} pool: its {info.limit} slot(s) held by run(s) "
                 f"{', '.join(h[:8] for h in holders)} (see `ffe ui`); Ctrl-C stops")  # fmt: skip
            told = holders
        time.sleep(poll_s)
        reclaim_dead_runs(instance, echo)
