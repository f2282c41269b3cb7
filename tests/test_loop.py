"""The whole loop with no command in between: files dropped into the input folder become a batch, a
release, a trained model and a leaderboard row, driven only by the graph's own sensors and
declarative automation, evaluated tick by tick in process as the daemon would (each requested run
executed in process, each run key launched once)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import dagster as dg
import pytest

from pipelines.definitions import build_definitions
from pipelines.defs.model import ffe_bench, nightly_bench, pixelsmile_lora, verified_release
from pipelines.resources import PixelSmileResource
from pipelines.status import status
from pixelsmile import world_models
from pixelsmile.synthetic import write_world_input
from storage.layout import Layout
from storage.leaderboard import failed_runs, leaderboard
from storage.releases.plan import planned_versions, release_dir


class Daemon:
    """The daemon's part, in process: sensors and automation conditions evaluated per tick, their
    run requests executed at once, run keys honoured."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance = defs, instance
        # No cursor yet: the first tick is the automation's first evaluation (its catch-up runs
        # whatever has all its inputs; later ticks react to what changed since), as in the daemon.
        self.cursor = None
        self.run_keys: set[str] = set()
        self.runs: list[tuple[str, str | None, bool]] = []  # (job or assets, partition, success)

    def _execute(self, job_name: str, partition: str | None) -> None:
        result = self.defs.resolve_job_def(job_name).execute_in_process(
            instance=self.instance, partition_key=partition, raise_on_error=False
        )
        self.runs.append((job_name, partition, result.success))

    def tick(self) -> int:
        """One round of every sensor and of declarative automation; returns the runs launched."""
        launched = 0
        for sensor in self.defs.sensors:
            if isinstance(sensor, dg.AutomationConditionSensorDefinition):
                continue  # evaluated below, as the daemon's asset daemon does
            with dg.build_sensor_context(instance=self.instance, resources=self.defs.resources,
                                         definitions=self.defs) as ctx:  # fmt: skip
                out = sensor(ctx)
            if not isinstance(out, dg.SensorResult):
                continue
            for request in out.dynamic_partitions_requests or []:
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            for request in out.run_requests or []:
                if request.run_key in self.run_keys:
                    continue
                self.run_keys.add(request.run_key)
                self._execute(sensor.job_name, request.partition_key)
                launched += 1
        evaluation = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = evaluation.cursor
        graph = self.defs.resolve_asset_graph()
        wanted: dict[str | None, list[dg.AssetKey]] = {}
        for key in graph.get_all_asset_keys():
            for partition in evaluation.get_requested_partitions(key):
                wanted.setdefault(partition, []).append(key)
        for partition, keys in wanted.items():
            result = dg.materialize([*self.defs.assets, *self.defs.asset_checks], selection=keys,
                                    instance=self.instance, partition_key=partition,
                                    resources=self.defs.resources, raise_on_error=False)  # fmt: skip
            self.runs.append((",".join(k.to_user_string() for k in keys), partition, result.success))
            launched += 1
        return launched

    def settle(self, max_ticks: int = 12) -> None:
        for _ in range(max_ticks):
            if not self.tick():
                return
        raise AssertionError(f"still launching runs after {max_ticks} ticks: {self.runs}")


@pytest.mark.slow
def test_a_new_batch_alone_leads_to_a_release_a_model_and_a_leaderboard_row(tmp_path):
    layout, input_dir = Layout.at(tmp_path / "work"), tmp_path / "input"
    write_world_input(input_dir, people=12, faces_per_person=7)
    defs = build_definitions(str(layout.root), str(input_dir), PixelSmileResource(judge="synthetic"),
                             whole_images=True)  # fmt: skip
    time.sleep(defs.resources["ffe"].input_settle_seconds)  # files this young may still be being copied
    with dg.instance_for_test() as instance:
        daemon = Daemon(defs, instance)
        daemon.settle()

        assert all(ok for *_, ok in daemon.runs), daemon.runs
        jobs = [job for job, _, _ in daemon.runs]
        assert jobs.count("batch_job") == 1 and jobs.count("release_job") == 1 and jobs.count("model_job") == 1
        (version,) = instance.get_materialized_partitions(ffe_bench.key)
        assert instance.get_materialized_partitions(pixelsmile_lora.key) == {version}
        assert (layout.runs / version).is_dir()

        board = leaderboard(layout, version)
        rows = [r for r in board if r["kind"] == "measured"]
        assert len(rows) == 1 and rows[0]["model"].startswith("pixelsmile-pixel@")
        assert rows[0]["judge"] == "synthetic-exact@2" and 0.0 <= rows[0]["mscr"] <= 1.0
        assert 0.5 < rows[0]["id_sim"] <= 1.0  # the tiny model keeps who they are
        # Benched beside it: no edit, and the base editor it fine-tuned, untrained.
        floor, base = (next(r for r in board if r["kind"] == "baseline" and r["model"].startswith(m))
                       for m in ("no-edit", "base-editor@"))  # fmt: skip
        assert floor["id_sim"] == pytest.approx(1.0) and abs(floor["cls12"]) < 0.2
        assert base["model"] == f"base-editor@{world_models.sha256(world_models.BASE)[:10]}" and base["acc12"] > 0.3
        assert any(r["kind"] == "reported" for r in board)  # the paper's rows beside ours
        assert not failed_runs(layout)
        assert status(layout)["models"][version] == f"{rows[0]['model']}: HES {rows[0]['hes']:.3f}"

        # Nothing new: every sensor skips, no automation fires, nothing is trained twice.
        assert daemon.tick() == 0
        # The nightly schedule asks for the latest release's bench; with nothing changed its rerun
        # finds the run it made and adds no row.
        night = datetime(2026, 11, 27, 3, tzinfo=UTC)
        with dg.build_schedule_context(instance=instance, resources=defs.resources,
                                       scheduled_execution_time=night) as ctx:  # fmt: skip
            request = nightly_bench(ctx)
        assert (request.partition_key, request.run_key) == (version, "nightly-2026-11-27")
        daemon._execute("bench_job", version)
        assert daemon.runs[-1][2] and leaderboard(layout, version) == board


def test_the_model_sensor_launches_a_release_only_once_its_shards_pass(tmp_path):
    from pipelines.defs.release import releases
    from pixelsmile.synthetic import world_release
    from storage.releases.config import ReleaseConfig
    from storage.releases.plan import release_dir

    layout = Layout.at(tmp_path / "w")
    version = world_release(layout, ReleaseConfig(val_fraction=0.0, bench_fraction=0.25), people=8, size=32).name
    defs = build_definitions(str(layout.root), str(tmp_path / "in"), PixelSmileResource(judge="synthetic"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(releases.name, [version])

        def requested() -> list[tuple[str, str]]:
            with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
                out = verified_release(ctx)
            return [] if isinstance(out, dg.SkipReason) else [(r.partition_key, r.run_key) for r in out.run_requests]

        def shards_pass() -> bool:  # ffe_shards again (finished shards are kept) and its check
            result = dg.materialize([*defs.assets, *defs.asset_checks], selection=["ffe_shards"], partition_key=version,
                                    instance=instance, resources=defs.resources, raise_on_error=False)  # fmt: skip
            return result.get_asset_check_evaluations()[0].passed

        assert requested() == []  # never verified
        shard = sorted((release_dir(layout, version) / "shards").glob("train-*.tar"))[0]
        good = shard.read_bytes()
        shard.write_bytes(good[:-4096])
        assert not shards_pass() and requested() == []  # verified, and failed
        shard.write_bytes(good)
        assert shards_pass() and requested() == [(version, f"model-{version}")]


@pytest.mark.slow
def test_automation_catches_up_on_a_batch_curated_before_its_first_evaluation(tmp_path):
    """Found: switched on after a batch was curated, the automation sensor's ticks produced no run
    until a further batch arrived (eager() sees no update on its first evaluation)."""
    from pipelines.build import build
    from pipelines.instance import open_instance

    layout, input_dir = Layout.at(tmp_path / "work"), tmp_path / "input"
    write_world_input(input_dir, people=3, faces_per_person=3)
    assert build(layout, input_dir, "identities", pre_cropped=True, echo=lambda s: None).ok
    write_world_input(input_dir, people=2, faces_per_person=3, first_person=3)
    for selection in ("face_embeddings", "prelabels"):  # the batch assets only: no identities
        assert build(layout, input_dir, selection, pre_cropped=True, echo=lambda s: None).ok
    defs = build_definitions(str(layout.root), str(input_dir), pre_cropped=True)
    graph, identities = defs.resolve_asset_graph(), dg.AssetKey("identities")
    with open_instance(layout) as instance:
        before = instance.get_latest_materialization_event(identities).timestamp
        evaluation, rounds = dg.evaluate_automation_conditions(defs=defs, instance=instance), 0
        assert evaluation.get_requested_partitions(identities) == {None}
        while evaluation.total_requested and rounds < 5:  # the daemon's ticks, each request run at once
            wanted = [k for k in graph.get_all_asset_keys() if evaluation.get_requested_partitions(k)]
            assert dg.materialize([*defs.assets, *defs.asset_checks], selection=wanted, instance=instance,
                                  resources=defs.resources).success  # fmt: skip
            evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=evaluation.cursor)
            rounds += 1
        assert evaluation.total_requested == 0  # caught up, and quiet after
        assert instance.get_latest_materialization_event(identities).timestamp > before
    from storage.releases.plan import release_eligible

    eligible = release_eligible(layout)  # both batches' faces that passed quality, in an identity
    assert len(eligible) > 9 and set(release_plan_faces(layout)) == set(eligible)


def release_plan_faces(layout: Layout) -> list[str]:
    import pyarrow.parquet as pq

    (version,) = planned_versions(layout)
    return pq.read_table(release_dir(layout, version) / "plan.parquet").column("face_id").to_pylist()
