"""Resources: every external system the assets touch, configured in one place."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from storage.layout import Layout

DEFAULT_WORKDIR = "ffe_data"


def default_workdir() -> str:
    return os.environ.get("FFE_WORKDIR", DEFAULT_WORKDIR)


def default_input_dir() -> str:
    """Empty means <workdir>/input."""
    return os.environ.get("FFE_INPUT", "")


class FFEStorage(dg.ConfigurableResource):
    """The work folder that holds every table, image and release, and the input folder that the
    ingest sensor watches."""

    workdir: str = DEFAULT_WORKDIR
    input_dir: str = ""  # default: <workdir>/input
    # A file changed within this many seconds may still be being copied in: a later tick takes it.
    input_settle_seconds: float = 2.0
    # What new batches from the input folder are: `real` or `anime`, and whether each image is
    # one face already cropped (taken whole where no face is found).
    domain: str = "real"
    pre_cropped: bool = False

    @property
    def layout(self) -> Layout:
        return Layout.at(self.workdir)

    @property
    def input_path(self) -> Path:
        return Path(self.input_dir).expanduser().resolve() if self.input_dir else self.layout.default_input


class LabelStudioResource(dg.ConfigurableResource):
    """The Label Studio server annotators work in. No URL: the embedded default, where every face is
    labelled by its model pre-label. The token comes from $FFE_LABEL_STUDIO_TOKEN (a Dagster EnvVar,
    so it is neither shown in the UI nor logged)."""

    url: str = ""
    token: str = ""
    project_title: str = "FFE intensity"
    overlap: int = 2
    gold_rate: float = 0.0  # hidden gold tasks per regular task (gold faces: `ffe annotate gold`)

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def settings(self, layout: Layout):
        from annotation.sync import settings_from_env

        return settings_from_env(
            layout, url=self.url, token=self.token, project_title=self.project_title, overlap=self.overlap,
            gold_rate=self.gold_rate,
        )  # fmt: skip


class PixelSmileResource(dg.ConfigurableResource):
    """How each release's model is trained and benched. Defaults: the tiny pixel model (trains in a
    minute on a CPU) judged by the face judge; env: $FFE_TRAIN_RECIPE, $FFE_TRAIN_LAUNCHER,
    $FFE_TRAIN_PROCESSES, $FFE_JUDGE, $FFE_VLM_PATH, $FFE_BENCH_CONFIG."""

    recipe: str = ""  # a YAML of TrainConfig fields (docs/model.md); "" = pipelines.model.TINY_RECIPE
    launcher: str = "accelerate"  # accelerate | python
    processes: int = 1  # training processes (`accelerate launch --num_processes`): one per GPU
    judge: str = "face"  # face | synthetic | vlm
    vlm_path: str = ""  # judge vlm: a local vision-language model folder
    bench_config: str = ""  # a YAML of BenchConfig fields (docs/bench.md); "" = the defaults

    def bench_settings(self):
        import yaml

        from pixelsmile.bench.tasks import BenchConfig

        if not self.bench_config:
            return BenchConfig()
        try:
            return BenchConfig.from_dict(yaml.safe_load(Path(self.bench_config).expanduser().read_text()) or {})
        except OSError as err:
            raise dg.Failure(f"bench config {self.bench_config}: {err.strerror}") from None
        except ValueError as err:
            raise dg.Failure(f"bench config {self.bench_config}: {err}") from None


class GeneratorResource(dg.ConfigurableResource):
    """The editing model that makes expression variants (pixelsmile/generate.py), from a local folder.
    Env: $FFE_GENERATOR_KIND (pixelsmile, qwen-image-edit, flux-kontext, instruct-pix2pix, generic,
    pixel), $FFE_GENERATOR_PATH, $FFE_GENERATOR_LORA, $FFE_GENERATOR_STEPS, $FFE_GENERATOR_SIZE."""

    kind: str = "pixelsmile"
    model_path: str = ""  # "": no generator (generation is skipped)
    lora: str = ""
    steps: int = 30
    size: int = 512
    subject: str = "human"  # human | anime
    template: str = ""  # a prompt template overriding the kind's ({subject} {adverb} {category} {attributes})

    @property
    def configured(self) -> bool:
        return bool(self.model_path)

    def spec(self):
        import torch

        from pixelsmile.generate import GeneratorSpec

        return GeneratorSpec(kind=self.kind, model_path=self.model_path, lora=self.lora, steps=self.steps,
                             size=self.size, subject=self.subject, template=self.template,
                             device="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip


class PrelabelScorerResource(dg.ConfigurableResource):
    """What scores faces for their pre-labels: `face` (blendshapes + the expression classifier, the
    default), `vlm` (a local vision-language model folder, the paper's way) or `synthetic` (the
    synthetic world's exact judge). Env: $FFE_PRELABEL_SCORER, $FFE_PRELABEL_VLM_PATH."""

    scorer: str = "face"
    vlm_path: str = ""

    def build(self):
        """None for the face scorer (annotation.scores' own); else a judge adapted as a scorer."""
        if self.scorer == "face":
            return None
        from pixelsmile.bench.judges import JudgeScorer, judge_named

        try:  # scores only: no identity judge to load
            return JudgeScorer(judge_named(self.scorer, self.vlm_path, identity=False))
        except ValueError as err:
            raise dg.Failure(f"pre-label scorer: {err}") from None


def prelabel_scorer_from_env() -> PrelabelScorerResource:
    env = os.environ.get
    return PrelabelScorerResource(scorer=env("FFE_PRELABEL_SCORER", "face"), vlm_path=env("FFE_PRELABEL_VLM_PATH", ""))


def generator_from_env() -> GeneratorResource:
    env = os.environ.get
    return GeneratorResource(kind=env("FFE_GENERATOR_KIND", "pixelsmile"), model_path=env("FFE_GENERATOR_PATH", ""),
                             lora=env("FFE_GENERATOR_LORA", ""), steps=int(env("FFE_GENERATOR_STEPS", "30")),
                             size=int(env("FFE_GENERATOR_SIZE", "512")))  # fmt: skip


def pixelsmile_from_env() -> PixelSmileResource:
    env = os.environ.get
    return PixelSmileResource(recipe=env("FFE_TRAIN_RECIPE", ""), launcher=env("FFE_TRAIN_LAUNCHER", "accelerate"),
                              processes=int(env("FFE_TRAIN_PROCESSES", "1")), judge=env("FFE_JUDGE", "face"),
                              vlm_path=env("FFE_VLM_PATH", ""), bench_config=env("FFE_BENCH_CONFIG", ""))  # fmt: skip


def label_studio_from_env() -> LabelStudioResource:
    token = dg.EnvVar("FFE_LABEL_STUDIO_TOKEN") if os.environ.get("FFE_LABEL_STUDIO_TOKEN") else ""
    return LabelStudioResource(url=os.environ.get("FFE_LABEL_STUDIO_URL", ""), token=token)
