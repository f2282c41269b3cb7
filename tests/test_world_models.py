"""The synthetic world's shipped models (pixelsmile/world/): the base editor the default recipe
fine-tunes, and the expression and identity encoders of its L_SC and L_ID."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import model
from pipelines.errors import FFEError
from pixelsmile import world_models
from pixelsmile.pixel import PixelBackbone
from pixelsmile.train import TrainConfig, Trainer, TrainingError
from storage.blobs import file_digest
from storage.layout import Layout
from storage.releases.config import ReleaseConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pixelsmile.synthetic import WORLD_PAIRS, world_release

    layout = Layout.at(tmp_path_factory.mktemp("world") / "w")
    config = ReleaseConfig(val_fraction=0.0, bench_fraction=0.25, pairs=WORLD_PAIRS, extra_pairs=0)
    return world_release(layout, config, people=16, faces_per_person=7, size=128, seed=5)


def _config(release, out, **overrides) -> TrainConfig:
    recipe = {**model.DEFAULT_RECIPE, "max_steps": 2, "checkpointing_steps": 100, **overrides}
    return TrainConfig.from_dict({**recipe, "output_dir": str(out), "release": str(release)})


def test_the_shipped_models_are_the_ones_the_manifest_and_the_default_recipe_name():
    files = world_models.manifest()["files"]
    assert set(files) == {world_models.BASE, world_models.EXPRESSION, world_models.IDENTITY}
    for name, recorded in files.items():
        assert file_digest(world_models.FOLDER / name) == (recorded["sha256"], recorded["bytes"])
    assert model.DEFAULT_RECIPE["base_sha256"] == files[world_models.BASE]["sha256"]
    recipe = model.load_recipe("")
    assert recipe["feature_encoder"] and recipe["identity_encoder"], "the default recipe trains L_SC and L_ID"
    assert model.model_file_problem(recipe) is None


def test_a_fine_tune_starts_from_the_base_the_recipe_names(world, tmp_path):
    base = PixelBackbone.from_base(world_models.resolve(model.DEFAULT_RECIPE["base_weights"]))
    trainer = Trainer(_config(world, tmp_path / "run"))
    started = trainer.backbone.state_dict()
    assert set(started) == set(base.state_dict())
    assert all(torch.equal(started[k], v) for k, v in base.state_dict().items())


def test_a_base_of_another_hash_shape_or_name_is_refused_naming_it(world, tmp_path):
    path = world_models.resolve(model.DEFAULT_RECIPE["base_weights"])
    with pytest.raises(TrainingError, match=f"base editor {path} has sha256 .* not the 0+ its recipe names"):
        Trainer(_config(world, tmp_path / "a", base_sha256="0" * 64))
    with pytest.raises(TrainingError, match="is a net of 64 channels x 4 blocks: set pixel_channels: 64"):
        Trainer(_config(world, tmp_path / "b", pixel_channels=16))
    with pytest.raises(TrainingError, match="world:nope.pt is not one of the world's models"):
        Trainer(_config(world, tmp_path / "c", base_weights="world:nope.pt"))
    with pytest.raises(TrainingError, match="base_weights is the pixel backbone's"):
        _config(world, tmp_path / "d", backbone="qwen")
    # Before any launch, as the loop reads the recipe.
    assert "has sha256" in model.model_file_problem({**model.DEFAULT_RECIPE, "base_sha256": "0" * 64})
    assert "does not exist" in model.model_file_problem({"identity_encoder": str(tmp_path / "none.pt")})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("feature_encoder: 'world:clip.pt'\n")
    with pytest.raises(FFEError, match=f"training recipe {recipe}: feature_encoder: world:clip.pt is not one of"):
        model.load_recipe(str(recipe))


def test_the_default_recipe_trains_all_three_terms(world, tmp_path):
    trainer = Trainer(_config(world, tmp_path / "run", max_steps=3, log_every=1))
    trainer.train(progress=False)
    import json

    steps = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert len(steps) == 3
    for key in ("fm_a", "fm_b", "contrastive", "identity"):
        assert all(np.isfinite(s[key]) and s[key] > 0 for s in steps), key


def test_a_trained_pixel_model_loads_without_its_seed(world, tmp_path):
    """The token table travels with the weights: a model loads the same whatever seed builds it."""
    trainer = Trainer(_config(world, tmp_path / "run", max_steps=1))
    trainer.train(progress=False)
    loaded = PixelBackbone(64, 4, seed=7)
    loaded.load_weights(tmp_path / "run" / "final")
    assert torch.equal(loaded.text_encoder.words, trainer.backbone.text_encoder.words)


@pytest.mark.slow
def test_fine_tuning_the_base_with_the_default_recipe_untangles_its_confusable_pairs(world, tmp_path):
    """The quick world's bench people (never trained on), edited toward every category over the
    proving ground's alpha grid by the base as shipped (loose captions: it confuses the pairs) and
    after a short fine-tune with the default recipe: confusion between paired categories falls."""
    from pixelsmile import metrics
    from pixelsmile.proving import ProvingSettings, base_editor, bench_sources, evaluate, flat

    settings = ProvingSettings(sample_steps=10)
    sources = bench_sources(world, settings.size)
    base = metrics.summary(flat(evaluate(base_editor().eval(), sources, settings)[0]))
    trainer = Trainer(_config(world, tmp_path / "run", max_steps=150))
    trainer.train(progress=False)
    tuned = metrics.summary(flat(evaluate(trainer.backbone.eval(), sources, settings)[0]))
    print({"base": base, "tuned": tuned})
    assert tuned["mSCR"] < base["mSCR"] - 0.03 and tuned["Acc-12"] > base["Acc-12"], (base, tuned)
