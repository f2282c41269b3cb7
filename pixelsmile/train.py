"""PixelSmile training: symmetric joint training on triplets, with intensity supervision through
textual latent interpolation, a contrastive loss and an identity loss.

    pixelsmile train --config train.yaml          (or: accelerate launch -m pixelsmile.cli train ...)

Per batch of triplets (source s, targets a and b of one confusable pair, each with its own score):
both targets are noised with the same noise to the same level (as the reference), the model predicts
each one's velocity from the source and its conditioning e(alpha) = e_neutral + alpha (e_target -
e_neutral); the loss is
1/2 (FM_a + FM_b) + w_sc L_SC + w_id L_ID (pixelsmile/losses.py). `symmetric: false` trains the plain
baseline instead (the ablation): the same two targets as two independent (source, target) samples,
each with its own noise and level, flow matching only, no L_SC, no L_ID.

Checkpoints are `checkpoint-<step>/` folders (accelerate's state: optimizer, scheduler, RNG; the
trainable weights alone, not the frozen base; the step and each process's noise generator), written
under a temporary name and renamed when whole, and `resume: latest` continues from the newest whole
one (a damaged one is skipped, named on stderr and in outcome.json) to the same losses an uninterrupted run gives (fixed
seeds; the data stream is replayed to its position).
A NaN or infinite loss stops the run with an error naming the step; the last checkpoint is kept.

One trainer at a time writes an output folder (an OS lock, `.trainer.lock`; a second one waits up
to `LOCK_WAIT_S` naming the holder, then stops). A trainer launched for a build
(`PIXELSMILE_PARENT`, set by the `pixelsmile_lora` asset) stops between two steps when that build's
process has gone (killed with SIGKILL, say), instead of training on as an orphan beside the next
build's trainer.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from pixelsmile.conditioning import Embedding, interpolate
from pixelsmile.losses import (
    LossWeights,
    flow_matching,
    identity,
    info_nce_pair,
    noisy,
    predicted_x0,
    sample_sigmas,
    symmetric_loss,
)

TRAINABLE = "trainable.safetensors"  # in each checkpoint-<step>/
OUTCOME = "outcome.json"  # in output_dir: how the last `pixelsmile train` ended (written by the CLI)
PARENT_ENV = "PIXELSMILE_PARENT"  # "<pid>:<create time>" of the process the trainer lives for
LOCK_WAIT_S = 120.0  # an orphan of a killed build stops within a step; then the lock is free


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, a bad config): the message says why and what was kept."""


class Backbone(Protocol):
    name: str

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor: ...
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...
    def encode_prompts(self, expressions: list[str], sources: torch.Tensor) -> Embedding: ...
    def velocity(self, x_t, sigma, source_latents, cond: Embedding) -> torch.Tensor: ...
    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...
    def save_weights(self, folder: Path) -> Path: ...


@dataclass
class TrainConfig:
    output_dir: str
    release: str = ""  # a release folder (its train shards); or:
    train_jsonl: str = ""  # the reference's train.jsonl (image paths relative to its folder)
    backbone: str = "pixel"  # pixel | qwen
    model_path: str = ""  # qwen: the local Qwen-Image-Edit folder
    base_weights: str = ""  # pixel: a base editor to fine-tune (PixelBackbone.save_base; world:base_editor.pt)
    base_sha256: str = ""  # the base's sha256, checked when it loads ("" = not checked)
    feature_encoder: str = ""  # L_SC features: a CLIP folder or a TorchScript file ("" disables L_SC)
    identity_encoder: str = ""  # L_ID embeddings: a TorchScript file ("" disables L_ID)
    resolution: int = 512
    batch_size: int = 4
    max_steps: int = 1000
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 500
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | bf16
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 3
    resume: str = ""  # "" | latest | a checkpoint folder
    seed: int = 0
    symmetric: bool = True
    contrastive_weight: float = 1.0
    identity_weight: float = 0.1
    tau: float = 0.07
    lora_rank: int = 64
    lora_alpha: int = 128
    pixel_channels: int = 64
    pixel_blocks: int = 4
    num_workers: int = 0
    log_every: int = 10
    extra: dict[str, Any] = field(default_factory=dict)  # backbone-specific settings

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from a mapping (a YAML's), every value checked against its field's type and range
        (`_LIMITS`); TrainingError naming the key otherwise (a step count of "abc" or -5 would
        otherwise fail deep in the trainer, or train nothing and pass for a model)."""
        if not isinstance(d, dict):
            raise TrainingError(f"a training config is a mapping of TrainConfig fields, not {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - known, key=str):
            close = {u: difflib.get_close_matches(str(u), sorted(known), n=1) for u in unknown}
            hints = "; ".join(f"{u} (did you mean {c[0]}?)" if c else str(u) for u, c in close.items())
            raise TrainingError(f"unknown training config key(s): {hints}")
        types = typing.get_type_hints(cls)
        for key, value in d.items():
            _check_value(key, value, types[key])
        config = cls(**d)
        if not config.output_dir:
            raise TrainingError("output_dir is required")
        if bool(config.release) == bool(config.train_jsonl):
            raise TrainingError("give exactly one of release (a release folder) and train_jsonl")
        # The pixel net halves the image once; Qwen-Image's VAE shrinks by 8 and packs 2x2 latents.
        if config.base_weights and config.backbone != "pixel":
            raise TrainingError("base_weights is the pixel backbone's base editor; qwen's base is model_path")
        multiple = {"pixel": 2, "qwen": 16}[config.backbone]
        if config.resolution % multiple:
            raise TrainingError(f"resolution must be a multiple of {multiple} for the {config.backbone} backbone, "
                                f"not {config.resolution}")  # fmt: skip
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """TrainingError naming the file (and the key) when it cannot be read or a value is wrong."""
        from storage.yamlfile import YamlFileError, read_yaml

        try:
            data = read_yaml(path, "training config") or {}
        except YamlFileError as err:
            raise TrainingError(str(err)) from None
        if not isinstance(data, dict):
            raise TrainingError(f"training config {path} must be a mapping of TrainConfig fields")
        try:
            return cls.from_dict(data)
        except TrainingError as err:
            raise TrainingError(f"training config {path}: {err}") from None


# What each field may hold beyond its type: (lowest, highest) bounds, or the allowed values.
_LIMITS: dict[str, tuple | frozenset] = {
    "backbone": frozenset({"pixel", "qwen"}),
    "mixed_precision": frozenset({"no", "bf16", "fp16"}),
    "resolution": (8, 4096), "batch_size": (1, None), "max_steps": (1, None), "learning_rate": (0.0, None),
    "lr_warmup_steps": (0, None), "max_grad_norm": (0, None), "checkpointing_steps": (1, None),
    "checkpoints_total_limit": (0, None), "seed": (0, None), "contrastive_weight": (0, None),
    "identity_weight": (0, None), "tau": (0.0, None), "lora_rank": (1, None), "lora_alpha": (0, None),
    "pixel_channels": (1, None), "pixel_blocks": (1, None), "num_workers": (0, None), "log_every": (1, None),
}  # fmt: skip


def _check_value(key: str, value: Any, kind: Any) -> None:
    """TrainingError naming `key` when `value` is not of its field's type or outside `_LIMITS`.
    Floats take ints (YAML writes 1 for 1.0); no field takes a bool for a number."""
    base = {int: int, float: (int, float), bool: bool, str: str}.get(kind)
    if base is None:  # dict fields (extra): a mapping
        if not isinstance(value, dict):
            raise TrainingError(f"{key} must be a mapping, not {value!r}")
        return
    if not isinstance(value, base) or (kind is not bool and isinstance(value, bool)):
        wanted = {int: "an integer", float: "a number", bool: "true or false", str: "text"}[kind]
        raise TrainingError(f"{key} must be {wanted}, not {value!r}")
    if kind is float and not math.isfinite(value):
        raise TrainingError(f"{key} must be a finite number, not {value!r}")
    limit = _LIMITS.get(key)
    if key == "lr_scheduler":  # the names diffusers' get_scheduler knows
        from diffusers.optimization import SchedulerType

        limit = frozenset(t.value for t in SchedulerType)
    if isinstance(limit, frozenset):
        if value not in limit:
            raise TrainingError(f"{key} must be one of {', '.join(sorted(limit))}, not {value!r}")
    elif limit is not None:
        low, high = limit
        strict = isinstance(low, float)  # a float bound is exclusive: a learning rate of 0 trains nothing
        if (value <= low if strict else value < low) or (high is not None and value > high):
            bound = f"above {low:g}" if strict else f"at least {low}" + (f" and at most {high}" if high else "")
            raise TrainingError(f"{key} must be {bound}, not {value!r}")


def build_backbone(config: TrainConfig) -> Backbone:
    if config.backbone == "pixel":
        from pixelsmile.pixel import PixelBackbone
        from pixelsmile.world_models import resolve

        if not config.base_weights:
            return PixelBackbone(config.pixel_channels, config.pixel_blocks, seed=config.seed)
        try:
            base = PixelBackbone.from_base(resolve(config.base_weights), config.base_sha256)
        except ValueError as err:  # missing, cut, another file, or an unknown world: name
            raise TrainingError(str(err)) from None
        if (base.channels, base.blocks) != (config.pixel_channels, config.pixel_blocks):
            raise TrainingError(f"base_weights {config.base_weights} is a net of {base.channels} channels x "
                                f"{base.blocks} blocks: set pixel_channels: {base.channels} and pixel_blocks: "
                                f"{base.blocks} (or leave both out), not {config.pixel_channels} x "
                                f"{config.pixel_blocks}")  # fmt: skip
        return base
    from pixelsmile.qwen_backbone import QwenBackbone

    try:
        return QwenBackbone(config)
    except ValueError as err:  # a missing or wrong model folder
        raise TrainingError(str(err)) from None


class TrainingObjective(torch.nn.Module):
    """The per-batch losses as one module's forward, so `accelerate` can wrap it (DDP under several
    processes). The frozen encoders are held outside the module's state: checkpoints carry only
    what trains."""

    def __init__(self, backbone, features, faces, weights: LossWeights, symmetric: bool):
        super().__init__()
        self.backbone = backbone
        self.frozen = {"features": features, "faces": faces}
        self.weights = weights
        self.symmetric = symmetric

    @property
    def device(self) -> torch.device:
        return next(iter(self.backbone.trainable_parameters())).device

    def forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        bb, dev = self.backbone, self.device
        source = batch["source"].to(dev)
        src_lat = bb.encode_images(source)
        neutral = bb.encode_prompts(["neutral"] * source.shape[0], source)
        sigma = sample_sigmas(source.shape[0], generator, device=dev)
        out = {}
        x0_preds, targets = [], []
        for side in ("a", "b"):
            target = batch[f"target_{side}"].to(dev)
            x0 = bb.encode_images(target)
            # Symmetric: one noise and sigma for both targets, as the reference (only the conditioning
            # differs). Plain: two independent (source, target) samples, so it sees the same images.
            if side == "b" and not self.symmetric:
                sigma = sample_sigmas(source.shape[0], generator, device=dev)
            if side == "a" or not self.symmetric:
                noise = torch.randn(x0.shape, generator=generator).to(dev, x0.dtype)
            x_t, v = noisy(x0, noise, sigma)
            cond = interpolate(neutral, bb.encode_prompts(list(batch[f"category_{side}"]), source),
                               batch[f"alpha_{side}"].to(dev))  # fmt: skip
            v_pred = bb.velocity(x_t, sigma, src_lat, cond)
            out[f"fm_{side}"] = flow_matching(v_pred, v)
            x0_preds.append(predicted_x0(x_t, v_pred, sigma))
            targets.append(target)
        zero = torch.zeros((), device=dev)
        if not self.symmetric:
            out["total"] = 0.5 * (out["fm_a"] + out["fm_b"])
            out["contrastive"] = out["identity"] = zero
            return out
        features, faces = self.frozen["features"], self.frozen["faces"]
        use_sc = features is not None and self.weights.contrastive
        use_id = faces is not None and self.weights.identity
        if use_sc or use_id:  # both predictions through the decoder in one call
            pred_a, pred_b = bb.decode(torch.cat(x0_preds)).chunk(2)
        out["contrastive"] = out["identity"] = zero
        if use_sc:
            with torch.no_grad():
                fa, fb = features(targets[0]), features(targets[1])
            pa, pb = features(torch.cat([pred_a, pred_b])).chunk(2)
            out["contrastive"] = info_nce_pair(pa, pb, fa, fb, self.weights.tau)
        if use_id:
            with torch.no_grad():
                ref = faces(source)
            emb_a, emb_b = faces(torch.cat([pred_a, pred_b])).chunk(2)
            out["identity"] = 0.5 * (identity(emb_a, ref) + identity(emb_b, ref))
        terms = symmetric_loss(out["fm_a"], out["fm_b"], out["contrastive"], out["identity"], self.weights)
        out["total"] = terms.total
        return out


def triplet_batches(config: TrainConfig, epoch: int) -> Iterator[dict]:
    """Batches of one epoch, in a fixed order for a given (seed, epoch)."""
    if config.release:
        from storage.loader import TripletStream

        ds = TripletStream.from_release(config.release, resolution=config.resolution, seed=config.seed)
        ds.set_epoch(epoch)
    else:
        from pixelsmile.reference import JsonlTriplets

        ds = JsonlTriplets(config.train_jsonl, resolution=config.resolution, seed=config.seed, epoch=epoch)
    loader = torch.utils.data.DataLoader(ds, batch_size=config.batch_size, num_workers=config.num_workers,
                                         drop_last=True)  # fmt: skip
    yield from loader


def parent_token(pid: int | None = None) -> str:
    """The `PARENT_ENV` value naming process `pid` (default: this one) by pid and start time."""
    import psutil

    proc = psutil.Process(pid or os.getpid())
    return f"{proc.pid}:{proc.create_time():.3f}"


def parent_gone(token: str) -> bool:
    """Whether the process named by a `parent_token` has ended (a later process given the same pid
    does not count as it)."""
    import psutil

    pid, started = token.split(":")
    try:
        proc = psutil.Process(int(pid))
        return proc.status() == psutil.STATUS_ZOMBIE or abs(proc.create_time() - float(started)) > 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


class _StopOnSignal:
    """SIGTERM (a scheduler, `kill`, a stopped container) or SIGINT (Ctrl-C) asks the loop to stop
    between two steps with one clear error, instead of dying mid-step with a traceback per process;
    a second one stops at once. Only where handlers can be set (the main thread)."""

    def __init__(self) -> None:
        self.asked: str | None = None
        self._before: dict = {}

    def __enter__(self) -> _StopOnSignal:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._before = {s: signal.signal(s, self._ask) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _ask(self, signum, frame) -> None:
        import signal

        if self.asked:
            raise KeyboardInterrupt
        self.asked = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        import signal

        for s, handler in self._before.items():
            signal.signal(s, handler)


def _free_name(path: Path) -> Path:
    """`path`, or `path.1`, `path.2` ... : the first that does not exist."""
    n, free = 0, path
    while free.exists() or free.is_symlink():
        n += 1
        free = path.with_name(f"{path.name}.{n}")
    return free


def checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


class Trainer:
    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.out = Path(config.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        # cpu=True where there is no GPU: several processes then train with gloo (accelerate only
        # picks its multi-CPU mode when told to be on the CPU).
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, project_dir=str(self.out),
                                       cpu=not torch.cuda.is_available())  # fmt: skip
        set_seed(config.seed)
        self.backbone = build_backbone(config)
        weights = LossWeights(config.contrastive_weight, config.identity_weight, config.tau)
        objective = TrainingObjective(self.backbone, self._encoder(config.feature_encoder),
                                      self._encoder(config.identity_encoder), weights, config.symmetric)  # fmt: skip
        params = self.backbone.trainable_parameters()
        if not params:
            raise TrainingError(f"the {config.backbone} backbone has nothing to train")
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
        from diffusers.optimization import get_scheduler

        self.scheduler = get_scheduler(config.lr_scheduler, self.optimizer, num_warmup_steps=config.lr_warmup_steps,
                                       num_training_steps=config.max_steps)  # fmt: skip
        self.accelerator.register_save_state_pre_hook(self._save_trainable)
        self.accelerator.register_load_state_pre_hook(self._load_trainable)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(objective, self.optimizer, self.scheduler)
        # Each process draws its own noise (its own data too: the loader splits shards by node).
        self.noise = torch.Generator().manual_seed(config.seed + self.accelerator.process_index)
        self.step = 0
        self.log_path = self.out / "losses.jsonl"

    # A checkpoint keeps what trains (the LoRA, or the small net), not the frozen base: a full
    # Qwen-Image transformer would be 40 GB per checkpoint. Hooks as in diffusers' LoRA examples.
    def _save_trainable(self, models, weights, output_dir) -> None:
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:
            for model in models:
                state = {n: p.detach().cpu().contiguous() for n, p in self.accelerator.unwrap_model(model)
                         .named_parameters() if p.requires_grad}  # fmt: skip
                save_file(state, str(Path(output_dir) / TRAINABLE))
        weights.clear()

    def _load_trainable(self, models, input_dir) -> None:
        from safetensors.torch import load_file

        path = Path(input_dir) / TRAINABLE
        if not path.is_file():
            raise TrainingError(f"{input_dir} holds no {TRAINABLE}: not a checkpoint of this trainer")
        while models:
            model = self.accelerator.unwrap_model(models.pop())
            state = load_file(str(path))
            expected = {n for n, p in model.named_parameters() if p.requires_grad}
            if set(state) != expected:
                raise TrainingError(f"{path} does not match this model's trainable weights "
                                    f"({len(state)} tensors saved, {len(expected)} expected): another backbone "
                                    "or LoRA rank?")  # fmt: skip
            model.load_state_dict(state, strict=False)

    def _encoder(self, path: str):
        if not path:
            return None
        from pixelsmile.encoders import load_encoder
        from pixelsmile.world_models import resolve

        try:
            return load_encoder(resolve(path)).to(self.accelerator.device)
        except ValueError as err:  # EncoderError or WorldModelError: both name the path
            raise TrainingError(str(err)) from None

    # --- one step -----------------------------------------------------------------------------

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        # Through the prepared module's forward: under several processes DDP syncs the gradients of
        # what runs inside it (calling the backbone directly would skip the sync).
        return self.model(batch, self.noise)

    def train_step(self, batch: dict) -> dict[str, float]:
        self.model.train()
        out = self.losses(batch)
        if not torch.isfinite(out["total"]):
            kept = checkpoints(self.out)
            terms = {k: float(v.detach()) for k, v in out.items()}
            raise TrainingError(
                f"step {self.step + 1}: the loss is not finite ({terms}); stopped before updating the model. "
                f"Last good checkpoint: {kept[-1] if kept else 'none yet'}"
            )
        self.accelerator.backward(out["total"])
        if self.accelerator.sync_gradients and self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.backbone.trainable_parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {k: float(v.detach()) for k, v in out.items()} | {"lr": self.scheduler.get_last_lr()[0]}

    # --- checkpoints --------------------------------------------------------------------------

    def _state_file(self, folder: Path) -> Path:
        """The step and this process's noise generator (one file per process under several)."""
        rank = self.accelerator.process_index
        return folder / ("trainer_state.pt" if rank == 0 else f"trainer_state_{rank}.pt")

    def save_checkpoint(self) -> Path:
        """`checkpoint-<step>/`, written under a temporary name and renamed when whole: a run killed
        mid-save leaves a `.partial` folder (swept by the next run), never a checkpoint to resume."""
        folder = self.out / f"checkpoint-{self.step}"
        partial = self.out / f".{folder.name}.partial"
        main = self.accelerator.is_main_process
        if main:
            shutil.rmtree(partial, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(partial))
        torch.save({"step": self.step, "noise": self.noise.get_state()}, self._state_file(partial))
        self.accelerator.wait_for_everyone()  # every process's files are in before the rename
        if main:
            (partial / "config.json").write_text(json.dumps(asdict(self.config), indent=1))
            if folder.is_symlink() or folder.is_file():  # something else under the name: not a checkpoint
                folder.unlink()
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(partial, folder)
            if self.config.checkpoints_total_limit:
                for old in checkpoints(self.out)[: -self.config.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return folder

    def _unreadable(self, folder: Path) -> str | None:
        """Why `folder` cannot be resumed from (a file missing or cut), or None: checked before any
        state is loaded, so that a broken checkpoint changes nothing."""
        from safetensors import SafetensorError, safe_open

        pickled = ["optimizer.bin", "scheduler.bin", self._state_file(folder).name]
        if missing := [n for n in (TRAINABLE, *pickled) if not (folder / n).is_file()]:
            return f"{', '.join(missing)} missing"
        try:
            with safe_open(str(folder / TRAINABLE), "pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as err:
            return f"{TRAINABLE} unreadable ({' '.join(str(err).split())[:120]})"
        for name in pickled:
            try:
                torch.load(folder / name, map_location="cpu", weights_only=False)
            except Exception as err:  # torch names no file: a cut zip, a pickle error
                return f"{name} unreadable ({' '.join(str(err).split())[:120]})"
        return None

    def resume(self, which: str) -> Path | None:
        """Load `which` (a checkpoint folder, or `latest`: the newest whole one; older ones are tried
        when it is not, each one skipped named in `self.skipped` and on stderr). None: from scratch."""
        self.skipped: list[str] = []
        if self.accelerator.is_main_process:
            for stale in self.out.glob(".checkpoint-*.partial"):  # a save that was killed
                shutil.rmtree(stale, ignore_errors=True)
        if not which:
            return None
        if which == "latest":
            named = set(self.out.glob("checkpoint-*")) - set(self.out.glob("*.damaged*"))
            for odd in sorted(named - set(checkpoints(self.out))):
                print(f"ignoring {odd}: not a checkpoint name (checkpoint-<step>)", file=sys.stderr, flush=True)
            folder = None
            for candidate in reversed(checkpoints(self.out)):
                if (why := self._unreadable(candidate)) is None:
                    folder = candidate
                    break
                self.skipped.append(f"{candidate}: {why}")
                print(f"skipping checkpoint {candidate}: {why}", file=sys.stderr, flush=True)
                if self.accelerator.is_main_process:  # kept to look at, out of the rotation's count
                    candidate.rename(_free_name(candidate.with_name(candidate.name + ".damaged")))
            if folder is None:
                return None  # nothing to resume: start from scratch
        else:
            folder = Path(which)
            if not (folder / "trainer_state.pt").is_file():
                raise TrainingError(f"{folder} is not a checkpoint folder (no trainer_state.pt)")
            if why := self._unreadable(folder):
                raise TrainingError(f"cannot resume from {folder}: {why}")
        self.accelerator.load_state(str(folder))
        state = torch.load(self._state_file(folder), weights_only=False)
        self.step = int(state["step"])
        self.noise.set_state(state["noise"])
        return folder

    def _trim_log(self) -> None:
        """Keep the loss log's steps up to the one resumed from (an interrupted run wrote some past
        its last checkpoint, which the resumed run writes again; a run from scratch drops all)."""
        if not self.log_path.is_file():
            return
        from storage.atomic import atomic_write_text

        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a kill
        atomic_write_text(self.log_path, "".join(kept))

    # --- the loop -----------------------------------------------------------------------------

    def batches(self) -> Iterator[dict]:
        """Batches from the current step on: epochs in order, the resumed one fast-forwarded."""
        seen, epoch = 0, 0
        while True:
            got = False
            for batch in triplet_batches(self.config, epoch):
                got = True
                if seen >= self.step:
                    yield batch
                seen += 1
            if not got:
                raise TrainingError("the training data yields no full batch (too few triplets for batch_size?)")
            epoch += 1

    def train(self, progress: bool = True, on_log: Callable[[int, dict], None] | None = None) -> dict:
        """Train to max_steps; `on_log(step, losses)` hears every `log_every` steps (main process).
        Holds the output folder's lock throughout (the main process; see the module docstring).
        Raises `TrainingError` on a non-finite loss, a folder another trainer keeps, a gone parent."""
        from contextlib import nullcontext

        from storage.locks import Busy, held

        def waiting(holder: str) -> None:
            print(f"waiting for the trainer already writing {self.out} to stop: {holder}", file=sys.stderr, flush=True)

        what = f"another trainer is writing {self.out}: {{holder}}"
        main = self.accelerator.is_main_process
        lock = held(self.out / ".trainer", what=what, timeout_s=LOCK_WAIT_S, on_wait=waiting) if main else nullcontext()
        try:
            with lock:
                return self._train(progress, on_log)
        except Busy as err:
            raise TrainingError(str(err)) from None

    def _train(self, progress: bool, on_log: Callable[[int, dict], None] | None) -> dict:
        with _StopOnSignal() as stop:
            return self._loop(progress, on_log, os.environ.get(PARENT_ENV, ""), stop)

    def _loop(self, progress: bool, on_log: Callable[[int, dict], None] | None, parent: str,
              stop: _StopOnSignal) -> dict:  # fmt: skip
        from storage.progress import progress_bar

        resumed = self.resume(self.config.resume)
        launcher = os.getppid()
        history = []
        main = self.accelerator.is_main_process
        if main:
            self._trim_log()
        bar = progress_bar(total=self.config.max_steps, initial=self.step, desc="train", unit="step",
                           disable=not (progress and main))  # fmt: skip
        # Line-buffered: a killed run loses at most the step it was writing.
        with open(self.log_path if main else os.devnull, "a", buffering=1) as log:
            for batch in self.batches() if self.step < self.config.max_steps else ():  # a finished run reads nothing
                if self.step >= self.config.max_steps:
                    break
                if stop.asked:
                    raise TrainingError(f"stopped by {stop.asked} at step {self.step}; its latest checkpoint kept "
                                        "(the next run resumes from it)")  # fmt: skip
                # Checked each step (microseconds), for a trainer a build launched: that build, or
                # the launcher (`accelerate launch`) between them, gone: nobody records its result.
                # (A trainer started by hand may outlive its shell: `nohup`.)
                if parent and (parent_gone(parent) or os.getppid() != launcher):
                    who = (f"the process that launched this training (pid {parent.split(':')[0]})"
                           if parent_gone(parent) else f"its launcher (`accelerate launch`, pid {launcher})")
                    raise TrainingError(f"{who} has gone; stopped at step {self.step}, its latest checkpoint kept")
                terms = self.train_step(batch)
                history.append(terms)
                log.write(json.dumps({"step": self.step, **terms}) + "\n")
                bar.update(1)
                if self.step % max(self.config.log_every, 1) == 0:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items() if k != "lr"})
                    if on_log is not None and main:
                        on_log(self.step, terms)
                if self.step % self.config.checkpointing_steps == 0 or self.step == self.config.max_steps:
                    self.save_checkpoint()
        bar.close()
        weights = self.backbone.save_weights(self.out / "final") if main else None
        self.accelerator.wait_for_everyone()
        return {"steps": self.step, "resumed_from": str(resumed) if resumed else None, "weights": str(weights),
                "skipped_checkpoints": self.skipped, "history": history,
                "last": history[-1] if history else None}  # fmt: skip


def train(config: TrainConfig, progress: bool = True, on_log: Callable[[int, dict], None] | None = None) -> dict:
    return Trainer(config).train(progress=progress, on_log=on_log)


def write_outcome(output_dir: Path, *, result: dict | None = None, error: str | None = None) -> dict:
    """Record how a training command ended, for whoever launched it (the Dagster asset reads it: a
    process's exit code alone cannot say that the loss went NaN at step 812)."""
    from storage.atomic import atomic_write_text

    last = (result or {}).get("last") or _last_logged(output_dir)  # nothing left to train: the log's last
    outcome = {"status": "failed" if error else "ok", "error": error,
               "steps": (result or {}).get("steps"), "weights": (result or {}).get("weights"),
               "last_loss": last.get("total"), "resumed_from": (result or {}).get("resumed_from"),
               "skipped_checkpoints": (result or {}).get("skipped_checkpoints") or None}  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / OUTCOME, json.dumps(outcome, indent=1) + "\n")
    return outcome


def _last_logged(output_dir: Path) -> dict:
    try:
        lines = (Path(output_dir) / "losses.jsonl").read_text().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def read_outcome(output_dir: Path) -> dict | None:
    try:
        return json.loads((Path(output_dir) / OUTCOME).read_text())
    except (OSError, ValueError):
        return None
