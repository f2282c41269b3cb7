"""The generation stage on the synthetic world: curated faces in, variants made by a trained pixel
model, sent back as a generated batch, curated, checked against their source's identity,
pre-labelled, and in the next release; a rerun makes nothing new; budgets and resume."""

from __future__ import annotations

import pytest

from curation.batches import manifests
from curation.generation import GenerationSettings, generate_variants, usable_sources
from pipelines.build import build
from pipelines.model import training_config, write_training_config
from pipelines.status import render_status, status
from pixelsmile.generate import GeneratorSpec, load_generator
from pixelsmile.synthetic import world_release, write_world_input
from pixelsmile.train import Trainer
from storage import tables
from storage.layout import Layout
from storage.releases.config import ReleaseConfig
from storage.releases.plan import plan_release, planned_versions

GENERATION = {"categories": ["happy", "surprised"], "intensities": [0.5, 1.0], "max_variants": 1000}


@pytest.fixture(scope="module")
def pixel_model(tmp_path_factory):
    """A pixel model trained a few steps on another synthetic world, in the loop's folder layout; at
    128 px, since a smaller one's variants, scaled up to the crops' size, fail curation as blurry."""
    layout = Layout.at(tmp_path_factory.mktemp("trained") / "w")
    version = world_release(layout, ReleaseConfig(val_fraction=0.0, bench_fraction=0.0), people=8, size=128).name
    recipe = {"backbone": "pixel", "resolution": 128, "batch_size": 4, "max_steps": 20, "pixel_channels": 16,
              "pixel_blocks": 1, "checkpointing_steps": 20}  # fmt: skip
    config = training_config(layout, version, recipe)
    write_training_config(config)
    Trainer(config).train(progress=False)
    return config.output_dir


@pytest.fixture
def world_env(monkeypatch, pixel_model):
    monkeypatch.setenv("FFE_GENERATOR_KIND", "pixel")
    monkeypatch.setenv("FFE_GENERATOR_PATH", pixel_model)
    monkeypatch.setenv("FFE_GENERATOR_STEPS", "4")
    monkeypatch.setenv("FFE_PRELABEL_SCORER", "synthetic")


def _build(layout, folder, **config):
    config = {"expression_variants": {**GENERATION, **config}}
    report = build(layout, folder, "key:expression_variants or +key:release_plan", config, echo=lambda _: None,
                   pre_cropped=True)  # fmt: skip
    assert report.ok, report.failed
    return report


def test_variants_flow_back_as_a_generated_batch_into_identities_prelabels_and_the_release(tmp_path, world_env):
    layout, folder = Layout.at(tmp_path / "w"), tmp_path / "input"
    write_world_input(folder, people=6, faces_per_person=3)
    _build(layout, folder)

    real, generated = manifests(layout)
    assert (real.provenance, generated.provenance) == ("real", "generated")
    assert status(layout)["batches"]["generated"] == [generated.batch]
    assert "2 ingested, 1 of generated variants" in render_status(status(layout))
    variants = tables.read_table(layout, "variants").to_pylist()
    sources = {v["source_face_id"] for v in variants}
    assert len(variants) == 4 * len(sources) == len(generated.files)
    assert {v["generator"].split(":")[0] for v in variants} == {"pixel"}
    assert {v["prompt"] for v in variants} == {f"pixel:{c}@{a:.2f}" for c in ("happy", "surprised") for a in (0.5, 1)}
    assert all((layout.root / v["path"]).is_file() for v in variants)

    # Each variant was curated as a face and joined its source's identity (or was rejected, saying why).
    assigned = tables.read_table(layout, "identities").to_pylist()
    identity_of = {r["face_id"]: r["identity_id"] for r in assigned}
    images = {r["image_id"]: r["source_uri"]
              for r in tables.read_partition(layout, "images", generated.batch).to_pylist()}  # fmt: skip
    by_path = {str((layout.root / v["path"]).resolve()): v for v in variants}
    faces = tables.read_partition(layout, "faces", generated.batch).to_pylist()
    drifted = {r["item"] for r in tables.read_table(layout, "failures").to_pylist() if r["reason"] == "identity_drift"}
    joined = 0
    for face in faces:
        source = by_path[str((layout.root / images[face["image_id"]]).resolve())]["source_face_id"]
        if face["face_id"] in identity_of:
            assert identity_of[face["face_id"]] == identity_of[source]
            joined += 1
        else:
            assert face["face_id"] in drifted or not face["quality_ok"]
    assert joined > len(faces) // 2

    prelabels = tables.read_partition(layout, "prelabels", generated.batch).to_pylist()
    assert prelabels and {p["model_version"] for p in prelabels} == {"synthetic-exact@2"}
    # The next release holds them: those that are not copies of another variant (a barely trained
    # model gives near-identical pictures for 0.5 and 1.0: one of them is kept).
    eligible = {r["face_id"] for r in assigned if r["batch"] == generated.batch and r["duplicate_of"] is None}
    plan = plan_release(layout, ReleaseConfig())
    assert eligible and set(plan.faces.column("face_id").to_pylist()) & {f["face_id"] for f in faces} == eligible
    assert plan.version in planned_versions(layout)  # the build's release_plan planned this release
    provenance = dict(zip(plan.faces.column("face_id").to_pylist(), plan.faces.column("provenance").to_pylist(),
                          strict=True))  # fmt: skip
    assert {provenance[f] for f in eligible} == {"generated"} and "real" in provenance.values()
    # Releases filter and balance by provenance.
    only_real = plan_release(layout, ReleaseConfig(provenances=("real",)))
    assert set(only_real.faces.column("provenance").to_pylist()) == {"real"}
    balanced = plan_release(layout, ReleaseConfig(max_generated_per_real=0.5)).faces.to_pylist()
    for person in {r["identity_id"] for r in balanced}:
        mine = [r["provenance"] for r in balanced if r["identity_id"] == person]
        assert mine.count("generated") <= int(0.5 * mine.count("real"))

    # Nothing new to make: the rerun generates nothing and registers no batch.
    again = _build(layout, folder)
    assert again.new_batch is None and len(manifests(layout)) == 2
    assert tables.read_table(layout, "variants").num_rows == len(variants)


def test_a_variant_that_drifts_from_its_source_is_rejected_with_its_reason(tmp_path, world_env):
    layout, folder = Layout.at(tmp_path / "w"), tmp_path / "input"
    write_world_input(folder, people=3, faces_per_person=2)
    report = build(layout, folder, "key:expression_variants or +key:identities",
                   {"expression_variants": {**GENERATION, "categories": ["angry"], "intensities": [1.0]},
                    "identities": {"max_variant_drift": 1e-6}},  # any change of the face is drift here
                   echo=lambda _: None, pre_cropped=True)  # fmt: skip
    assert report.ok, report.failed
    _, generated = manifests(layout)
    failures = [r for r in tables.read_table(layout, "failures").to_pylist() if r["reason"] == "identity_drift"]
    assert failures and all(r["stage"] == "identities" and r["partition"] == generated.batch for r in failures)
    assert all("to its source > 0.000" in r["detail"] and "angry 1.00" in r["detail"] for r in failures)
    assigned = {r["face_id"] for r in tables.read_partition(layout, "identities", generated.batch).to_pylist()}
    assert not assigned & {r["item"] for r in failures}


def test_the_budget_caps_a_run_and_a_killed_run_resumes_from_its_files(tmp_path, world_env, pixel_model):
    layout, folder = Layout.at(tmp_path / "w"), tmp_path / "input"
    write_world_input(folder, people=2, faces_per_person=2)
    assert build(layout, folder, "+key:identities", echo=lambda _: None, pre_cropped=True).ok
    (batch,) = [m.batch for m in manifests(layout)]
    generator = load_generator(GeneratorSpec(kind="pixel", model_path=pixel_model, steps=2))
    settings = GenerationSettings(categories=("sad",), intensities=(0.5, 1.0), max_variants=3)

    first = generate_variants(layout, batch, generator, settings)
    assert (first.generated, first.left_for_later) == (3, first.requested - 3) and first.new_batch
    # A run killed after writing files but before recording them: the files are taken, not remade.
    done = tables.read_partition(layout, "variants", batch).to_pylist()
    extra = layout.generated / batch / "leftover-from-a-killed-run.png"
    extra.write_bytes((layout.root / done[0]["path"]).read_bytes())
    second = generate_variants(layout, batch, generator, GenerationSettings(("sad",), (0.5, 1.0), max_variants=100))
    assert second.existing == 3 and second.generated == second.requested - 3
    third = generate_variants(layout, batch, generator, GenerationSettings(("sad",), (0.5, 1.0), max_variants=100))
    assert (third.generated, third.new_batch) == (0, None)


def test_a_source_whose_crop_is_gone_fails_its_requests_with_the_reason_and_the_rest_are_made(
    tmp_path, world_env, pixel_model
):
    layout, folder = Layout.at(tmp_path / "w"), tmp_path / "input"
    write_world_input(folder, people=2, faces_per_person=2)
    assert build(layout, folder, "+key:identities", echo=lambda _: None, pre_cropped=True).ok
    (batch,) = [m.batch for m in manifests(layout)]
    sources = usable_sources(layout, batch)
    (layout.root / sources[0]["crop_path"]).unlink()
    generator = load_generator(GeneratorSpec(kind="pixel", model_path=pixel_model, steps=2))
    report = generate_variants(layout, batch, generator, GenerationSettings(("fear",), (0.5, 1.0)))
    assert (report.failed, report.generated) == (2, 2 * (len(sources) - 1))
    failures = tables.read_partition(layout, "failures", f"expression_variants__{batch}").to_pylist()
    assert {f["reason"] for f in failures} == {"unreadable_crop"}
    assert all(f["item"].startswith(sources[0]["face_id"]) and "missing or unreadable" in f["detail"] for f in failures)
    made = {v["source_face_id"] for v in tables.read_partition(layout, "variants", batch).to_pylist()}
    assert sources[0]["face_id"] not in made and len(made) == len(sources) - 1
