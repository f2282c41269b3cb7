"""Bench tasks from a release's bench split: one most-neutral source per bench person, every
configured category, stored with the release and identical when asked again."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pixelsmile.bench.tasks import BenchConfig, bench_tasks, sources, tasks_path
from pixelsmile.synthetic import world_release
from storage.layout import Layout
from storage.releases.config import ReleaseConfig
from storage.schemas import CATEGORIES


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    layout = Layout.at(tmp_path_factory.mktemp("bench") / "w")
    config = ReleaseConfig(val_fraction=0.0, bench_fraction=0.3)
    return world_release(layout, config, shards=False, people=20, faces_per_person=4, size=32)


def test_one_neutral_source_per_bench_person_and_every_category(release):
    split = pq.read_table(release / "splits.parquet").to_pylist()
    bench_people = {r["identity_id"] for r in split if r["split"] == "bench"}
    chosen = sources(release)
    assert {s["identity_id"] for s in chosen} == bench_people and len(chosen) == len(bench_people)
    for s in chosen:  # the world's face 0 of each person is exactly neutral
        assert s["intensity"] == min(r["intensity"] for r in split if r["identity_id"] == s["identity_id"]) == 0.0
    tasks = bench_tasks(release).to_pylist()
    assert len(tasks) == len(bench_people) * len(CATEGORIES)
    assert {t["category"] for t in tasks} == set(CATEGORIES) and "." not in "".join(t["task_id"] for t in tasks)
    assert all(t["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5] for t in tasks)
    assert all((release / t["image"]).is_file() for t in tasks)
    train = {r["identity_id"] for r in split if r["split"] == "train"}
    assert not train & {t["identity_id"] for t in tasks}  # bench people never train


def test_tasks_are_stored_once_per_config(release):
    config = BenchConfig(categories=("fear", "surprised"), alphas=(0.0, 0.5, 1.0), max_sources=2)
    first = bench_tasks(release, config)
    path = tasks_path(release, config)
    before = path.read_bytes()
    assert bench_tasks(release, config).equals(first) and path.read_bytes() == before
    assert first.num_rows == 4 and path.with_suffix(".json").is_file()
    assert tasks_path(release, BenchConfig(alphas=(0.0, 1.0))) != tasks_path(release, BenchConfig())
    assert tasks_path(release, BenchConfig(bootstrap=10)) == tasks_path(release, BenchConfig())


def test_a_wrong_config_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown categories"):
        BenchConfig(categories=("joy",))
    with pytest.raises(ValueError, match="increasing"):
        BenchConfig(alphas=(1.0, 0.5))
    with pytest.raises(ValueError, match="unknown key"):
        BenchConfig.from_dict({"alpha": [0, 1]})
    assert BenchConfig.from_dict({"alphas": [0, 1]}).alphas == (0, 1)
