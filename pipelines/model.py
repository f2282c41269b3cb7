"""The retrain-and-bench loop without Dagster: where a release's model is trained, how the training
process is launched, the model it gives as an editor, and the key of a bench run.

Folders, per release (`runs/<version>/`):
    train-<recipe>/            the training run of one recipe (config.yaml, checkpoint-<step>/,
                               final/, outcome.json); the same recipe resumes there
    <bench run id>/bench/      a bench run (run_bench's files); the id is a hash of the weights
                               (or the baseline's name), judge, bench config and code, so an
                               unchanged rerun finds its result
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from pipelines.errors import FFEError
from pixelsmile import world_models
from pixelsmile.train import TrainConfig, TrainingError
from storage.blobs import file_digest
from storage.layout import Layout
from storage.releases.plan import release_dir
from storage.yamlfile import YamlFileError, read_yaml

# The default recipe: PixelSmile's full objective (symmetric flow matching + L_SC + L_ID) fine-tuning
# the synthetic world's base editor with the world's expression and identity encoders, all shipped
# in pixelsmile/world/ (pixelsmile/world_models.py), at 64 px: a few minutes on a CPU, so the loop
# runs end to end on any machine (docs/model.md). A real recipe (the Qwen backbone, a LoRA, CLIP and
# ArcFace) is a YAML of TrainConfig fields given to the `pixelsmile` resource (or $FFE_TRAIN_RECIPE).
DEFAULT_RECIPE = {
    "backbone": "pixel",
    **world_models.recipe_models(),
    "resolution": 64,
    "batch_size": 8,
    "max_steps": 200,
    "learning_rate": 3e-4,
    "lr_warmup_steps": 20,
    "checkpointing_steps": 50,
    "log_every": 10,
}
SET_BY_THE_LOOP = ("output_dir", "release", "train_jsonl", "resume")
LAUNCHERS = ("accelerate", "python")


def load_recipe(path: str) -> dict:
    """The training recipe: a YAML of TrainConfig fields, or the tiny default when `path` is empty.
    Checked whole before any training is launched: FFEError naming the file and the key."""
    if not path:
        return dict(DEFAULT_RECIPE)
    try:
        recipe = read_yaml(path, "training recipe")
    except YamlFileError as err:
        raise FFEError(str(err)) from None
    if recipe is None:  # not the default: a person named this file and meant something by it
        raise FFEError(f"training recipe {path} is empty: write its TrainConfig fields, or unset train.recipe "
                       "for the default recipe")  # fmt: skip
    if not isinstance(recipe, dict):
        raise FFEError(f"training recipe {path} must be a mapping of TrainConfig fields")
    if clash := [k for k in SET_BY_THE_LOOP if k in recipe]:
        raise FFEError(f"training recipe {path} sets {', '.join(clash)}: the loop sets those per release")
    try:  # every key and value, as the trainer will read them
        TrainConfig.from_dict({**recipe, "output_dir": "-", "release": "-"})
    except TrainingError as err:
        raise FFEError(f"training recipe {path}: {err}") from None
    if problem := model_file_problem(recipe):
        raise FFEError(f"training recipe {path}: {problem}")
    return recipe


MODEL_FILES = ("base_weights", "feature_encoder", "identity_encoder")


def model_file_problem(recipe: dict) -> str | None:
    """What is wrong with the model files a recipe names (a `world:` name not shipped, a path that
    does not exist, a base whose sha256 is not the recipe's), or None. Checked before a launch: the
    trainer would find it only after the release is read."""
    from pixelsmile.world_models import WorldModelError, resolve

    for key in MODEL_FILES:
        if not (value := recipe.get(key)):
            continue
        try:
            found = Path(resolve(value)).expanduser()
        except WorldModelError as err:
            return f"{key}: {err}"
        if not found.exists():
            return f"{key}: {value} does not exist"
        if key == "base_weights" and (want := recipe.get("base_sha256")):
            if not found.is_file():
                return f"{key}: {value} is a folder, not a base editor file"
            if (got := file_digest(found)[0]) != want:
                return f"{key}: {value} has sha256 {got}, not the base_sha256 {want} the recipe names"
    return None


def recipe_digest(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def model_name(recipe: dict) -> str:
    """One name per recipe across releases: what the leaderboard and the regression check compare."""
    return f"pixelsmile-{recipe.get('backbone', 'pixel')}@{recipe_digest(recipe)}"


def training_config(layout: Layout, version: str, recipe: dict) -> TrainConfig:
    """The recipe on this release, in its own folder, resuming from its latest checkpoint."""
    out = layout.runs / version / f"train-{recipe_digest(recipe)}"
    try:
        return TrainConfig.from_dict(
            {**recipe, "output_dir": str(out), "release": str(release_dir(layout, version)), "resume": "latest"}
        )
    except (TrainingError, TypeError) as err:
        raise FFEError(f"training recipe: {err}") from None


def write_training_config(config: TrainConfig) -> Path:
    path = Path(config.output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    return path


def launch_command(config_path: Path, launcher: str = "accelerate", processes: int = 1) -> list[str]:
    """`pixelsmile train` in its own process: through `accelerate launch` (several processes: DDP, on
    GPUs or, without one, over gloo on the CPU), or plain Python."""
    train = ["-m", "pixelsmile.cli", "train", "--config", str(config_path)]
    if launcher == "python":
        if processes != 1:
            raise FFEError("launcher python runs one process; use launcher accelerate for several")
        return [sys.executable, *train]
    if launcher != "accelerate":
        raise FFEError(f"unknown launcher {launcher!r}; launchers: {', '.join(LAUNCHERS)}")
    # Every setting named, so that accelerate neither needs `accelerate config` nor warns about it.
    multi = ["--multi_gpu"] if processes > 1 else []
    return [sys.executable, "-m", "accelerate.commands.launch", *multi, "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *train]  # fmt: skip


@dataclass(frozen=True)
class TrainedModel:
    name: str
    folder: Path  # the training run
    weights: Path  # final/ of the run
    digest: str  # of the weight files: the bench run's key

    def editor(self, config: TrainConfig, steps: int = 20):
        """The bench's editor for these weights (the pixel model, or the Qwen pipeline with the LoRA)."""
        from pixelsmile.bench.run import pipeline_editor, pixel_editor

        if config.backbone == "pixel":
            from pixelsmile.pixel import PixelBackbone

            if self.weights.is_file():  # a base editor's file
                backbone = PixelBackbone.from_base(self.weights, self.digest)
            else:
                backbone = PixelBackbone(config.pixel_channels, config.pixel_blocks, seed=config.seed)
                backbone.load_weights(self.weights)
            return pixel_editor(backbone.eval(), steps=steps, seed=config.seed, size=config.resolution)
        from pixelsmile.infer import EditSettings
        from pixelsmile.lora import load_lora
        from pixelsmile.qwen import load_pipeline

        pipe = load_pipeline(config.model_path)
        load_lora(pipe, self.weights)
        return pipeline_editor(pipe, EditSettings(size=config.resolution, seed=config.seed))


def base_editor(config: TrainConfig) -> TrainedModel | None:
    """The recipe's base editor, prompted and untrained (the paper's "PixelSmile without training"):
    what fine-tuning started from, benched beside it. None when the recipe fine-tunes no base."""
    if not config.base_weights:
        return None
    from pixelsmile.world_models import resolve

    path = Path(resolve(config.base_weights))
    digest = file_digest(path)[0]
    return TrainedModel(f"base-editor@{digest[:10]}", path.parent, path, digest)


def trained_model(config: TrainConfig, recipe: dict) -> TrainedModel | None:
    """The finished model of a training run, or None when it has not finished."""
    from pixelsmile.train import read_outcome

    out = Path(config.output_dir)
    outcome = read_outcome(out)
    weights = out / "final"
    if not outcome or outcome["status"] != "ok" or not weights.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in weights.rglob("*") if p.is_file()):
        h.update(f.relative_to(weights).as_posix().encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return TrainedModel(model_name(recipe), out, weights, h.hexdigest())


def bench_run_id(version: str, subject: str, judge: str, bench_digest: str, commit: str | None) -> str:
    """Same subject (a model's weight digest, or a baseline's name), judge, tasks and code: the same
    run (a rerun finds it, a killed one resumes). Baselines are named so: `<version>-no-edit-<hash>`."""
    key = hashlib.sha256(json.dumps([subject, judge, bench_digest, commit]).encode()).hexdigest()[:10]
    return f"{version}-{subject if subject in BASELINES else 'bench'}-{key}"


BASELINES = ("no-edit",)  # benched beside each release's model, so each release's rows have a floor
