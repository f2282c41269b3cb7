"""Training step cost: PixelSmile's step against a plain diffusers-style flow-matching LoRA step on the
same tiny Qwen-Image-Edit and the same batch, in the same run; and inference time per edit.

Plain step (what diffusers' Qwen-Image LoRA training does per image): VAE-encode the target and the
source, noise the target, one transformer forward on [target, source] tokens with the prompt's
embeddings, MSE to the velocity, backward, AdamW step. PixelSmile's step does that for both targets
of a triplet, with interpolated conditioning, plus L_SC (decode both predictions, image features) and
L_ID (face embeddings). Compared per target image trained: target at most 1.5x the plain step.

    python benches/train.py [--quick] [--steps N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benches.common import report  # noqa: E402
from pixelsmile.encoders import small_encoder  # noqa: E402
from pixelsmile.losses import flow_matching, noisy, sample_sigmas  # noqa: E402
from pixelsmile.qwen import build_tiny, load_pipeline  # noqa: E402
from pixelsmile.synthetic import world_release  # noqa: E402
from pixelsmile.train import TrainConfig, Trainer  # noqa: E402

TARGET = 1.5


def plain_step(trainer: Trainer, batch: dict) -> None:
    """One flow-matching LoRA step on target a with its own prompt (no interpolation, no extra losses)."""
    bb, dev = trainer.backbone, trainer.accelerator.device
    source, target = batch["source"].to(dev), batch["target_a"].to(dev)
    src_lat, x0 = bb.encode_images(source), bb.encode_images(target)
    cond = bb.encode_prompts(list(batch["category_a"]), source)
    sigma = sample_sigmas(x0.shape[0], trainer.noise, device=dev)
    x_t, v = noisy(x0, torch.randn(x0.shape, generator=trainer.noise).to(dev), sigma)
    loss = flow_matching(bb.velocity(x_t, sigma, src_lat, cond), v)
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def real_size_flops(side: int = 512, text_tokens: int = 220) -> dict:
    """FLOPs of one training sample at the real size, counted on the meta device (no weights, no
    GPU): the parts of `benches/real_size.py`. Gradient checkpointing (one more transformer
    forward) is left out of both, which makes the ratio larger than in a real run."""
    from torch.utils.flop_counter import FlopCounterMode

    from benches.real_size import parts

    transformer_step, decode_step, clip_step = parts("meta", torch.float32, side, text_tokens)

    def tflops(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e12

    t, d, c = tflops(transformer_step), tflops(decode_step), tflops(clip_step)
    ours = t + d + 2 * c  # per target: its transformer step, its decode, its two encoders
    return {"side": side, "text_tokens": text_tokens, "transformer_fwd_bwd_tflops": round(t, 2),
            "vae_decode_fwd_bwd_tflops": round(d, 2), "clip_vit_l14_fwd_bwd_tflops": round(c, 3),
            "ratio_per_target_vs_plain": round(ours / t, 3)}  # fmt: skip


# Two tiny models: the tests' (its VAE decode costs ~4x its 2-layer transformer), and one where the
# transformer dominates as in the real model (decode ~0.2x a transformer step here; 0.075x at real
# size, `real_size_flops`): the wall-clock ratio measured there is still an upper bound for a real run.
TINY_MODELS = {"tests": {}, "transformer-heavy": {"layers": 8, "heads": 8, "vae_dim": 8}}


def release(root: Path) -> str:
    from storage.layout import Layout

    return str(world_release(Layout.at(root / "w"), people=12, faces_per_person=7, size=64))


def cost_split(trainer: Trainer, batch: dict, repeats: int = 10) -> float:
    """Seconds of one VAE decode fwd+bwd over one transformer fwd+bwd (the real model: 0.075)."""
    bb = trainer.backbone
    source, target = batch["source"], batch["target_a"]
    src_lat, lat = bb.encode_images(source), bb.encode_images(target)
    cond = bb.encode_prompts(list(batch["category_a"]), source)
    sigma = torch.full((lat.shape[0],), 0.5)

    def decode():
        bb.decode(lat.clone().requires_grad_(True)).sum().backward()

    def transformer():
        bb.velocity(lat.clone().requires_grad_(True), sigma, src_lat, cond).sum().backward()

    def seconds(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    split = round(seconds(decode) / seconds(transformer), 3)
    trainer.optimizer.zero_grad(set_to_none=True)
    return split


def measure(root: Path, name: str, data: str, steps: int) -> dict:
    """Median seconds of our step and of the plain step, alternated on one batch, per target trained."""
    model = build_tiny(root / name, **TINY_MODELS[name])
    config = TrainConfig(output_dir=str(root / f"run-{name}"), release=data, backbone="qwen", model_path=str(model),
                         resolution=64, batch_size=2, max_steps=10**6, lr_warmup_steps=0, lora_rank=4, lora_alpha=8,
                         feature_encoder=str(small_encoder(root / "f.pt", seed=1)),
                         identity_encoder=str(small_encoder(root / "i.pt", seed=2)))  # fmt: skip
    trainer = Trainer(config)
    batch = next(trainer.batches())
    ours, plain = [], []
    for _ in range(2):  # warm-up
        trainer.train_step(batch)
        plain_step(trainer, batch)
    for _ in range(steps):  # alternate, so both see the same machine state
        t0 = time.perf_counter()
        trainer.train_step(batch)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain_step(trainer, batch)
        plain.append(time.perf_counter() - t0)
    split = cost_split(trainer, batch)
    per_target_ours = statistics.median(ours) / 2  # a triplet trains two targets
    per_target_plain = statistics.median(plain)
    return {"model": model, "batch": batch, "shape": TINY_MODELS[name] or "build_tiny defaults",
            "ours_s_per_step": round(statistics.median(ours), 4), "ours_s_per_target": round(per_target_ours, 4),
            "plain_s_per_target": round(per_target_plain, 4),
            "decode_vs_transformer": split,
            "ratio_per_target_vs_plain": round(per_target_ours / per_target_plain, 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    steps = args.steps or (4 if args.quick else 20)
    with tempfile.TemporaryDirectory(prefix="ffe-bench-train-") as tmp:
        root = Path(tmp)
        data = release(root)
        tiny = {name: measure(root, name, data, steps) for name in TINY_MODELS}

        from pixelsmile.infer import EditSettings, edit
        from storage.loader import tensor_to_image

        pipe = load_pipeline(tiny["tests"]["model"])
        img = tensor_to_image(tiny["tests"]["batch"]["source"][0])
        settings = EditSettings(steps=20, size=64, condition_area=56 * 56)
        edit(pipe, img, {"happy": 0.5}, settings)
        t0 = time.perf_counter()
        for a in (0.25, 0.5, 0.75):
            edit(pipe, img, {"happy": a}, settings)
        per_edit = (time.perf_counter() - t0) / 3
    for m in tiny.values():
        del m["model"], m["batch"]
    real = real_size_flops()
    proportioned = tiny["transformer-heavy"]["ratio_per_target_vs_plain"]
    report("train", args.quick, {
        "bench": "train",
        "setup": "tiny random Qwen-Image-Edit (pixelsmile.qwen.build_tiny), 64 px, batch 2, LoRA rank 4, CPU",
        "steps": steps,
        "tiny": tiny,
        "real_size_flops": real,
        "target": TARGET,
        "meets_target": proportioned <= TARGET and real["ratio_per_target_vs_plain"] <= TARGET,
        "inference_s_per_edit_20_steps": round(per_edit, 4),
    })  # fmt: skip


if __name__ == "__main__":
    main()
