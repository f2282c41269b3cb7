"""`pixelsmile`: edit faces with a PixelSmile model from a local folder.

pixelsmile edit --model DIR --image IMG --expression surprised --scale 0.4 [--lora PATH] --out OUT.png
pixelsmile edit ... --expression surprised --sweep 0:1.5:7 --out strip.png
pixelsmile edit ... --blend happy=0.6,surprised=0.4 --out OUT.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_ERROR = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelsmile", description="Continuous facial-expression editing.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("edit", help="edit a face to an expression at an intensity (or a sweep, or a blend)")
    p.add_argument("--model", type=Path, required=True, help="a local Qwen-Image-Edit folder (diffusers layout)")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--expression", help="one of the 12 categories")
    p.add_argument("--scale", type=float, default=1.0, help="intensity; above 1 extrapolates (default 1)")
    p.add_argument("--sweep", help="START:STOP:COUNT intensities, written as one strip PNG")
    p.add_argument("--blend", help="CATEGORY=INTENSITY[,...], e.g. happy=0.6,surprised=0.4")
    p.add_argument("--lora", type=Path, help="a LoRA file or folder: diffusers, the reference's, DiffSynth, "
                   "kohya-style or a peft adapter folder (docs/model.md)")  # fmt: skip
    p.add_argument("--lora-scale", type=float, default=1.0)
    p.add_argument("--allow-unmatched", action="store_true",
                   help="load a LoRA even if some of its modules are not in this model (they are skipped)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--subject", choices=["human", "anime"], default="human")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")

    p = sub.add_parser("train", help="train on a release or a train.jsonl (also under `accelerate launch`)")
    p.add_argument("--config", type=Path, required=True, help="YAML of TrainConfig fields (docs/model.md)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder (overrides the config)")
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_edit(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from pixelsmile.conditioning import parse_blend
    from pixelsmile.infer import EditSettings, edit, parse_sweep, strip, sweep
    from pixelsmile.lora import load_lora
    from pixelsmile.qwen import load_pipeline

    modes = [m for m in ("sweep", "blend") if getattr(args, m)]
    if len(modes) > 1:
        raise ValueError("give --sweep or --blend, not both")
    if not args.blend and not args.expression:
        raise ValueError("give --expression (with --scale or --sweep), or --blend")
    targets = parse_blend(args.blend) if args.blend else parse_blend(f"{args.expression}={args.scale}")
    scales = parse_sweep(args.sweep) if args.sweep else None
    try:
        image = Image.open(args.image).convert("RGB")
    except OSError as err:
        raise ValueError(f"cannot read image {args.image}: {err}") from None
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    pipe = load_pipeline(args.model, dtype=dtype, device=args.device)
    if args.lora is not None:
        import warnings

        with warnings.catch_warnings():  # said once, below, in the command's own words
            warnings.simplefilter("ignore")
            loaded = load_lora(pipe, args.lora, scale=args.lora_scale, allow_unmatched=args.allow_unmatched)
        print(loaded.describe(), file=sys.stderr if loaded.zero_update else sys.stdout)
    settings = EditSettings(steps=args.steps, seed=args.seed, size=args.size, subject=args.subject)
    if scales is not None:
        (category,) = targets
        result = strip(sweep(pipe, image, category, scales, settings), [f"{category} {s:g}" for s in scales], image)
    else:
        result = edit(pipe, image, targets, settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.save(args.out)
    print(f"wrote {args.out} ({result.width}x{result.height})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from pixelsmile.pipes import main_process, reporter
    from pixelsmile.train import TrainConfig, train, write_outcome

    config = TrainConfig.from_yaml(args.config)
    if args.resume is not None:
        config = replace(config, resume=args.resume)
    out = Path(config.output_dir)
    with reporter() as report:
        report.log(f"training {config.backbone} on {config.release or config.train_jsonl} to step {config.max_steps}")

        every = max(config.log_every, config.max_steps // 20, 1)  # some twenty lines in Dagster's log

        def log(step: int, terms: dict) -> None:
            if step % every and step != config.max_steps:
                return
            report.log(f"step {step}/{config.max_steps}: " + ", ".join(f"{k} {v:.4g}" for k, v in terms.items()))

        try:
            result = train(config, on_log=log)
        except Exception as err:
            if main_process():
                write_outcome(out, error=" ".join(str(err).split()))
            raise
        for skipped in result["skipped_checkpoints"]:
            report.log(f"skipped a damaged checkpoint: {skipped}")
        if main_process():
            outcome = write_outcome(out, result=result)
            report.materialized({k: v for k, v in outcome.items() if v is not None})
    if result["last"]:
        loss = f"last loss {result['last']['total']:.4f}"
    else:  # resumed from the final checkpoint: nothing left to train
        loss = f"nothing left to train (resumed from {result['resumed_from']})"
    print(f"trained to step {result['steps']}; weights {result['weights']}; {loss}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"edit": cmd_edit, "train": cmd_train}[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"pixelsmile {args.command}: error: {' '.join(str(err).split())[:600]}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
