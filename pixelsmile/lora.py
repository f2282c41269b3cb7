"""LoRA adapters in diffusers' LoRA format, so that `QwenImageEditPlusPipeline.load_lora_weights`
loads ours and ours loads the published PixelSmile LoRA the same way."""

from __future__ import annotations

from pathlib import Path

import torch

from pixelsmile.qwen import LORA_TARGETS

ADAPTER = "pixelsmile"
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default file name


class LoraError(ValueError):
    """A LoRA file that is missing, unreadable or made for another model: the message names it."""


def add_lora(transformer: torch.nn.Module, rank: int = 64, alpha: int = 128, targets=LORA_TARGETS,
             dropout: float = 0.0) -> list[torch.nn.Parameter]:  # fmt: skip
    """Add a trainable LoRA (the reference's rank 64, alpha 128 on `targets`); the base stays frozen.
    Returns the trainable parameters."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                        target_modules=list(targets))  # fmt: skip
    transformer.add_adapter(config, adapter_name=ADAPTER)
    return [p for p in transformer.parameters() if p.requires_grad]


def save_lora(transformer: torch.nn.Module, folder: str | Path) -> Path:
    """Write the adapter as diffusers writes a LoRA: `<folder>/pytorch_lora_weights.safetensors`."""
    from diffusers import QwenImageEditPlusPipeline
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    layers = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
    # The adapter's config (rank, alpha, targets) goes into the file's metadata, so that a loader
    # scales the LoRA as it was trained (without it, diffusers assumes alpha = rank).
    metadata = transformer.peft_config[ADAPTER].to_dict()
    QwenImageEditPlusPipeline.save_lora_weights(folder, transformer_lora_layers=layers, weight_name=WEIGHTS_NAME,
                                                transformer_lora_adapter_metadata=metadata)  # fmt: skip
    return folder / WEIGHTS_NAME


def load_lora(pipe, path: str | Path, scale: float = 1.0, adapter_name: str = ADAPTER) -> None:
    """Load a LoRA file (or a folder holding one) into `pipe`, as the reference does."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise LoraError(f"no .safetensors LoRA file in {path}")
        path = path / WEIGHTS_NAME if (path / WEIGHTS_NAME).is_file() else files[0]
    if not path.is_file():
        raise LoraError(f"LoRA file {path} does not exist")
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
    except Exception as err:  # safetensors, peft and diffusers raise several types for a wrong file
        raise LoraError(f"cannot load LoRA {path}: {' '.join(str(err).split())[:300]}") from None
    matched = [n for n, _ in pipe.transformer.named_modules() if n.endswith(f"lora_A.{adapter_name}")]
    if not matched:
        raise LoraError(f"LoRA {path} matches no layer of this transformer: made for another model?")
    pipe.set_adapters([adapter_name], adapter_weights=[scale])
