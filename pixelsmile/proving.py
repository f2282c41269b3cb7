"""The proving ground: fine-tune the synthetic world's base editor and measure what the paper claims,
in the shape of the paper's table.

1. A synthetic world (pixelsmile/synthetic.py) is written as a batch and cut into a release
   (identity-disjoint splits; the bench split's people are never trained on).
2. The world's shipped models (pixelsmile/world_models.py): the base editor (the pixel model
   pre-trained with plain flow matching on discrete prompted edits of people of its own: the world's
   Qwen-Image-Edit) and the frozen expression and identity encoders (the world's CLIP and ArcFace).
3. The arms (`ARMS`): the base prompted, untrained (the paper's "PixelSmile without training"), and
   the base fine-tuned on the release with the same code, data, steps and seed three ways: plain
   flow matching on the same targets as independent samples; symmetric joint training with L_ID and
   no L_SC; PixelSmile (1/2 (FM_a + FM_b) + L_SC + 0.1 L_ID).
4. Each edits the bench people's neutral faces (at the models' size) toward every category over an
   alpha grid; the exact judge reads each edit; FFE-Bench metrics with bootstrap intervals over the
   bench people, and the paired differences that isolate each part (`EFFECTS`); a no-edit baseline
   and a perfect editor (exact renders: the judge's own ceiling) beside; sweep strips, CLS curves
   and confusion matrices.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixelsmile import metrics, world_models
from pixelsmile.bench import plots
from pixelsmile.bench.run import pixel_editor
from pixelsmile.bench.tasks import sources
from pixelsmile.pixel import PixelBackbone
from pixelsmile.synthetic import CATEGORIES, WORLD_PAIRS, identity_similarity, judge, random_identity, world_release
from pixelsmile.train import TrainConfig, Trainer
from pixelsmile.world_models import world_face


@dataclass(frozen=True)
class ProvingSettings:
    people: int = 240
    faces_per_person: int = 7
    size: int = 64  # the models' side in pixels (the world's photos are twice that)
    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 3e-4
    bench_fraction: float = 0.1
    # FFE's intensities and the judge's scale end at 1: past it a perfect editor's judged intensity
    # is flat, and the pooled CLS of any editor falls (to 0.95 at most over 0 ... 1.5).
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    sample_steps: int = 20
    seed: int = 0
    arms: tuple[str, ...] = ("base-prompted", "plain-fm", "symmetric-no-sc", "pixelsmile")
    bootstrap: int = 500  # resamples of the bench people for the confidence intervals


# The arms: None for the base as shipped, else how it is fine-tuned: (symmetric joint training,
# w_sc, w_id). The same base, code, data, steps and seed.
ARMS: dict[str, tuple[bool, float, float] | None] = {
    "base-prompted": None,  # the paper's "PixelSmile without training"
    "plain-fm": (False, 0.0, 0.0),  # both targets as independent (source, target) samples, FM only
    "symmetric-no-sc": (True, 0.0, 0.1),  # symmetric triplets and L_ID, no contrastive loss
    "pixelsmile": (True, 1.0, 0.1),  # the paper's objective
}
# What each paired difference isolates: name -> (arm, minus arm).
EFFECTS = {
    "fine-tuning": ("pixelsmile", "base-prompted"),
    "symmetric+L_ID": ("symmetric-no-sc", "plain-fm"),
    "L_SC": ("pixelsmile", "symmetric-no-sc"),
    "objective": ("pixelsmile", "plain-fm"),
}


def base_editor() -> PixelBackbone:
    """The shipped base editor, checked against the hash its manifest records."""
    return PixelBackbone.from_base(world_models.resolve(world_models.PREFIX + world_models.BASE),
                                   world_models.sha256(world_models.BASE))  # fmt: skip


def make_release(out: Path, settings: ProvingSettings) -> Path:
    from storage.layout import Layout
    from storage.releases.config import ReleaseConfig

    config = ReleaseConfig(val_fraction=0.0, bench_fraction=settings.bench_fraction, pairs=WORLD_PAIRS, extra_pairs=0,
                           shard_target_bytes=2_000_000)  # fmt: skip
    world = dict(people=settings.people, faces_per_person=settings.faces_per_person, size=2 * settings.size,
                 seed=settings.seed)  # fmt: skip
    return world_release(Layout.at(out / "world"), config, **world)


def bench_sources(release: Path, size: int) -> list[tuple[str, Image.Image]]:
    """The bench tasks' sources: the most neutral face of every bench-split person (never trained
    on), at the models' size (resized as the loader resizes training images)."""
    faces = [(s["identity_id"], Image.open(release / s["image"]).convert("RGB")) for s in sources(release)]
    return [(person, img.resize((size, size), Image.Resampling.BICUBIC)) for person, img in faces]


@torch.no_grad()
def evaluate(backbone, sources, settings: ProvingSettings) -> tuple[list[list[metrics.Edit]], dict]:
    """Every source toward every category at every alpha; judged. Returns the edits of each source
    and the images of the first two sources (for the sweep strips)."""
    per_source, strips = [], {}
    editor = pixel_editor(backbone, steps=settings.sample_steps, seed=settings.seed)
    for n, (person, img) in enumerate(sources):
        src_judged = judge(img)
        edits = []
        per_source.append(edits)
        for cat in CATEGORIES:
            for a, edited in zip(settings.alphas, editor(img, cat, settings.alphas), strict=True):
                j = judge(edited)
                edits.append(
                    metrics.Edit(cat, float(a), j.scores, identity_similarity(j.identity, src_judged.identity), person)
                )
                if n < 2:
                    strips.setdefault((n, cat), []).append(edited)
    return per_source, strips


def no_edit(sources, settings: ProvingSettings) -> list[list[metrics.Edit]]:
    per_source = []
    for person, img in sources:
        j = judge(img)
        alphas = settings.alphas
        per_source.append([metrics.Edit(c, float(a), j.scores, 1.0, person) for c in CATEGORIES for a in alphas])
    return per_source


def perfect_editor(people: int, settings: ProvingSettings) -> list[list[metrics.Edit]]:
    """Fresh people rendered with exactly the asked intensity, judged: what a perfect editor scores
    through this judge at this size (the judge's own errors are the ceiling of every arm)."""
    rng = np.random.default_rng(settings.seed + 99)
    per_source = []
    for k in range(people):
        person = random_identity(rng)
        source = judge(world_face(person, np.zeros(len(CATEGORIES)), settings.size)).identity
        edits = []
        for cat in CATEGORIES:
            for a in settings.alphas:
                s = np.zeros(len(CATEGORIES))
                s[CATEGORIES.index(cat)] = a
                j = judge(world_face(person, s, settings.size))
                similarity = identity_similarity(j.identity, source)
                edits.append(metrics.Edit(cat, float(a), j.scores, similarity, f"fresh-{k}"))
        per_source.append(edits)
    return per_source


def flat(per_source: list[list[metrics.Edit]]) -> list[metrics.Edit]:
    return [e for edits in per_source for e in edits]


def cls_curves(edits: list[metrics.Edit], settings: ProvingSettings) -> dict[str, list[float]]:
    return metrics.intensity_curves(edits, CATEGORIES, settings.alphas)


def pair_confusion(edits: list[metrics.Edit]) -> dict[str, float]:
    """BCR of every confusable pair: where the ablation differs."""
    c = metrics.confusion(edits)
    return {f"{a}/{b}": metrics.bcr(c, a, b) for a, b in metrics.CONFUSABLE_PAIRS}


def plot(out: Path, results: dict, strips: dict, settings: ProvingSettings) -> list[str]:
    cls_png = plots.cls_curves(out / "cls_curves.png", settings.alphas,
                               {name: r["cls_curves"] for name, r in results.items()})  # fmt: skip
    matrices = {name: np.array(r["confusion"]) for name, r in results.items() if "confusion" in r}
    written = [cls_png.name, plots.confusion(out / "confusion.png", matrices).name]
    shown = ("happy", "fear", "surprised", "angry", "disgust")
    for name, images in strips.items():
        kept = [(cat, tiles) for (_, cat), tiles in images.items() if cat in shown]
        written.append(plots.sweep_sheet(out / f"sweeps_{name}.png", [t for _, t in kept],
                                         row_labels=[c for c, _ in kept]).name)  # fmt: skip
    return written


def fine_tune(out: Path, release: Path, name: str, settings: ProvingSettings, progress: bool) -> tuple:
    """The base fine-tuned as arm `name` says, through the trainer and a recipe like the default's
    (resumed when `out/<name>` holds a run): (the model, the last logged losses)."""
    symmetric, w_sc, w_id = ARMS[name]
    recipe = {"backbone": "pixel", **world_models.recipe_models(), "resolution": settings.size,
              "batch_size": settings.batch_size, "max_steps": settings.steps, "learning_rate": settings.learning_rate,
              "lr_warmup_steps": min(100, settings.steps // 10), "checkpointing_steps": max(settings.steps // 3, 1),
              "symmetric": symmetric, "contrastive_weight": w_sc, "identity_weight": w_id, "seed": settings.seed}
    trainer = Trainer(TrainConfig.from_dict({**recipe, "output_dir": str(out / name), "release": str(release),
                                             "resume": "latest"}))  # fmt: skip
    trained = trainer.train(progress=progress)
    return trainer.backbone, trained["last"]


def run(out: Path, settings: ProvingSettings = ProvingSettings(), progress: bool = True) -> dict:
    """Every arm of `settings.arms` trained (resuming any run already in `out`), benched and compared;
    writes `out/proving_ground.json` and the plots; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    release = make_release(out, settings)
    sources = bench_sources(release, settings.size)
    unedited = no_edit(sources, settings)
    results, strips = {"no-edit": {"metrics": metrics.summary(flat(unedited))}}, {}
    per_arm = {}
    for name in settings.arms:
        if ARMS[name] is None:
            backbone, last = base_editor(), None
        else:
            backbone, last = fine_tune(out, release, name, settings, progress)
        per_arm[name], strips[name] = evaluate(backbone.eval(), sources, settings)
        edits = flat(per_arm[name])
        results[name] = {"metrics": metrics.summary(edits), "pair_confusion": pair_confusion(edits),
                         "last_loss": last, "cls_curves": cls_curves(edits, settings),
                         "confusion": metrics.confusion(edits).round(4).tolist()}  # fmt: skip
    results["no-edit"]["cls_curves"] = cls_curves(flat(unedited), settings)
    perfect = flat(perfect_editor(len(sources), settings))
    results["perfect-editor"] = {"metrics": metrics.summary(perfect), "pair_confusion": pair_confusion(perfect),
                                 "cls_curves": cls_curves(perfect, settings),
                                 "confusion": metrics.confusion(perfect).round(4).tolist()}  # fmt: skip
    arms = {name: flat(per_source) for name, per_source in per_arm.items()}
    for name, ci in metrics.paired_bootstrap(arms, settings.bootstrap, settings.seed).items():
        results[name]["ci95"] = ci
    effects = {}
    for effect, (arm, minus) in EFFECTS.items():
        if arm in arms and minus in arms:
            pair = metrics.paired_bootstrap({arm: arms[arm], minus: arms[minus]}, settings.bootstrap, settings.seed,
                                            baseline=minus)  # fmt: skip
            effects[effect] = {"arm": arm, "minus": minus, "ci95": pair[arm][f"minus_{minus}"]}
    files = plot(out, results, strips, settings)
    report = {"settings": asdict(settings), "bench_people": len(sources), "release": release.name,
              "base_sha256": world_models.sha256(world_models.BASE), "results": results, "effects": effects,
              "plots": files}  # fmt: skip
    (out / "proving_ground.json").write_text(json.dumps(report, indent=1, default=float))
    return report
