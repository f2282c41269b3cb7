"""Run by tests/test_training.py under `accelerate launch --num_processes 2 --cpu`: trains a few steps
and writes this process's trainable weights, so the test can check that DDP kept the ranks equal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pixelsmile.train import TrainConfig, Trainer, triplet_batches


def main() -> None:
    config = TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
    trainer = Trainer(config)
    result = trainer.train(progress=False)
    rank = trainer.accelerator.process_index
    state = {n: p.detach().clone() for n, p in trainer.backbone.named_parameters() if p.requires_grad}
    torch.save(state, Path(config.output_dir) / f"rank{rank}.pt")
    first = next(triplet_batches(config, epoch=0))  # what this rank trained on first
    (Path(config.output_dir) / f"rank{rank}.json").write_text(json.dumps({
        "world": trainer.accelerator.num_processes, "steps": result["steps"],
        "first_batch": [float(first["source"].sum()), list(first["category_a"])],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
