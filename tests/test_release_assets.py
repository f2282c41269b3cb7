"""The release assets in Dagster: plan, the sensor that launches each version once, build, shards and
the blocking verification check, on a made-up labelled work folder."""

from __future__ import annotations

import dagster as dg
import pytest

from pipelines.definitions import build_definitions
from pipelines.defs.release import new_release, releases
from pipelines.releases import current_version, release_command
from storage.layout import Layout
from storage.releases.plan import release_dir
from storage.releases.sample import write_sample_tables


def _materialize(defs, instance, selection, partition=None, run_config=None):
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        partition_key=partition,
        instance=instance,
        resources=defs.resources,
        run_config=run_config or {},
        raise_on_error=False,
    )


def _sensor(defs, instance):
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
        return new_release(ctx)


def test_plan_sensor_build_and_a_check_that_names_a_broken_shard(tmp_path):
    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=16, faces_per_identity=4)
    defs = build_definitions(str(layout.root), str(tmp_path / "in"))
    small = {"ops": {"release_plan": {"config": {"shard_target_mb": 0.03}}}}
    with dg.instance_for_test() as instance:
        assert isinstance(_sensor(defs, instance), dg.SkipReason)  # nothing planned yet
        plan = _materialize(defs, instance, ["release_plan"], run_config=small)
        assert plan.success
        version = plan.asset_materializations_for_node("release_plan")[0].metadata["version"].value

        tick = _sensor(defs, instance)
        assert [(r.partition_key, r.run_key) for r in tick.run_requests] == [(version, version)]
        assert tick.dynamic_partitions_requests[0].partition_keys == [version]
        instance.add_dynamic_partitions(releases.name, [version])

        built = _materialize(defs, instance, ["ffe_release", "ffe_shards"], partition=version)
        assert built.success
        (check,) = built.get_asset_check_evaluations()
        assert check.check_name == "shards_verified" and check.passed
        assert isinstance(_sensor(defs, instance), dg.SkipReason)  # built: never launched again

        # Planning again from the same labels: the same version, no new work.
        again = _materialize(defs, instance, ["release_plan"], run_config=small)
        meta = again.asset_materializations_for_node("release_plan")[0].metadata
        assert meta["version"].value == version and meta["new"].value is False

        shard = sorted((release_dir(layout, version) / "shards").glob("train-*.tar"))[1]
        shard.write_bytes(shard.read_bytes()[:-20000])
        rerun = _materialize(defs, instance, ["ffe_shards"], partition=version)
        (check,) = rerun.get_asset_check_evaluations()
        assert not check.passed and not rerun.success
        assert any(line.startswith(shard.name) for line in check.metadata["examples"].value)


def test_a_bad_release_config_fails_release_plan_with_its_reason(tmp_path):
    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=3, faces_per_identity=3)
    defs = build_definitions(str(layout.root), str(tmp_path / "in"))
    bad = {"ops": {"release_plan": {"config": {"val_fraction": 0.6, "bench_fraction": 0.5}}}}
    with dg.instance_for_test() as instance:
        result = _materialize(defs, instance, ["release_plan"], run_config=bad)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error  # the Config's own check (`ffe build` makes it before any run)
    assert "val_fraction + bench_fraction" in error.message + (error.cause.message if error.cause else "")


@pytest.mark.slow
def test_release_build_twice_and_after_a_new_batch(tmp_path, capsys):
    import argparse

    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=8, faces_per_identity=3)
    args = argparse.Namespace(action="build")
    assert release_command(args, layout, {"shard_target_mb": 0.02}) == 0
    v1 = current_version(layout)
    assert "new, complete" in capsys.readouterr().out
    assert release_command(args, layout, {"shard_target_mb": 0.02}) == 0
    assert f"release {v1}: unchanged since the last build, complete" in capsys.readouterr().out
    added = write_sample_tables(layout, batch="batch-sample1", identities=2, faces_per_identity=3)
    assert release_command(args, layout, {"shard_target_mb": 0.02}) == 0
    v2 = current_version(layout)
    assert v2 != v1
    capsys.readouterr()
    diff = argparse.Namespace(action="diff", old=v1, new="latest", json=False, limit=50)
    assert release_command(diff, layout, None) == 0
    out = capsys.readouterr().out
    assert f"{v1} -> {v2}: 24 -> 30 faces" in out
    assert sorted(line.strip()[2:] for line in out.splitlines() if line.startswith("  + ")) == sorted(added)


def test_release_plan_is_automated_only_after_the_labels_pass_their_blocking_checks(tmp_path):
    from storage import tables

    layout = Layout.at(tmp_path / "w")
    write_sample_tables(layout, identities=5, faces_per_identity=3)
    full = tables.read_partition(layout, "prelabels", "batch-sample0")
    tables.write_partition(layout, "prelabels", "batch-sample0", full.slice(1))  # a face without a label
    defs = build_definitions(str(layout.root), str(tmp_path / "in"))

    def requested(instance, cursor):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        keys = {r.key.to_user_string() for r in result.results if r.true_subset.size}
        return "release_plan" in keys, result.cursor

    with dg.instance_for_test() as instance:
        _, cursor = requested(instance, None)
        failed = _materialize(defs, instance, ["identities", "affect_scores"])
        assert not failed.success  # coverage 14/15 < 0.95: the blocking check fails
        planned, cursor = requested(instance, cursor)
        assert not planned

        tables.write_partition(layout, "prelabels", "batch-sample0", full)
        assert _materialize(defs, instance, ["affect_scores"]).success
        planned, cursor = requested(instance, cursor)
        assert planned


def test_no_faces_no_release(tmp_path, capsys):
    import argparse

    layout = Layout.at(tmp_path / "w")
    layout.root.mkdir(parents=True)
    assert release_command(argparse.Namespace(action="build"), layout, None) == 1
    assert "no release: no release-eligible face has a score yet" in capsys.readouterr().out
    assert not layout.releases.exists() or not any(layout.releases.iterdir())
