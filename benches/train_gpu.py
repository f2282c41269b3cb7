"""The real-size cost of PixelSmile's extra losses, timed on a GPU (where a session is lent one):
the parts of `benches/real_size.py` in bf16 with random weights, each step forward and backward,
timed with CUDA synchronisation after warm-ups; with and without gradient checkpointing of the
transformer (real runs use it). Target as benches/train.py: PixelSmile's step at most 1.5x plain
flow matching's, per target.

    python benches/train_gpu.py      (writes benches/results/train_gpu.json)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benches.common import report  # noqa: E402
from benches.real_size import parts  # noqa: E402

TARGET = 1.5


def seconds(fn, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("benches/train_gpu.py needs a GPU")
    results = {}
    for checkpointing in (False, True):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        transformer_step, decode_step, clip_step = parts("cuda", torch.bfloat16, gradient_checkpointing=checkpointing)
        t, d, c = seconds(transformer_step), seconds(decode_step), seconds(clip_step)
        results["checkpointing" if checkpointing else "no_checkpointing"] = {
            "transformer_fwd_bwd_s": round(t, 4), "vae_decode_fwd_bwd_s": round(d, 4),
            "clip_vit_l14_fwd_bwd_s": round(c, 4), "ratio_per_target_vs_plain": round((t + d + 2 * c) / t, 3),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}  # fmt: skip
        print(results, flush=True)
        del transformer_step, decode_step, clip_step
    worst = max(r["ratio_per_target_vs_plain"] for r in results.values())
    report("train_gpu", False, {"bench": "train_gpu", "device": torch.cuda.get_device_name(),
                                "setup": "real-size parts, random weights, bf16, 512 px, 220 prompt tokens, batch 1",
                                **results, "target": TARGET, "meets_target": worst <= TARGET})  # fmt: skip


if __name__ == "__main__":
    main()
