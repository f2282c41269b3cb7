"""`ffe build`: register new input files as a batch, then materialise the selected assets in
process, one run per partition still to do. Runs land in the work folder's Dagster instance, so
`ffe ui` shows them and a rerun skips what is already materialised."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic

from curation.batches import manifests, register_new_batch
from curation.parallel import CORES_ENV, WORKER_MODULES, cores
from curation.sample import write_sample
from pipelines import settings as ffe_settings
from pipelines.check import RELEASE_ASSET, broken_partitions, check, set_aside
from pipelines.definitions import JOBS, build_definitions
from pipelines.defs.ingest import ingest_batches
from pipelines.defs.model import model_job, shards_passed
from pipelines.defs.release import releases
from pipelines.errors import FFEError
from pipelines.instance import HOST_TAG, PID_TAG, REBUILD_TAG, open_instance, wait_for_pool
from storage import catalog
from storage.errors import StorageError
from storage.layout import Layout
from storage.releases.build import read_manifest
from storage.releases.plan import planned_versions

MAX_ROUNDS = 3  # batch rounds of one build: the inputs, then the variants they generated

# Dagster's console logger defaults to DEBUG: every event as a line. Progress bars and INFO suffice.
_QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class BuildReport:
    new_batch: str | None = None
    new_files: int = 0
    runs: list[str] = field(default_factory=list)  # "<job> <partition>" of each Dagster run made
    skipped: list[str] = field(default_factory=list)  # partitions already materialised
    failed: dict[str, str] = field(default_factory=dict)  # partition -> first error line
    releases: list[str] = field(default_factory=list)  # release versions planned so far, oldest first

    @property
    def ok(self) -> bool:
        return not self.failed


RELEASE_FILES = {"ffe_release", "ffe_shards"}  # what rebuilds a release folder's files


def normalise_run_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Accept Dagster's own run config (`ops: {raw_images: {config: ...}}`) or the short form
    `{raw_images: {...}}` that a person would write."""
    config = dict(config or {})
    dagster_keys = {"ops", "resources", "loggers", "execution"}
    if config and not set(config) <= dagster_keys:
        if mixed := sorted(set(config) & dagster_keys):
            raise FFEError(f"config mixes Dagster keys {mixed} with asset names; use one form")
        config = {"ops": {name: {"config": value} for name, value in config.items()}}
    return {**_QUIET_LOGS, **config}


def check_run_config(defs: dg.Definitions, config: dict[str, Any], source: str = "config") -> None:
    """Each asset's settings in `config` (normalised) checked by its Config class before any work
    starts: FFEError naming every wrong key and why (Dagster would check types only once the run
    starts, and ranges not at all)."""
    known = {k.to_python_identifier() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    if unknown := sorted(set(config.get("ops", {})) - known):
        raise FFEError(f"{source} names unknown asset(s) {', '.join(unknown)}; assets: {', '.join(sorted(known))}")
    problems = []
    for name, given in config.get("ops", {}).items():
        fn = defs.resolve_assets_def(dg.AssetKey(name)).op.compute_fn.decorated_fn
        param = inspect.signature(fn).parameters.get("config")
        if param is None:
            problems.append(f"{name}: this asset takes no settings")
            continue
        values = (given or {}).get("config", {}) if isinstance(given, dict) else given
        if not isinstance(values, dict):
            problems.append(f"{name}: expected a mapping of settings, not {values!r}")
            continue
        fields = param.annotation.model_fields
        if unknown := sorted(set(values) - set(fields)):  # Dagster's Config takes unknown keys silently
            for key in unknown:
                near = difflib.get_close_matches(key, list(fields), n=1)
                problems.append(f"{name}.{key}: unknown setting" + (f" (did you mean {near[0]}?)" if near else
                                f"; {name} takes {', '.join(fields)}"))  # fmt: skip
            continue
        if odd := [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]:
            problems += [f"{name}.{k}: must be a finite number (given {values[k]!r})" for k in odd]
            continue
        if odd := [k for k, v in values.items() if isinstance(v, bool) and fields[k].annotation in (int, float)]:
            problems += [f"{name}.{k}: must be a number, not {str(values[k]).lower()}" for k in odd]
            continue
        try:
            param.annotation(**values)
        except pydantic.ValidationError as err:
            for e in err.errors():
                where = ".".join(str(p) for p in (name, *e["loc"]))
                said = e["msg"].removeprefix("Value error, ")
                if not e["loc"]:  # a rule across keys (Config's model_validator): the message names them
                    problems.append(said if said.startswith(f"{name}.") else f"{where}: {said}")
                    continue
                problems.append(f"{where}: {said} (given {e.get('input')!r})")
    if not problems:  # Dagster's own config types, which the run will be checked against (text for a number)
        problems = _dagster_config_problems(defs, config)
    if problems:
        raise FFEError(f"{source}: " + "; ".join(problems))


def _dagster_config_problems(defs: dg.Definitions, config: dict[str, Any]) -> list[str]:
    """Each value Dagster's config system would refuse once a run starts, as `asset.key: why`."""
    problems = []
    for job in JOBS:
        job_def = defs.resolve_job_def(job.name)
        ops = {k: v for k, v in config.get("ops", {}).items() if k in job_def.graph.node_dict}
        if not ops:
            continue
        try:
            dg.validate_run_config(job_def, {**config, "ops": ops})
        except dg.DagsterInvalidConfigError as err:
            for e in err.errors:
                names = [getattr(entry, "field_name", None) for entry in e.stack.entries]
                where = ".".join(n for n in names if n and n not in ("ops", "config")) or "config"
                problems.append(f"{where}: {e.message.split('. ', 1)[-1].rstrip('.')}")
    return problems


def resolve_input(settings: ffe_settings.Effective, echo: Callable[[str], None]) -> Path | None:
    """The input folder of the settings. The default one, when missing, is filled with the sample in a
    fresh work folder only: in one that holds batches already, nothing new is registered (None)."""
    path = settings.input_path
    if settings.settings.input.folder:
        if not path.is_dir():
            what = "is a file, not a folder" if path.exists() else "does not exist"
            raise FFEError(f"input folder {path} {what} ({settings.sources['input.folder']})")
        return path
    if not path.is_dir():
        if manifests(Layout.at(settings.workdir)):
            echo(f"no input folder ({path} does not exist): building the batches registered before")
            return None
        written = write_sample(path)
        echo(f"no input folder given: wrote the sample input ({len(written)} files) to {path}")
    return path


def _describe_abort(err: BaseException, layout: Layout) -> str:
    """Why a run was aborted: our own StorageError if one set it off (a full disk stops both the
    asset and Dagster's attempt to record the failure), else Dagster's error; and a full disk."""
    text = " ".join(str(err).split())
    seen, cause = set(), err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, StorageError):
            text = f"{cause}; Dagster could not record the failure either: {text}"
            break
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    free = shutil.disk_usage(layout.root).free
    if free < 16 * 2**20:
        text += f" -- the disk holding {layout.root} is full ({free // 1024} KiB free): free space and rerun to resume"
    return text


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    """The root cause of the first failed step, on one line (Dagster wraps it in its own error)."""
    for event in result.get_step_failure_events():
        err = event.step_failure_data.error
        if err is None:
            continue
        while err.cause is not None:
            err = err.cause
        return " ".join(err.message.split())
    return "run failed"


def _execute(defs: dg.Definitions, instance: dg.DagsterInstance, layout: Layout, job_name: str,
             partition: str | None, keys: list[dg.AssetKey], config: dict[str, Any],
             echo: Callable[[str], None] = print, rebuild: bool = False) -> tuple[bool, str]:  # fmt: skip
    """One Dagster run of `keys` (of the job `job_name`) for `partition`, in process: (ok, the
    first error line); `rebuild`: asked for by --rebuild (tagged; a model then trains afresh).
    FFEError when the config is invalid or Dagster itself failed."""
    label = partition or "all batches"
    names = {k.to_python_identifier() for k in keys}
    graph = defs.resolve_asset_graph()
    for pool in sorted({p for k in keys for p in graph.get(k).pools or ()}):
        wait_for_pool(instance, pool, echo)
    # Each run gets the config of its own assets: Dagster refuses config for others.
    run_config = {**config, "ops": {k: v for k, v in config.get("ops", {}).items() if k in names}}
    try:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance,
            partition_key=partition,
            run_config=run_config,
            raise_on_error=False,
            asset_selection=keys,
            tags={"ffe/launched_by": "ffe build", "ffe/assets": ",".join(sorted(names)),
                  PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(),
                  **({REBUILD_TAG: "true"} if rebuild else {})},
        )
    except dg.DagsterInvalidConfigError as err:
        raise FFEError(f"invalid config: {err}") from None
    except Exception as err:  # Dagster itself failed, e.g. its instance is on a full disk
        raise FFEError(f"{label}: {_describe_abort(err, layout)}") from err
    if not result.success and _interrupted(result):
        raise KeyboardInterrupt  # Ctrl-C stops the build, not just this run (the CLI says how to resume)
    return result.success, "" if result.success else _first_error(result)


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the run failed because it was interrupted (Dagster turns SIGINT into an error)."""
    for event in result.all_events:
        err = getattr(event.event_specific_data, "error", None)
        while err is not None:
            if err.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                return True
            err = err.cause
    return False


def _worker_start(share: int, build_pid: int) -> None:
    """A `--workers` process: the stages' item pools and numeric libraries use its share of cores;
    and it ends itself when the build is gone (killed with SIGKILL: a fork server's children are
    not the build's, so nothing else would end them), which frees its partition lock."""
    os.environ[CORES_ENV] = str(share)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(share))

    def watch() -> None:
        while True:
            time.sleep(1)
            try:
                os.kill(build_pid, 0)
            except ProcessLookupError:
                os._exit(70)

    threading.Thread(target=watch, name="ffe-build-watch", daemon=True).start()


_worker_defs: list[dg.Definitions] = []  # a `--workers` process's definitions: one pool serves one build


def _warm(settings: ffe_settings.Effective) -> None:
    """Load the definitions in a fresh worker while the build's own process checks the folder."""
    if not _worker_defs:
        _worker_defs.append(build_definitions(settings=settings))


@contextlib.contextmanager
def _worker_pool(workers: int, settings: ffe_settings.Effective) -> Iterator[ProcessPoolExecutor]:
    """`workers` processes for batch runs, started and warmed at once, each told its share of the
    cores. They fork from a fork server (forking this process, which runs Dagster's threads, is
    not safe), so the heavy imports are paid once, not once per worker."""
    share = max(1, cores() // workers)
    ctx = get_context("forkserver")  # workers fork from a server that imported the definitions once
    ctx.set_forkserver_preload([*WORKER_MODULES, "pipelines.definitions"])
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_start, initargs=(share, os.getpid()))
    try:
        for _ in range(workers):
            pool.submit(_warm, settings)
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _execute_in_worker(root: Path, settings: ffe_settings.Effective, plan: list[tuple[str, list[str]]],
                       partition: str, config: dict[str, Any]) -> list[tuple[str, list[str], bool, str]]:  # fmt: skip
    """`plan`'s runs (job name, asset keys) for one batch partition, in order, in this worker
    process; stops at the first that fails. Returns (job, keys, ok, error) per run made."""
    layout = Layout.at(root)
    _warm(settings)
    defs = _worker_defs[0]
    out = []
    with open_instance(layout) as instance:
        for job_name, keys in plan:
            try:
                ok, error = _execute(defs, instance, layout, job_name, partition,
                                     [dg.AssetKey.from_user_string(k) for k in keys], config)  # fmt: skip
            except FFEError as err:
                ok, error = False, str(err)
            out.append((job_name, keys, ok, error))
            if not ok:
                break
    return out


def _behind(order: list[dg.AssetKey], latest: Callable[[dg.AssetKey], int | None],
            parents: Callable[[dg.AssetKey], list[dg.AssetKey]],
            gone: Callable[[dg.AssetKey], bool]) -> set[dg.AssetKey]:  # fmt: skip
    """Of `order` (assets, upstream first), those to build, as make decides: never built (`latest`,
    a storage id, is None), files `gone`, older than one of its `parents` (a larger storage id:
    ids grow with every event), or downstream of one that is built now."""
    out: set[dg.AssetKey] = set()
    for k in order:
        mine = latest(k)
        if mine is None or gone(k) or any(q in out or (latest(q) or -1) > mine for q in parents(k)):
            out.add(k)
    return out


def _add_partitions(instance: dg.DagsterInstance, partitions_def: dg.DynamicPartitionsDefinition, keys) -> None:
    known = set(instance.get_dynamic_partitions(partitions_def.name))
    if missing := [k for k in keys if k not in known]:
        instance.add_dynamic_partitions(partitions_def.name, missing)


def build(
    layout: Layout,
    input_dir: str | Path | None = None,
    selection: str = "*",
    run_config: Mapping[str, Any] | None = None,
    echo: Callable[[str], None] = print,
    *,
    domain: str | None = None,
    pre_cropped: bool | None = None,
    whole_images: bool | None = None,
    register_input: bool = True,
    settings: ffe_settings.Effective | None = None,
    config_source: str = "config",
    rebuild: Sequence[str] = (),
) -> BuildReport:
    """Build with the work folder's `settings` (default: its settings file and $FFE_* variables,
    with `input_dir`, `domain` and `pre_cropped` over them: what the new batch is, if the input folder
    has new files); `register_input=False` builds from what is registered already (`ffe release build`);
    `rebuild`: batch ids or release versions built again whole though built (after a settings change:
    a batch ingested under other `formats` or `max_megapixels`), with what they feed."""
    if settings is None:
        flags = {"input.folder": str(input_dir) if input_dir is not None else None, "input.domain": domain,
                 "input.pre_cropped": pre_cropped, "input.whole_images": whole_images}  # fmt: skip
        settings = ffe_settings.load(layout.root, flags=flags)
    defs = build_definitions(settings=settings)
    graph = defs.resolve_asset_graph()
    config = normalise_run_config(run_config)
    check_run_config(defs, config, config_source)
    input_path = resolve_input(settings, echo) if register_input else None
    workers = settings.settings.build.workers
    try:
        with warnings.catch_warnings():  # the selection parser's beta notice is not user news
            warnings.simplefilter("ignore", dg.BetaWarning)
            keys = dg.AssetSelection.from_string(selection).resolve(graph)
    except Exception as err:  # Dagster raises several types for a bad selection string
        raise FFEError(f"--select {selection!r} is not a valid asset selection: {err}") from None
    if not keys:
        raise FFEError(f"--select {selection!r} matches no asset")
    # Like make: what the selection needs upstream and is not built yet is built too (and an
    # asset across batches older than its inputs: `stale` below).
    upstream = dg.AssetSelection.assets(*keys).upstream().resolve(graph) - keys

    def phase(ks, partitions_def) -> list[dg.AssetKey]:
        return sorted((k for k in ks if graph.get(k).partitions_def == partitions_def), key=str)

    # Three phases, in the order data flows: per ingest batch, across all batches, per release.
    batch, batch_up = phase(keys, ingest_batches), phase(upstream, ingest_batches)
    whole, whole_up = phase(keys, None), phase(upstream, None)
    whole_all = [k for k in graph.get_all_asset_keys() if graph.get(k).partitions_def is None]
    per_release, per_release_up = phase(keys, releases), phase(upstream, releases)
    report = BuildReport()

    with open_instance(layout, echo) as instance, contextlib.ExitStack() as stack:
        if input_path is not None:
            try:
                given = settings.settings.input
                manifest = register_new_batch(layout, input_path, domain=given.domain, pre_cropped=given.pre_cropped,
                                              whole_images=given.whole_images,
                                              follow_links=given.follow_links)  # fmt: skip
            except ValueError as err:
                raise FFEError(str(err)) from None
            if manifest:
                report.new_batch, report.new_files = manifest.batch, len(manifest.files)
                echo(f"registered {manifest.batch}: {len(manifest.files)} new files from {input_path}")

        graph_jobs = [(job.name, set(job.selection.resolve(graph))) for job in JOBS]
        # Workers start now: their imports overlap this process's check of the folder.
        workers = min(workers, len(manifests(layout)))
        pool = stack.enter_context(_worker_pool(workers, settings)) if workers > 1 else None

        def run(partition: str | None, selected: list[dg.AssetKey]) -> None:
            """Materialise `selected` for one partition, under the product's job that holds each
            asset (runs show `batch_job`, `release_job` ... in the UI, as the daemon's do); a
            release's model is trained only once its shards passed their check."""
            label = partition or "all batches"
            for job_name, holds in graph_jobs:
                keys = sorted((k for k in selected if k in holds), key=str)
                if not keys:
                    continue
                if job_name == model_job.name and not shards_passed(instance, partition):
                    report.failed[label] = f"release {partition}: shards_verified did not pass; no model trained"
                    echo(f"FAILED {label}: {report.failed[label]}")
                    return
                if not run_job(partition, job_name, keys):
                    return
                for k in keys:  # rebuilt: not broken any more (later rounds skip it)
                    broken.pop((k.to_user_string(), partition), None)

        def run_job(partition: str | None, job_name: str, keys: list[dg.AssetKey]) -> bool:
            ran.update(k.to_python_identifier() for k in keys)
            ok, error = _execute(defs, instance, layout, job_name, partition, keys, config, echo,
                                 rebuild=partition in asked)  # fmt: skip
            return record(partition, job_name, ok, error)

        def record(partition: str | None, job_name: str, ok: bool, error: str) -> bool:
            label = partition or "all batches"
            report.runs.append(f"{job_name} {label}")
            if not ok:
                report.failed[label] = error
                echo(f"FAILED {label}: {error}")
            return ok

        def run_parallel(todo: dict[str, list[dg.AssetKey]]) -> None:
            """Batch partitions `workers` at a time, each its runs in a process of the pool."""
            plans = {p: [(job_name, [k.to_user_string() for k in sorted(keys, key=str) if k in holds])
                         for job_name, holds in graph_jobs] for p, keys in todo.items()}  # fmt: skip
            plans = {p: [(j, ks) for j, ks in plan if ks] for p, plan in plans.items()}
            echo(f"building {len(plans)} batch partitions, {min(workers, len(plans))} at a time "
                 f"({max(1, cores() // workers)} core(s) each)")  # fmt: skip
            futures = {pool.submit(_execute_in_worker, layout.root, settings, plan, p, config): p
                       for p, plan in plans.items()}  # fmt: skip
            ran.update(dg.AssetKey.from_user_string(k).to_python_identifier()
                       for plan in plans.values() for _, ks in plan for k in ks)  # fmt: skip
            for future in as_completed(futures):
                p = futures[future]
                try:
                    made = future.result()
                except Exception as err:  # the process died (killed, out of memory): the others go on
                    made = [(plans[p][0][0], [], False, f"its worker process died: {type(err).__name__}: {err}")]
                for job_name, keys, ok, error in made:
                    if record(p, job_name, ok, error):
                        for k in keys:
                            broken.pop((k, p), None)

        # What Dagster records as built but the folder no longer holds (pipelines/check.py) is
        # built again, from upstream; an unreadable file is moved aside first.
        broken = broken_partitions(set_aside(layout, check(layout, instance), echo))
        for (asset, partition), why in broken.items():
            echo(f"rebuilding {asset}{' ' + partition if partition else ''}: {why.split(': ', 1)[-1]}")
        asked, ran = set(rebuild), set()
        if rebuild:
            known_batches, known_versions = {m.batch for m in manifests(layout)}, set(planned_versions(layout))
            if unknown := [r for r in rebuild if r not in known_batches | known_versions]:
                raise FFEError(f"--rebuild {', '.join(unknown)}: no such batch or release in {layout.root} "
                               "(`ffe status` lists them)")  # fmt: skip
            for p in rebuild:
                assets = batch + batch_up if p in known_batches else per_release + per_release_up
                for k in assets:  # the first in graph order runs, and so all downstream of it
                    broken[(k.to_user_string(), p)] = "asked to rebuild it (--rebuild)"
                echo(f"rebuilding {p} (--rebuild): {', '.join(k.to_user_string() for k in assets)}")

        def gone_file(k: dg.AssetKey, p: str | None) -> bool:
            return (k.to_user_string(), p) in broken

        def per_partition(partitions: list[str], selected: list[dg.AssetKey], up: list[dg.AssetKey],
                          gone: Callable[[dg.AssetKey, str], bool] = gone_file,
                          parallel: bool = False) -> None:  # fmt: skip
            """Run each partition where a selected asset, or one it needs upstream, is not built
            (per Dagster, or `gone`: its files were deleted since), or, in a batch, is older than
            its input in the batch (rebuilt since) or downstream of one that runs; `parallel`:
            `workers` partitions at once."""
            chosen = set(selected + up)
            order = [k for k in graph.toposorted_asset_keys if k in chosen]
            event = dg.DagsterEventType.ASSET_MATERIALIZATION
            # One query per asset: the latest materialisation's storage id (increasing) per partition.
            ids = {k: instance.get_latest_storage_id_by_partition(k, event) for k in order}
            # Within a batch only: a release rebuilt to the same bytes does not retrain its model.
            in_batch = {k for k in order if graph.get(k).partitions_def == ingest_batches}
            same = {k: [q for q in graph.get(k).parent_keys if q in ids and k in in_batch] for k in order}
            todo = {}
            for p in partitions:
                if keys := _behind(order, lambda k, p=p: ids[k].get(p), same.__getitem__, lambda k, p=p: gone(k, p)):
                    todo[p] = sorted(keys, key=str)
                elif p not in report.skipped:
                    report.skipped.append(p)
            if parallel and pool is not None and len(todo) > 1:
                run_parallel(todo)
            else:
                for p, keys in todo.items():
                    run(p, keys)

        def stale(candidates: list[dg.AssetKey]) -> list[dg.AssetKey]:
            """Of `candidates` (assets without partitions), those to run: never built, files gone,
            or older than an input's latest materialisation (a batch finished since, perhaps by
            another run beside this one: the daemon's `identities` may have run before this
            build's embeddings were in), or downstream of one that runs."""
            chosen = set(candidates)
            order = [k for k in graph.toposorted_asset_keys if k in chosen]
            latest = {}

            def when(k: dg.AssetKey) -> int | None:  # the latest materialisation's storage id, any partition
                if k not in latest:
                    (record,) = instance.get_asset_records([k]) or (None,)
                    last = record and record.asset_entry.last_materialization_record
                    latest[k] = last.storage_id if last else None
                return latest[k]

            parents = {k: list(graph.get(k).parent_keys) for k in order}
            return sorted(_behind(order, when, parents.__getitem__, lambda k: gone_file(k, None)), key=str)

        # Batch assets that need the assets across batches (generation needs identities) run after
        # them; a run that registers new batches (generated variants) is followed by another round
        # for those, so one `ffe build` takes them to their release.
        after_whole = dg.AssetSelection.assets(*whole_all).downstream().resolve(graph)
        early, late = [k for k in batch if k not in after_whole], [k for k in batch if k in after_whole]
        early_up = [k for k in batch_up if k not in after_whole]
        for _ in range(MAX_ROUNDS):
            batches = [m.batch for m in manifests(layout)]
            _add_partitions(instance, ingest_batches, batches)
            if early or ((whole + per_release + late) and early_up):
                per_partition(batches, early, early_up, parallel=True)
            behind = stale(whole_up)
            if whole or behind:
                run(None, sorted(set(whole) | set(behind), key=str))
            if late:
                per_partition(batches, late, [], parallel=True)
            if len(manifests(layout)) == len(batches):
                break
        if per_release:
            versions = planned_versions(layout)
            _add_partitions(instance, releases, versions)
            per_partition(versions, per_release, per_release_up,
                          gone=lambda k, v: v in asked or (k.to_user_string() in RELEASE_FILES and (
                              not (read_manifest(layout, v) or {}).get("complete")
                              or gone_file(dg.AssetKey(RELEASE_ASSET), v))) or (
                              k.to_user_string() not in RELEASE_FILES and gone_file(k, v)))  # a bench row
            report.releases = versions
        if unused := sorted(set(config.get("ops", {})) - ran):
            echo(f"note: the config's settings for {', '.join(unused)} were not used: nothing of theirs was "
                 "built (what is built is not built again for new settings; `--rebuild PARTITION` does)")  # fmt: skip

    catalog.connect(layout).close()  # persist fresh views for outside tools
    return report
