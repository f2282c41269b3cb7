"""LoRA adapters in diffusers' LoRA format, so that `QwenImageEditPlusPipeline.load_lora_weights`
loads ours; and a reader for the layouts other trainers write (the reference's own, DiffSynth,
kohya-style, peft adapter folders), loaded at the scale they were trained with."""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
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


# --- reading LoRA files of any trainer ---------------------------------------------------------------
#
# Key layouts seen in the wild, each normalised to (module, A | B | alpha):
#   transformer.<m>.lora_A.weight / lora_B.weight        diffusers (ours; `transformer.` optional)
#   <m>.lora.down.weight / lora.up.weight                the reference (convert_state_dict_to_diffusers)
#   <m>.lora_A.default_0.weight                          DiffSynth-Studio (peft adapter names in the key)
#   transformer.<m>.lora_down.weight / lora_up.weight / alpha    kohya-style, dotted
#   base_model.model.<m>.lora_A.weight + adapter_config.json     a peft adapter folder
#   lora_transformer_<m with _ for .>.lora_down.weight / ...     kohya-style, flat
_PREFIXES = ("transformer.", "base_model.model.", "diffusion_model.", "model.")
DIFFUSERS, REFERENCE, KOHYA, NAMED = ("lora_A/lora_B", "lora.down/lora.up (the reference)",
                                     "lora_down/lora_up (kohya-style)", "named adapters (DiffSynth)")  # fmt: skip
_SUFFIXES = {  # key ending -> (which weight, layout)
    ".lora_A.weight": ("A", DIFFUSERS), ".lora_B.weight": ("B", DIFFUSERS),
    ".lora.down.weight": ("A", REFERENCE), ".lora.up.weight": ("B", REFERENCE),
    ".lora_down.weight": ("A", KOHYA), ".lora_up.weight": ("B", KOHYA), ".alpha": ("alpha", None),
}  # fmt: skip
# kohya's flat names (`lora_transformer_transformer_blocks_0_attn_to_q.lora_down.weight`): the
# module path with dots as underscores; resolved against the model's own names when loading.
# `lora_te*_` keys are a text encoder's: they match no transformer layer (unmatched, named).
_FLAT_PREFIXES, FLAT = ("lora_transformer_", "lora_unet_", "lora_te"), "flat:"
KOHYA_FLAT = "lora_down/lora_up, flat names (kohya)"
REFERENCE_SCALE = 128 / 64  # the reference trains rank 64, alpha 128 and writes neither into its file


@dataclass
class LoraFile:
    """A LoRA read from disk: per module its down (A, r x in) and up (B, out x r) weights, and the
    scale its trainer applied (alpha / r), with where that scale came from."""

    path: Path
    layout: str
    modules: dict[str, dict[str, torch.Tensor]]
    scales: dict[str, float]
    scale_source: str
    unknown_keys: list[str] = field(default_factory=list)

    @property
    def zero_update(self) -> bool:
        """Every module's update is zero (up-weights all zero, or alpha 0): the LoRA changes nothing."""
        return all(not torch.any(m["B"]) or self.scales[n] == 0 for n, m in self.modules.items())


@dataclass
class LoraLoad:
    """What `load_lora` did: which layout it read, how many modules it adapted and which it could not."""

    path: Path
    layout: str
    matched: list[str]
    unmatched: list[str]
    scale_source: str
    zero_update: bool
    ignored_keys: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = (f"LoRA {self.path.name} ({self.layout}): {len(self.matched)} module(s) adapted, scale from "
                f"{self.scale_source}")  # fmt: skip
        if self.unmatched:
            text += f"; {len(self.unmatched)} not in this model (e.g. {self.unmatched[0]})"
        if self.ignored_keys:
            text += f"; {len(self.ignored_keys)} key(s) of no LoRA layout ignored (e.g. {self.ignored_keys[0]})"
        if self.zero_update:
            text += "; its update is zero (up-weights all zero, or alpha 0): it edits nothing"
        return text


def _resolve(path: Path) -> tuple[Path, dict | None]:
    """The weights file of `path` (a file, a diffusers LoRA folder or a peft adapter folder) and the
    peft adapter config beside it, if any."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / "adapter_model.safetensors").is_file():
            return path / "adapter_model.safetensors", _adapter_config(path / "adapter_config.json")
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise LoraError(f"no .safetensors LoRA file in {path}")
        if (path / WEIGHTS_NAME).is_file():
            path = path / WEIGHTS_NAME
        elif len(files) == 1:
            path = files[0]
        else:
            raise LoraError(f"{path} holds {len(files)} .safetensors files ({', '.join(f.name for f in files[:4])}) "
                            f"and no {WEIGHTS_NAME}: name the file to load")  # fmt: skip
    if not path.is_file():
        raise LoraError(f"LoRA file {path} does not exist")
    adapter = path.name.startswith("adapter_model")
    return path, _adapter_config(path.parent / "adapter_config.json") if adapter else None


def _adapter_config(path: Path) -> dict | None:
    """peft's adapter_config.json beside the weights (None if there is none); LoraError naming it
    if it is not a JSON object."""
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LoraError(f"cannot read {path}: {err}") from None
    if not isinstance(config, dict):
        raise LoraError(f"{path} is a JSON {type(config).__name__}, not the object peft writes")
    return config


def _number(value, what: str) -> float:
    """A finite number from adapter metadata (JSON allows NaN; bools and text are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return float(value)


def _pattern_value(patterns: dict, module: str):
    """peft's rule for alpha_pattern / rank_pattern keys: a regex matching the end of the module
    name after a dot (`to_q`, `transformer_blocks\\.0\\..*`)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def read_lora(path: str | Path) -> LoraFile:
    """Read a LoRA file of any layout above; LoraError naming the file and the reason otherwise: not
    safetensors, no LoRA keys, two layouts in one file, a module given twice (under two prefixes),
    a module without its down or up weight, ranks of down and up that differ, weights that are not
    finite, alpha keys on some modules only, an alpha that is not one number, adapter metadata that
    is not JSON or a lora_alpha that is not a number."""
    from safetensors import SafetensorError, safe_open

    file, peft_config = _resolve(Path(path))
    try:
        with safe_open(str(file), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as err:
        detail = " ".join(str(err).split())[:200]
        raise LoraError(f"cannot load LoRA {file}: not a safetensors file ({detail})") from None
    modules: dict[str, dict[str, torch.Tensor]] = {}
    keys: dict[tuple[str, str], str] = {}
    unknown, layouts = [], set()
    for key, tensor in tensors.items():
        if (parsed := _parse_key(key)) is None:
            unknown.append(key)
            continue
        module, part, layout = parsed
        if (module, part) in keys:
            raise LoraError(f"LoRA {file}: module {module} is given twice ({keys[module, part]} and {key})")
        keys[module, part] = key
        modules.setdefault(module, {})[part] = tensor
        layouts.add(layout)
    layouts.discard(None)
    if not modules:
        raise LoraError(f"LoRA {file} holds no LoRA weights (keys such as {', '.join(list(tensors)[:3]) or 'none'}): "
                        "an unsupported key style?")  # fmt: skip
    if layouts == {REFERENCE, DIFFUSERS}:  # the reference renames attention layers only, the rest stay lora_A/B
        layouts = {REFERENCE}
    if len(layouts) > 1:
        raise LoraError(f"LoRA {file} mixes key layouts ({'; '.join(sorted(layouts))}): two files merged by hand?")
    _check_modules(file, modules)
    scales, source = _scales(file, modules, metadata, peft_config, layouts)
    return LoraFile(file, ", ".join(sorted(layouts)), modules, scales, source, unknown)


def _parse_key(key: str) -> tuple[str, str, str | None] | None:
    """A key -> (module without prefix, A | B | alpha, layout), or None for a key of no layout."""
    parts = key.split(".")
    if len(parts) > 3 and parts[-3] in ("lora_A", "lora_B") and parts[-1] == "weight":
        # peft adapter names inside the key: <m>.lora_A.<adapter>.weight (DiffSynth's default_0)
        module, part, layout = ".".join(parts[:-3]), parts[-3][-1], NAMED
    elif suffix := next((sfx for sfx in _SUFFIXES if key.endswith(sfx)), None):
        module, (part, layout) = key[: -len(suffix)], _SUFFIXES[suffix]
    else:
        return None
    if "." not in module and module.startswith(_FLAT_PREFIXES):  # kohya's flat names: dots as underscores
        module = FLAT + (module if module.startswith("lora_te") else module.split("_", 2)[2])
        layout = KOHYA_FLAT if layout else None
    for prefix in _PREFIXES:
        module = module.removeprefix(prefix)
    return module, part, layout


def _check_modules(file: Path, modules: dict[str, dict[str, torch.Tensor]]) -> None:
    if incomplete := sorted(m for m, w in modules.items() if "A" not in w or "B" not in w):
        missing = "down (A)" if "A" not in modules[incomplete[0]] else "up (B)"
        raise LoraError(f"LoRA {file}: module {incomplete[0]} has no {missing} weight ({len(incomplete)} such "
                        "module(s)): a damaged or partial file")  # fmt: skip
    for m, w in sorted(modules.items()):
        a, b = w["A"], w["B"]
        if not (a.is_floating_point() and b.is_floating_point()):
            raise LoraError(f"LoRA {file}: module {m}: weights of type {a.dtype} / {b.dtype}, not floating point")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraError(f"LoRA {file}: module {m}: down {tuple(a.shape)} and up {tuple(b.shape)} do not make a "
                            "LoRA (down is rank x in, up is out x rank, the same rank)")  # fmt: skip
        if "alpha" in w and w["alpha"].numel() != 1:
            raise LoraError(f"LoRA {file}: module {m}: alpha has shape {tuple(w['alpha'].shape)}, not one number")
        if bad := next((p for p, t in w.items() if not torch.isfinite(t.float()).all()), None):
            raise LoraError(f"LoRA {file}: module {m}: its {'alpha' if bad == 'alpha' else bad + ' weight'} "
                            "holds NaN or infinity (a diverged training run?)")  # fmt: skip
    with_alpha = [m for m, w in modules.items() if "alpha" in w]
    if with_alpha and len(with_alpha) != len(modules):
        without = sorted(set(modules) - set(with_alpha))
        raise LoraError(f"LoRA {file}: alpha keys for {len(with_alpha)} of {len(modules)} modules (none for e.g. "
                        f"{without[0]}): their scale cannot be known")  # fmt: skip


def _scales(file: Path, modules: dict, metadata: dict, peft_config: dict | None, layouts: set[str]) -> tuple[dict, str]:
    """alpha / r per module: from `.alpha` keys, diffusers' adapter metadata or peft's adapter config;
    else the reference's 128 / 64 for its own layout, else 1 (diffusers' default: alpha = rank)."""
    if any("alpha" in w for w in modules.values()):
        return {m: float(w["alpha"]) / w["A"].shape[0] for m, w in modules.items()}, "the file's alpha keys"
    config, where = None, ""
    if "lora_adapter_metadata" in metadata:
        try:
            raw = json.loads(metadata["lora_adapter_metadata"])
            config = {k.removeprefix("transformer."): v for k, v in raw.items()}
        except (ValueError, AttributeError) as err:
            raise LoraError(f"LoRA {file}: its lora_adapter_metadata is not a JSON object ({err})") from None
        where = "the file's adapter metadata"
    elif peft_config is not None:
        config, where = peft_config, "adapter_config.json"
    if config is not None and config.get("lora_alpha") is not None:
        try:
            alpha = _number(config["lora_alpha"], "lora_alpha")
            patterns, ranks = config.get("alpha_pattern") or {}, config.get("rank_pattern") or {}
            if not isinstance(patterns, dict) or not isinstance(ranks, dict):
                raise ValueError("alpha_pattern and rank_pattern must be JSON objects")
            scales = {}
            for m, w in modules.items():
                a = _pattern_value(patterns, m)
                a = alpha if a is None else _number(a, f"alpha_pattern for {m}")
                rank = w["A"].shape[0]
                r = _pattern_value(ranks, m)
                if r is not None and _number(r, f"rank_pattern for {m}") != rank:
                    raise ValueError(f"rank_pattern gives {m} rank {r}, its weights have rank {rank}")
                scales[m] = a / rank
        except (TypeError, ValueError, re.error) as err:
            raise LoraError(f"LoRA {file}: {where}: {err}") from None
        return scales, where
    if REFERENCE in layouts:
        return dict.fromkeys(modules, REFERENCE_SCALE), "the reference's training (alpha 128, rank 64)"
    return dict.fromkeys(modules, 1.0), "none in the file: alpha = rank (diffusers' default)"


def load_lora(pipe, path: str | Path, scale: float = 1.0, adapter_name: str = ADAPTER, *,
              allow_unmatched: bool = False) -> LoraLoad:  # fmt: skip
    """Load a LoRA file or folder of any layout `read_lora` knows into `pipe`, each module at the
    scale it was trained with (folded into its up-weights), the adapter at `scale`.

    Every module of the file must exist in the transformer: otherwise LoraError names them (a file
    for another model, or a partial one), unless `allow_unmatched`. A LoRA whose up-weights are all
    zero (or whose alpha is 0) is loaded with a warning: it edits nothing. Returns what was loaded."""
    lora = read_lora(path)
    layers = dict(pipe.transformer.named_modules())
    names = set(layers)
    if lora.layout == KOHYA_FLAT:  # flat names -> the model's dotted ones
        flat = {FLAT + n.replace(".", "_"): n for n in names}
        lora.modules = {flat.get(m, m.removeprefix(FLAT)): w for m, w in lora.modules.items()}
        lora.scales = {flat.get(m, m.removeprefix(FLAT)): v for m, v in lora.scales.items()}
    matched = sorted(m for m in lora.modules if m in names)
    unmatched = sorted(m for m in lora.modules if m not in names)
    if not matched:
        raise LoraError(f"LoRA {lora.path} ({lora.layout}) matches no layer of this transformer (e.g. "
                        f"{unmatched[0]}): made for another model?")  # fmt: skip
    if unmatched and not allow_unmatched:
        raise LoraError(f"LoRA {lora.path}: {len(unmatched)} of {len(lora.modules)} module(s) are not in this "
                        f"transformer (e.g. {unmatched[0]}); load anyway with allow_unmatched")  # fmt: skip
    state = {}
    for m in matched:
        w, layer = lora.modules[m], layers[m]
        want = (getattr(layer, "in_features", w["A"].shape[1]), getattr(layer, "out_features", w["B"].shape[0]))
        if (w["A"].shape[1], w["B"].shape[0]) != want:
            raise LoraError(f"LoRA {lora.path}: module {m} is {w['A'].shape[1]} -> {w['B'].shape[0]}, the model's "
                            f"layer {want[0]} -> {want[1]}: made for another model size?")  # fmt: skip
        state[f"transformer.{m}.lora_A.weight"] = w["A"]
        up = w["B"] * lora.scales[m]  # loaded with alpha = rank
        if not torch.isfinite(up).all():
            raise LoraError(f"LoRA {lora.path}: module {m}: its up-weights times its scale {lora.scales[m]:g} are "
                            f"not finite in {up.dtype} (an alpha too large for the weights' precision)")  # fmt: skip
        state[f"transformer.{m}.lora_B.weight"] = up
    try:
        pipe.load_lora_weights(state, adapter_name=adapter_name)
    except Exception as err:  # peft and diffusers raise several types for a file that does not fit
        raise LoraError(f"cannot load LoRA {lora.path}: {' '.join(str(err).split())[:300]}") from None
    adapted = {n.removesuffix(f".lora_A.{adapter_name}") for n, _ in pipe.transformer.named_modules()
               if n.endswith(f"lora_A.{adapter_name}")}  # fmt: skip
    if missed := sorted(set(matched) - adapted):
        raise LoraError(f"LoRA {lora.path}: {len(missed)} module(s) were not adapted by the loader (e.g. {missed[0]})")
    pipe.set_adapters([adapter_name], adapter_weights=[scale])
    result = LoraLoad(lora.path, lora.layout, matched, unmatched, lora.scale_source, lora.zero_update,
                      lora.unknown_keys)
    if result.zero_update:
        warnings.warn(result.describe(), stacklevel=2)
    return result
