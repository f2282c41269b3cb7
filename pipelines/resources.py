"""Resources: every external system the assets touch, configured in one place."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from storage.layout import Layout

DEFAULT_WORKDIR = "ffe_data"
ENV_TOKEN = "FFE_LABEL_STUDIO_TOKEN"


def default_workdir() -> str:
    return os.environ.get("FFE_WORKDIR", DEFAULT_WORKDIR)


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
    whole_images: bool = False  # each image one face taken whole, without detection
    # Read input files (and label files) through links that lead out of the input folder: off, so a
    # link to /etc/shadow or to someone else's photos is refused and recorded, not ingested.
    follow_links: bool = False

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
    document_root: str = ""  # the server's local-files root; "" = $FFE_LABEL_STUDIO_DOCUMENT_ROOT or the work folder
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
            gold_rate=self.gold_rate, document_root=self.document_root or None,
        )  # fmt: skip


class PixelSmileResource(dg.ConfigurableResource):
    """How each release's model is trained and benched. Defaults: the tiny pixel model (trains in a
    minute on a CPU) judged by the face judge; settings `train.*` and `bench.*`."""

    recipe: str = ""  # a YAML of TrainConfig fields (docs/model.md); "" = pipelines.model.DEFAULT_RECIPE
    launcher: str = "accelerate"  # accelerate | python
    processes: int = 1  # training processes (`accelerate launch --num_processes`): one per GPU
    judge: str = "face"  # face | synthetic | vlm
    vlm_path: str = ""  # judge vlm: a local vision-language model folder
    bench_config: str = ""  # a YAML of BenchConfig fields (docs/bench.md); "" = the defaults

    def bench_settings(self):
        from pixelsmile.bench.tasks import BenchConfig
        from storage.yamlfile import YamlFileError, read_yaml

        if not self.bench_config:
            return BenchConfig()
        try:
            return BenchConfig.from_dict(read_yaml(self.bench_config, "bench config") or {})
        except YamlFileError as err:
            raise dg.Failure(str(err)) from None
        except ValueError as err:
            raise dg.Failure(f"bench config {self.bench_config}: {err}") from None


class GeneratorResource(dg.ConfigurableResource):
    """The editing model that makes expression variants (pixelsmile/generate.py), from a local folder.
    Settings `generator.*` (kind: pixelsmile, qwen-image-edit, flux-kontext, instruct-pix2pix, generic,
    pixel)."""

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
    synthetic world's exact judge). Settings `prelabels.*`."""

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


def resources_from_settings(effective) -> dict[str, dg.ConfigurableResource]:
    """The resources of a work folder built the way its settings say (pipelines/settings.py)."""
    s = effective.settings
    # The token stays an EnvVar: Dagster neither shows it in the UI nor logs it.
    token = dg.EnvVar(ENV_TOKEN) if s.label_studio.token and os.environ.get(ENV_TOKEN) else s.label_studio.token
    return {
        "ffe": FFEStorage(workdir=str(effective.workdir), input_dir=str(effective.input_path),
                          input_settle_seconds=s.input.settle_seconds, domain=s.input.domain,
                          pre_cropped=s.input.pre_cropped, whole_images=s.input.whole_images,
                          follow_links=s.input.follow_links),
        "label_studio": LabelStudioResource(url=s.label_studio.url, token=token,
                                            document_root=s.label_studio.document_root,
                                            project_title=s.label_studio.project_title,
                                            overlap=s.label_studio.overlap, gold_rate=s.label_studio.gold_rate),
        "pixelsmile": PixelSmileResource(recipe=s.train.recipe, launcher=s.train.launcher,
                                         processes=s.train.processes, judge=s.bench.judge,
                                         vlm_path=s.bench.vlm_path, bench_config=s.bench.config),
        "generator": GeneratorResource(kind=s.generator.kind, model_path=s.generator.path, lora=s.generator.lora,
                                       steps=s.generator.steps, size=s.generator.size),
        "prelabel_scorer": PrelabelScorerResource(scorer=s.prelabels.scorer, vlm_path=s.prelabels.vlm_path),
    }  # fmt: skip
