"""The model assets' edges: a training run that goes NaN or crashes is a failed leaderboard row with
its reason, never a result; a release too small to train is skipped, not failed; the regression
test compares releases by their intervals; the pieces of the loop (recipe, launcher, run ids)."""

from __future__ import annotations

import sys

import dagster as dg
import pytest
import yaml

from pipelines import model
from pipelines.definitions import build_definitions
from pipelines.defs.release import releases
from pipelines.errors import FFEError
from pipelines.resources import PixelSmileResource
from pixelsmile.synthetic import world_release
from storage.layout import Layout
from storage.leaderboard import failed_runs, leaderboard, record_run, regression
from storage.releases.config import ReleaseConfig

SMALL = {"backbone": "pixel", "resolution": 16, "batch_size": 4, "max_steps": 4, "lr_warmup_steps": 0,
         "checkpointing_steps": 2, "pixel_channels": 8, "pixel_blocks": 1}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    layout = Layout.at(tmp_path_factory.mktemp("world") / "w")
    version = world_release(layout, ReleaseConfig(val_fraction=0.0, bench_fraction=0.25), people=8, size=32).name
    return layout, version


def _train(layout: Layout, version: str, recipe: dict, tmp_path) -> dg.ExecuteInProcessResult:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    defs = build_definitions(str(layout.root), str(tmp_path / "in"),
                             PixelSmileResource(recipe=str(path), launcher="python", judge="synthetic"))  # fmt: skip
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(releases.name, [version])
        return dg.materialize([*defs.assets, *defs.asset_checks], selection=["pixelsmile_lora", "ffe_bench"],
                              partition_key=version, instance=instance, resources=defs.resources,
                              raise_on_error=False)  # fmt: skip


def _failure(result: dg.ExecuteInProcessResult) -> str:
    (event,) = result.get_step_failure_events()
    return event.step_failure_data.error.message


def test_a_nan_training_run_is_recorded_as_failed_and_never_ranks(world, tmp_path):
    layout, version = world
    result = _train(layout, version, {**SMALL, "learning_rate": 1e30, "max_grad_norm": 0.0}, tmp_path)
    assert not result.success
    assert "not finite" in _failure(result) and version in _failure(result)
    (failed,) = [f for f in failed_runs(layout, version) if "train-" in f["run_id"]]
    assert failed["reason"].startswith("training: step ") and "not finite" in failed["reason"]
    assert not [r for r in leaderboard(layout, version) if r["kind"] != "reported"]


def test_a_crashed_training_process_is_recorded_with_its_reason(world, tmp_path):
    layout, version = world
    recipe = {**SMALL, "backbone": "qwen", "model_path": str(tmp_path / "no-such-model")}
    result = _train(layout, version, recipe, tmp_path)
    assert not result.success and "no-such-model" in _failure(result)
    reasons = [f["reason"] for f in failed_runs(layout, version)]
    assert any("no-such-model" in r for r in reasons)


def test_a_release_too_small_to_train_is_skipped_with_its_reason(world, tmp_path):
    layout, version = world
    result = _train(layout, version, {**SMALL, "batch_size": 10_000}, tmp_path)
    assert result.success
    for node in ("pixelsmile_lora", "ffe_bench"):
        (mat,) = result.asset_materializations_for_node(node)
        assert "fewer than one batch of 10000" in mat.metadata["skipped"].value


def _run(layout, run_id, release, hes, hes_ci, mscr=0.1, mscr_ci=(0.05, 0.15)):
    metrics = {"mSCR": mscr, "Acc-12": 0.5, "CLS-12": 0.5, "ID Sim": 0.9, "HES": hes}
    ci = {"mSCR": list(mscr_ci), "Acc-12": [0.4, 0.6], "CLS-12": [0.4, 0.6], "ID Sim": [0.85, 0.95],
          "HES": list(hes_ci)}  # fmt: skip
    record_run(layout, run_id, release=release, model="m", metrics=metrics, ci95=ci, judge="j@1")


def test_regression_flags_a_metric_worse_beyond_both_intervals(tmp_path):
    layout = Layout.at(tmp_path / "w")
    _run(layout, "a", "r1", hes=0.60, hes_ci=(0.55, 0.65))
    _run(layout, "b", "r2", hes=0.58, hes_ci=(0.50, 0.62))  # within the noise
    _run(layout, "c", "r3", hes=0.40, hes_ci=(0.35, 0.45), mscr=0.02, mscr_ci=(0.01, 0.03))
    assert regression(layout, "r1", "m", ["r1", "r2", "r3"])["previous"] is None
    assert regression(layout, "r2", "m", ["r1", "r2", "r3"])["worse"] == []
    found = regression(layout, "r3", "m", ["r1", "r2", "r3"])
    assert found["previous"] == "r2"
    assert [c["metric"] for c in found["worse"]] == ["HES"]
    assert [c["metric"] for c in found["better"]] == ["mSCR"]  # lower is better for mSCR


def test_recipes_launchers_and_run_ids(tmp_path, world):
    layout, version = world
    assert model.load_recipe("") == model.DEFAULT_RECIPE
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: /elsewhere\n")
    with pytest.raises(FFEError, match="sets output_dir"):
        model.load_recipe(str(bad))
    with pytest.raises(FFEError, match="unknown training config key"):
        model.training_config(layout, version, {"learning_rte": 1.0})
    config = model.training_config(layout, version, SMALL)
    assert config.resume == "latest" and config.output_dir.endswith(f"train-{model.recipe_digest(SMALL)}")
    cmd = model.launch_command(tmp_path / "c.yaml", "accelerate", 2)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
    assert cmd[-5:] == ["-m", "pixelsmile.cli", "train", "--config", str(tmp_path / "c.yaml")]
    with pytest.raises(FFEError, match="one process"):
        model.launch_command(tmp_path / "c.yaml", "python", 2)
    ids = {model.bench_run_id(version, "d" * 64, "j@1", "cfg", "abc") for _ in range(2)}
    (run_id,) = ids
    assert run_id.startswith(f"{version}-bench-") and "." not in run_id
    assert model.bench_run_id(version, "d" * 64, "j@2", "cfg", "abc") != run_id
    assert model.bench_run_id(version, "no-edit", "j@1", "cfg", "abc").startswith(f"{version}-no-edit-")
