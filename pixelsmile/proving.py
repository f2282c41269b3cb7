"""The proving ground: train small models on the synthetic world and measure what the paper claims.

1. A synthetic world (pixelsmile/synthetic.py) is written as a batch and cut into a release
   (identity-disjoint splits; the bench split's people are never trained on).
2. Two frozen encoders are trained on fresh renders: an expression encoder (the 14 features: the
   world's stand-in for CLIP in L_SC) and an identity encoder (the identity vector: ArcFace's role in
   L_ID). They are saved as TorchScript and loaded by path, as real ones would be.
3. The same pixel-space model is trained once per arm of the ablation (`ARMS`) with the same code,
   data, steps and seed: PixelSmile's symmetric joint training (1/2 (FM_a + FM_b) + L_SC + 0.1 L_ID),
   the same without L_SC, and plain flow matching on the same targets as independent samples.
4. Each edits the bench people's neutral faces toward every category over an alpha grid; the exact
   judge reads each edit; FFE-Bench metrics with bootstrap intervals over the bench people (and of
   each arm's difference to plain flow matching), a no-edit baseline, a perfect editor (exact
   renders: the judge's own ceiling), sweep strips, CLS curves and confusion matrices follow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from pixelsmile import metrics
from pixelsmile.bench import plots
from pixelsmile.bench.run import pixel_editor
from pixelsmile.bench.tasks import sources
from pixelsmile.encoders import SmallEncoder, small_encoder
from pixelsmile.synthetic import (
    CATEGORIES,
    WORLD_PAIRS,
    features_of,
    identity_similarity,
    judge,
    random_identity,
    render,
    world_release,
)
from pixelsmile.train import TrainConfig, Trainer
from storage.loader import image_to_tensor


@dataclass(frozen=True)
class ProvingSettings:
    people: int = 240
    faces_per_person: int = 7
    size: int = 32
    steps: int = 3000
    batch_size: int = 16
    learning_rate: float = 1e-3
    channels: int = 64
    blocks: int = 4
    encoder_steps: int = 800
    bench_fraction: float = 0.1
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
    sample_steps: int = 20
    seed: int = 0
    arms: tuple[str, ...] = ("pixelsmile", "symmetric-no-sc", "plain-fm")
    bootstrap: int = 500  # resamples of the bench people for the confidence intervals


# The ablation's arms: (symmetric joint training, w_sc, w_id). The same code, data, steps and seed.
ARMS = {
    "pixelsmile": (True, 1.0, 0.1),  # the paper's objective
    "symmetric-no-sc": (True, 0.0, 0.1),  # symmetric triplets and L_ID, no contrastive loss
    "plain-fm": (False, 0.0, 0.0),  # both targets as independent (source, target) samples, FM only
}


def train_encoder(target: str, settings: ProvingSettings) -> nn.Module:
    """A small CNN regressing the 14 expression features (`target="expression"`) or the identity
    vector (`"identity"`) from random renders."""
    rng = np.random.default_rng(settings.seed + (1 if target == "expression" else 2))
    torch.manual_seed(settings.seed)
    out_dim = len(features_of(np.zeros(len(CATEGORIES)))) if target == "expression" else 10
    net = SmallEncoder(out_dim, width=32)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(settings.encoder_steps):
        xs, ys = [], []
        for _ in range(32):
            person, s = random_identity(rng), np.zeros(len(CATEGORIES))
            s[rng.choice(len(CATEGORIES), size=rng.integers(0, 3), replace=False)] = rng.uniform(0, 1)
            xs.append(image_to_tensor(render(person, s, settings.size)))
            ys.append(features_of(s) if target == "expression" else person.vector())
        loss = nn.functional.mse_loss(net(torch.stack(xs)), torch.tensor(np.array(ys), dtype=torch.float32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def make_release(out: Path, settings: ProvingSettings) -> Path:
    from storage.layout import Layout
    from storage.releases.config import ReleaseConfig

    config = ReleaseConfig(val_fraction=0.0, bench_fraction=settings.bench_fraction, pairs=WORLD_PAIRS, extra_pairs=0,
                           shard_target_bytes=2_000_000)  # fmt: skip
    world = dict(people=settings.people, faces_per_person=settings.faces_per_person, size=settings.size,
                 seed=settings.seed)  # fmt: skip
    return world_release(Layout.at(out / "world"), config, **world)


def bench_sources(release: Path) -> list[tuple[str, Image.Image]]:
    """The bench tasks' sources: the most neutral face of every bench-split person (never trained on)."""
    return [(s["identity_id"], Image.open(release / s["image"]).convert("RGB")) for s in sources(release)]


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
        source = judge(render(person, np.zeros(len(CATEGORIES)), settings.size)).identity
        edits = []
        for cat in CATEGORIES:
            for a in settings.alphas:
                s = np.zeros(len(CATEGORIES))
                s[CATEGORIES.index(cat)] = a
                j = judge(render(person, s, settings.size))
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


def run(out: Path, settings: ProvingSettings = ProvingSettings(), progress: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    release = make_release(out, settings)
    encoders = {}
    for target in ("expression", "identity"):
        path = out / f"{target}_encoder.pt"
        if not path.is_file():
            small_encoder(path, module=train_encoder(target, settings))
        encoders[target] = str(path)
    sources = bench_sources(release)
    unedited = no_edit(sources, settings)
    results, strips = {"no-edit": {"metrics": metrics.summary(flat(unedited))}}, {}
    per_arm = {}
    for name in settings.arms:
        symmetric, w_sc, w_id = ARMS[name]
        config = TrainConfig(output_dir=str(out / name), release=str(release), feature_encoder=encoders["expression"],
                             identity_encoder=encoders["identity"], resolution=settings.size,
                             batch_size=settings.batch_size, max_steps=settings.steps,
                             learning_rate=settings.learning_rate, lr_warmup_steps=min(100, settings.steps // 10),
                             checkpointing_steps=max(settings.steps // 3, 1), pixel_channels=settings.channels,
                             pixel_blocks=settings.blocks, symmetric=symmetric, contrastive_weight=w_sc,
                             identity_weight=w_id, seed=settings.seed, resume="latest")  # fmt: skip
        trainer = Trainer(config)
        trained = trainer.train(progress=progress)
        trainer.backbone.eval()
        per_arm[name], strips[name] = evaluate(trainer.backbone, sources, settings)
        edits = flat(per_arm[name])
        results[name] = {"metrics": metrics.summary(edits), "pair_confusion": pair_confusion(edits),
                         "last_loss": trained["last"], "cls_curves": cls_curves(edits, settings),
                         "confusion": metrics.confusion(edits).round(4).tolist()}  # fmt: skip
    results["no-edit"]["cls_curves"] = cls_curves(flat(unedited), settings)
    perfect = flat(perfect_editor(len(sources), settings))
    results["perfect-editor"] = {"metrics": metrics.summary(perfect), "pair_confusion": pair_confusion(perfect),
                                 "cls_curves": cls_curves(perfect, settings),
                                 "confusion": metrics.confusion(perfect).round(4).tolist()}  # fmt: skip
    baseline = "plain-fm" if "plain-fm" in per_arm else None
    arms = {name: flat(per_source) for name, per_source in per_arm.items()}
    for name, ci in metrics.paired_bootstrap(arms, settings.bootstrap, settings.seed, baseline=baseline).items():
        difference = ci.pop(f"minus_{baseline}", None)
        results[name]["ci95"] = ci
        if difference:
            results[name][f"minus_{baseline}_ci95"] = difference
    files = plot(out, results, strips, settings)
    report = {"settings": asdict(settings), "bench_people": len(sources), "release": release.name,
              "results": results, "plots": files}  # fmt: skip
    (out / "proving_ground.json").write_text(json.dumps(report, indent=1, default=float))
    return report
