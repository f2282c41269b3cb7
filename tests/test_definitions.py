"""The Dagster graph: loads, materialises on real files, matches its snapshot, passes Dagster's CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from curation.batches import register_new_batch
from curation.sample import BROKEN
from pipelines.definitions import build_definitions
from pipelines.defs.ingest import EVERY_FILE_ACCOUNTED, ingest_batches
from storage import catalog
from tests.conftest import REPO

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"
BIN = Path(sys.executable).parent


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=str):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": getattr(node.partitions_def, "name", None) if node.partitions_def else None,
            "group": node.group_name,
            "checks": sorted(c.name for c in node.check_keys),
        }
    return {
        "assets": assets,
        "jobs": sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")),
        "sensors": sorted(s.name for s in defs.sensors or []),
        "schedules": sorted(s.name for s in defs.schedules or []),
    }


def test_graph_matches_snapshot():
    """Update on purpose with FFE_UPDATE_SNAPSHOTS=1 when the graph changes."""
    snap = graph_snapshot(build_definitions("unused"))
    if os.environ.get("FFE_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    assert snap == json.loads(SNAPSHOT.read_text())


def test_materialize_raw_images_on_a_temp_folder(layout, sample_dir):
    defs = build_definitions(str(layout.root), str(sample_dir))
    batch = register_new_batch(layout, sample_dir).batch
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ingest_batches.name, [batch])
        result = dg.materialize(
            defs.assets,
            selection=["raw_images"],
            partition_key=batch,
            instance=instance,
            resources=defs.resources,
            run_config={"ops": {"raw_images": {"config": {"chunk_size": 4}}}},
        )
        assert result.success
        (mat,) = result.asset_materializations_for_node("raw_images")
        assert mat.metadata["images"].value == 15
        assert mat.metadata["failures_by_reason"].value["truncated"] == 2
        (check,) = result.get_asset_check_evaluations()
        assert check.check_name == EVERY_FILE_ACCOUNTED and check.passed
        assert batch in instance.get_materialized_partitions(dg.AssetKey("raw_images"))

    with catalog.connect(layout) as con:
        assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 15
        reasons = dict(con.execute("SELECT reason, count(*) FROM failures GROUP BY 1").fetchall())
    assert sum(reasons.values()) == len(BROKEN) and set(reasons) == set(BROKEN.values())


def test_bad_run_config_is_refused_before_anything_is_written(layout, sample_dir):
    defs = build_definitions(str(layout.root), str(sample_dir))
    batch = register_new_batch(layout, sample_dir).batch
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ingest_batches.name, [batch])

        def run(config):
            return dg.materialize(
                defs.assets,
                selection=["raw_images"],
                partition_key=batch,
                instance=instance,
                resources=defs.resources,
                run_config={"ops": {"raw_images": {"config": config}}},
                raise_on_error=False,
            )

        with pytest.raises(dg.DagsterInvalidConfigError, match="chunk_size"):  # a wrong type
            run({"chunk_size": "many"})
        with pytest.raises(dg.DagsterInvalidConfigError, match="max_pixels"):  # an unknown key
            run({"max_pixels": 3})
        result = run({"chunk_size": 0})  # a bound: checked when the step starts
        assert not result.success
        assert "greater than 0" in str(result.get_step_failure_events()[0].step_failure_data.error.cause)
    assert not layout.tables.exists()


def _dagster(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "FFE_WORKDIR": "/nonexistent/ffe_data"}  # loading must not touch the work folder
    env.pop("DAGSTER_HOME", None)
    return subprocess.run([str(BIN / "dagster"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_dagster_definitions_validate_at_repo_root():
    out = _dagster("definitions", "validate")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ffe" in out.stdout + out.stderr  # the code location named in pyproject


@pytest.mark.slow
def test_dagster_asset_list_names_the_assets():
    out = _dagster("asset", "list", "-m", "pipelines.definitions")
    assert out.returncode == 0, out.stderr
    assert "raw_images" in out.stdout.split()


def test_every_sensor_and_schedule_of_the_loop_runs_by_default():
    """Found: Dagster made its automation sensor STOPPED, so under `ffe ui` the loop stopped after
    ingest. Every sensor and schedule must run from the daemon's start, and every asset with an
    automation condition must be evaluated by one of them."""
    repo = build_definitions("unused").get_repository_def()
    sensors = {s.name: s for s in repo.sensor_defs}
    assert "default_automation_condition_sensor" not in sensors
    assert {n: s.default_status for n, s in sensors.items()} == dict.fromkeys(sensors, dg.DefaultSensorStatus.RUNNING)
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in repo.schedule_defs)
    assert {"new_input_files", "ffe_automation", "new_release", "verified_release"} <= set(sensors)
    graph = repo.asset_graph
    automated = {k for k in graph.get_all_asset_keys() if graph.get(k).automation_condition is not None}
    assert {k.to_user_string() for k in automated} >= {"identities", "affect_scores", "release_plan"}
    covered = sensors["ffe_automation"].asset_selection.resolve(graph)
    assert automated <= covered


def test_descriptions_render_in_the_ui():
    """Found: descriptions with `<version>`, `<batch>` or `<run>` rendered as "runs///bench/" (the UI
    reads them as Markdown, where <word> is an HTML tag). Paths go in code spans."""
    import re

    defs = build_definitions("unused")
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    texts = {k.to_user_string(): graph.get(k).description for k in graph.get_all_asset_keys()}
    texts |= {c.to_user_string(): graph.get_check_spec(c).description for c in graph.asset_check_keys}
    texts |= {j.name: j.description for j in repo.get_all_jobs()}
    texts |= {s.name: s.description for s in [*repo.sensor_defs, *repo.schedule_defs]}
    bare = {name: text for name, text in texts.items()
            if text and re.search(r"<[a-z_]+>", re.sub(r"`[^`]*`", "", text))}  # fmt: skip
    assert not bare


def test_metadata_is_tidied_for_the_ui_without_touching_typed_values():
    from pipelines.defs.metadata import tidy

    got = tidy({"f": dg.MetadataValue.float(0.07000000029802322), "path": dg.MetadataValue.path("/x"),
                "nested": [0.123456789, {"neg": -0.00000001}], "text": "a", "n": 3})  # fmt: skip
    assert got == {"f": 0.07, "path": dg.MetadataValue.path("/x"), "nested": [0.1235, {"neg": 0.0}], "text": "a",
                   "n": 3}  # fmt: skip
