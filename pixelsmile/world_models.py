"""The synthetic world's ready-made models, shipped in `pixelsmile/world/` and named in recipes as
`world:<file>`:

- `base_editor.pt`: the world's off-the-shelf editor. The pixel model pre-trained once with plain
  flow matching on discrete prompted edits (a neutral face to one expression at full intensity, on
  people of its own, never the demo's or the proving ground's): what Qwen-Image-Edit is to the real
  PixelSmile. It follows a prompt, and knows nothing of intensities between 0 and 1; PixelSmile
  fine-tunes it (`base_weights` in a recipe).
- `expression_encoder.pt`, `identity_encoder.pt`: the world's CLIP and ArcFace, frozen TorchScript
  encoders for L_SC and L_ID (`feature_encoder`, `identity_encoder`): small CNNs regressing the 14
  expression features, or the identity vector, of random renders.

`manifest.json` records each file's sha256 and size, the settings that made it and the command.
All three are made by this module from our own code (`python -m pixelsmile.world_models`, about
20 minutes on 2 CPU cores; resumable: the base trains through `pixelsmile.train.Trainer` with
checkpoints), so they are ours to ship.

Images are what the demo's models see: a face rendered at twice `size` and resized to `size`
bicubically, as the loader and the bench resize the world's 128 px photos to the recipe's 64 px.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from storage.blobs import file_digest

FOLDER = Path(__file__).parent / "world"
PREFIX = "world:"
BASE, EXPRESSION, IDENTITY = "base_editor.pt", "expression_encoder.pt", "identity_encoder.pt"


class WorldModelError(ValueError):
    """A `world:` name that is not a shipped model file: the message names it."""


def resolve(value: str) -> str:
    """A recipe's model path: `world:<file>` is the shipped file's absolute path; anything else is
    returned as given. WorldModelError when the named file is not shipped."""
    if not value.startswith(PREFIX):
        return value
    name = value[len(PREFIX) :]
    path = FOLDER / name
    if not name or "/" in name or not path.is_file():
        known = ", ".join(PREFIX + n for n in (BASE, EXPRESSION, IDENTITY))
        raise WorldModelError(f"{value} is not one of the world's models ({known})")
    return str(path)


def manifest() -> dict:
    path = FOLDER / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def sha256(name: str) -> str:
    """The recorded sha256 of a shipped model (what a recipe names as `base_sha256`)."""
    return manifest().get("files", {}).get(name, {}).get("sha256", "")


def recipe_models() -> dict[str, str]:
    """The recipe keys that fine-tune the shipped base with the shipped encoders (the default
    recipe's, and the proving ground's)."""
    return {"base_weights": PREFIX + BASE, "base_sha256": sha256(BASE), "feature_encoder": PREFIX + EXPRESSION,
            "identity_encoder": PREFIX + IDENTITY}  # fmt: skip


@dataclass(frozen=True)
class WorldModelSettings:
    size: int = 64
    seed: int = 1000  # people of its own: the demo's and proving ground's worlds use seeds 0 ...
    encoder_steps: int = 800
    encoder_batch: int = 32
    base_people: int = 300
    # Loose captions: this share of the base's training edits of a confusable pair name the pair's
    # other category (as web captions call a fearful face surprised), so the base confuses the
    # pairs the way off-the-shelf editors do (the paper's Qwen-Image-Edit: mSCR 0.26).
    caption_noise: float = 0.3
    base_steps: int = 2500
    base_batch: int = 8
    base_learning_rate: float = 1e-3
    channels: int = 64
    blocks: int = 4


def world_face(person, scores, size: int) -> Image.Image:
    """A face as the models see it: rendered at 2 x size, resized bicubically (the loader's way)."""
    from pixelsmile.synthetic import render

    return render(person, scores, 2 * size).resize((size, size), Image.Resampling.BICUBIC)


def train_encoder(target: str, settings: WorldModelSettings, progress: bool = True) -> nn.Module:
    """A small CNN regressing the 14 expression features (`target="expression"`) or the identity
    vector (`"identity"`) of random renders (none, one or two categories at random intensities)."""
    from pixelsmile.encoders import SmallEncoder
    from pixelsmile.synthetic import CATEGORIES, features_of, random_identity
    from storage.loader import image_to_tensor

    rng = np.random.default_rng(settings.seed + (1 if target == "expression" else 2))
    torch.manual_seed(settings.seed)
    out_dim = len(features_of(np.zeros(len(CATEGORIES)))) if target == "expression" else 10
    net = SmallEncoder(out_dim, width=32)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for step in range(1, settings.encoder_steps + 1):
        xs, ys = [], []
        for _ in range(settings.encoder_batch):
            person, s = random_identity(rng), np.zeros(len(CATEGORIES))
            s[rng.choice(len(CATEGORIES), size=rng.integers(0, 3), replace=False)] = rng.uniform(0, 1)
            xs.append(image_to_tensor(world_face(person, s, settings.size)))
            ys.append(features_of(s) if target == "expression" else person.vector())
        loss = nn.functional.mse_loss(net(torch.stack(xs)), torch.tensor(np.array(ys), dtype=torch.float32))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress and step % 100 == 0:
            print(f"{target} encoder: step {step}/{settings.encoder_steps}, loss {loss.item():.4f}", flush=True)
    return net.eval()


def train_base(work: Path, settings: WorldModelSettings, progress: bool = True):
    """The base editor: plain flow matching (no L_SC, no L_ID, targets as independent samples) on a
    world release of end-point edits, through the trainer every recipe uses. Resumes from `work`."""
    from pixelsmile.pixel import PixelBackbone
    from pixelsmile.synthetic import WORLD_PAIRS, world_release
    from pixelsmile.train import TrainConfig, Trainer
    from storage.layout import Layout
    from storage.releases.config import ReleaseConfig

    config = ReleaseConfig(val_fraction=0.0, bench_fraction=0.0, pairs=WORLD_PAIRS, extra_pairs=0,
                           shard_target_bytes=4_000_000)  # fmt: skip
    release = world_release(Layout.at(work / "world"), config, people=settings.base_people, faces_per_person=7,
                            size=2 * settings.size, seed=settings.seed, endpoints=True,
                            caption_noise=settings.caption_noise)  # fmt: skip
    train = TrainConfig(output_dir=str(work / "run"), release=str(release), resolution=settings.size,
                        batch_size=settings.base_batch, max_steps=settings.base_steps,
                        learning_rate=settings.base_learning_rate, lr_warmup_steps=100,
                        checkpointing_steps=250, checkpoints_total_limit=1, pixel_channels=settings.channels,
                        pixel_blocks=settings.blocks, symmetric=False, contrastive_weight=0.0, identity_weight=0.0,
                        seed=settings.seed, resume="latest", log_every=50)  # fmt: skip
    Trainer(config=train).train(progress=progress)
    model = PixelBackbone(settings.channels, settings.blocks, seed=settings.seed)
    model.load_weights(work / "run" / "final")
    return model


def build(folder: Path = FOLDER, settings: WorldModelSettings = WorldModelSettings(), work: Path | None = None,
          progress: bool = True) -> dict:  # fmt: skip
    """Make the three models into `folder` (a file already there is kept) and write the manifest
    last. `work` keeps the base's training release and checkpoints (a rerun resumes there)."""
    from pixelsmile.encoders import small_encoder

    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name, target in ((EXPRESSION, "expression"), (IDENTITY, "identity")):
        if not (folder / name).is_file():
            small_encoder(folder / name, module=train_encoder(target, settings, progress))
    if not (folder / BASE).is_file():
        with tempfile.TemporaryDirectory(prefix="ffe-world-base-") as tmp:
            model = train_base(work or Path(tmp), settings, progress)
            model.save_base(folder / ".base_editor.partial")
            (folder / ".base_editor.partial").replace(folder / BASE)
    files = {}
    for name in (BASE, EXPRESSION, IDENTITY):
        digest, size = file_digest(folder / name)
        files[name] = {"sha256": digest, "bytes": size}
    record = {"files": files, "settings": asdict(settings), "command": "python -m pixelsmile.world_models",
              "torch": torch.__version__, "build_s": round(time.perf_counter() - start, 1)}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FOLDER, help=f"where to write them (default {FOLDER})")
    ap.add_argument("--work", type=Path, default=None, help="keep the base's training here (a rerun resumes)")
    ap.add_argument("--again", action="store_true", help="remake every model, even those already there")
    args = ap.parse_args(argv)
    if args.again:
        for name in (BASE, EXPRESSION, IDENTITY):
            (args.out / name).unlink(missing_ok=True)
        if args.work:
            shutil.rmtree(args.work, ignore_errors=True)
    record = build(args.out, work=args.work)
    for name, f in record["files"].items():
        print(f"{args.out / name}: {f['bytes']} bytes, sha256 {f['sha256']}")


if __name__ == "__main__":
    main()
