"""Training on a small synthetic release with the pixel backbone: the loss falls, a resumed run
equals an uninterrupted one, a NaN stops the run clearly, config typos are one clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pixelsmile.encoders import small_encoder
from pixelsmile.synthetic import world_release
from pixelsmile.train import TrainConfig, Trainer, TrainingError, checkpoints, train
from storage.layout import Layout
from storage.releases.config import ReleaseConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    config = ReleaseConfig(val_fraction=0.0, bench_fraction=0.0, shard_target_bytes=100_000)
    release = world_release(Layout.at(root / "w"), config, people=16, faces_per_person=7, size=32)
    return {
        "release": str(release),
        "features": str(small_encoder(root / "features.pt", seed=1)),
        "faces": str(small_encoder(root / "faces.pt", seed=2)),
    }


def config(world, out, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), release=world["release"], feature_encoder=world["features"],
                identity_encoder=world["faces"], resolution=32, batch_size=4, max_steps=6, lr_warmup_steps=0,
                learning_rate=1e-3, checkpointing_steps=3, pixel_channels=16, pixel_blocks=1)  # fmt: skip
    return TrainConfig.from_dict({**base, **kw})


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(world, tmp_path):
    trainer = Trainer(config(world, tmp_path / "run", learning_rate=3e-3))
    batch = next(trainer.batches())
    before = [trainer.losses(batch)["total"].item() for _ in range(1)]
    trainer.noise.manual_seed(0)
    first = None
    for _ in range(30):
        trainer.noise.manual_seed(0)  # the same noise each step: only the model changes
        terms = trainer.train_step(batch)
        first = first or terms
    trainer.noise.manual_seed(0)
    after = trainer.losses(batch)
    # The editor starts as the identity (source + a zero change), so the contrastive term of a random
    # feature encoder starts near ln 2 and moves slowly; the flow-matching terms must halve.
    fm = lambda t: float(t["fm_a"]) + float(t["fm_b"])  # noqa: E731
    assert fm(after) < 0.5 * fm(first)
    assert after["total"].item() < first["total"] and before
    assert {"fm_a", "fm_b", "contrastive", "identity"} <= set(first)
    assert first["contrastive"] > 0 and after["identity"] > 0  # the first edit is the source itself


def test_a_resumed_run_reaches_the_same_losses_as_an_uninterrupted_one(world, tmp_path):
    whole = train(config(world, tmp_path / "whole"), progress=False)
    assert whole["steps"] == 6 and [c.name for c in checkpoints(tmp_path / "whole")] == ["checkpoint-3", "checkpoint-6"]

    killed = Trainer(config(world, tmp_path / "split"))  # the same run, killed after its checkpoint at 3
    batches = killed.batches()
    for _ in range(4):
        killed.train_step(next(batches))
        if killed.step == 3:
            killed.save_checkpoint()
    del killed
    # What the killed run logged: past its checkpoint, the last line cut by the kill.
    (tmp_path / "split" / "losses.jsonl").write_text("".join(json.dumps({"step": n, "total": 1.0}) + "\n"
                                                             for n in range(1, 5)) + '{"step": 5, "to')  # fmt: skip
    resumed = train(config(world, tmp_path / "split", resume="latest"), progress=False)
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["steps"] == 6
    for a, b in zip(whole["history"][3:], resumed["history"], strict=True):
        assert a["total"] == pytest.approx(b["total"], rel=1e-5)
    logged = [json.loads(line) for line in (tmp_path / "split" / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]  # each step once: 4 and 5 of the killed run dropped
    assert logged[3]["total"] != 1.0
    w1 = torch.load(tmp_path / "whole" / "final" / "pixel_edit_net.pt")
    w2 = torch.load(tmp_path / "split" / "final" / "pixel_edit_net.pt")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


def _damage(folder: Path, kind: str) -> str:
    """Break checkpoint `folder` as a killed save or a bad disk does; the reason resume gives."""
    if kind == "empty":  # a save killed before it wrote anything (the old, in-place save)
        shutil.rmtree(folder)
        folder.mkdir()
        return "trainable.safetensors, optimizer.bin, scheduler.bin, trainer_state.pt missing"
    if kind == "a_file":  # not even a folder
        shutil.rmtree(folder)
        folder.write_bytes(b"")
        return "trainable.safetensors, optimizer.bin, scheduler.bin, trainer_state.pt missing"
    if kind == "cut_weights":
        data = (folder / "trainable.safetensors").read_bytes()
        (folder / "trainable.safetensors").write_bytes(data[: len(data) // 2])
        return "trainable.safetensors unreadable"
    (folder / "optimizer.bin").write_bytes((folder / "optimizer.bin").read_bytes()[:100])
    return "optimizer.bin unreadable"


@pytest.mark.parametrize("kind", ["empty", "a_file", "cut_weights", "cut_optimizer"])
def test_resume_skips_a_broken_newest_checkpoint_naming_it(world, tmp_path, kind, capfd):
    """checkpoint-6 broken: the run resumes from checkpoint-3, names the one skipped, and ends where
    an uninterrupted run ends."""
    whole = train(config(world, tmp_path / "whole"), progress=False)
    run = tmp_path / "split"
    shutil.copytree(tmp_path / "whole", run)
    shutil.rmtree(run / "final")
    (run / "losses.jsonl").unlink()
    why = _damage(run / "checkpoint-6", kind)
    resumed = train(config(world, run, resume="latest"), progress=False)
    assert resumed["resumed_from"] == str(run / "checkpoint-3") and resumed["steps"] == 6
    (skipped,) = resumed["skipped_checkpoints"]
    assert skipped.startswith(f"{run / 'checkpoint-6'}: {why}")
    assert f"skipping checkpoint {run / 'checkpoint-6'}: {why}" in capfd.readouterr().err
    for a, b in zip(whole["history"][3:], resumed["history"], strict=True):
        assert a["total"] == pytest.approx(b["total"], rel=1e-5)
    assert [c.name for c in checkpoints(run)] == ["checkpoint-3", "checkpoint-6"]  # saved whole again
    assert (run / "checkpoint-6.damaged").exists()  # kept to look at, out of the rotation's count
    with pytest.raises(TrainingError, match=r"cannot resume from .*checkpoint-3: optimizer.bin unreadable"):
        _damage(run / "checkpoint-3", "cut_optimizer")
        Trainer(config(world, run, resume=str(run / "checkpoint-3"))).resume(str(run / "checkpoint-3"))


def test_resume_names_a_folder_that_is_not_a_checkpoint_name(world, tmp_path, capfd):
    train(config(world, tmp_path / "run", max_steps=3), progress=False)
    (tmp_path / "run" / "checkpoint-abc").mkdir()
    resumed = train(config(world, tmp_path / "run", resume="latest"), progress=False)
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["steps"] == 6
    assert f"ignoring {tmp_path / 'run' / 'checkpoint-abc'}: not a checkpoint name" in capfd.readouterr().err


def test_a_save_killed_midway_leaves_no_checkpoint_and_its_remains_are_swept(world, tmp_path, monkeypatch):
    trainer = Trainer(config(world, tmp_path / "run"))
    batches = trainer.batches()
    for _ in range(3):
        trainer.train_step(next(batches))

    def killed(folder, *a, **kw):  # the process dies once part of the state is on disk
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "optimizer.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.accelerator, "save_state", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert checkpoints(tmp_path / "run") == [] and (tmp_path / "run" / ".checkpoint-3.partial").is_dir()
    resumed = train(config(world, tmp_path / "run", resume="latest"), progress=False)
    assert resumed["resumed_from"] is None and resumed["steps"] == 6  # from scratch: nothing whole to resume
    assert not list((tmp_path / "run").glob(".checkpoint-*.partial"))


def test_a_cut_final_model_is_named_when_loaded(world, tmp_path):
    from pixelsmile.pixel import PixelBackbone

    train(config(world, tmp_path / "run"), progress=False)
    weights = tmp_path / "run" / "final" / "pixel_edit_net.pt"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(ValueError, match=rf"cannot load {weights}: "):
        PixelBackbone(16, 1).load_weights(weights.parent)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(world, tmp_path):
    trainer = Trainer(config(world, tmp_path / "nan", max_steps=10))
    batches = trainer.batches()
    for _ in range(3):
        trainer.train_step(next(batches))
    trainer.save_checkpoint()
    with torch.no_grad():
        trainer.backbone.net.out.bias.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"step 4: the loss is not finite .*checkpoint-3"):
        trainer.train_step(next(batches))
    assert (tmp_path / "nan" / "checkpoint-3" / "trainer_state.pt").is_file()


def test_a_second_trainer_on_the_same_folder_waits_then_stops_naming_the_first(world, tmp_path, monkeypatch, capfd):
    import pixelsmile.train as training
    from storage.locks import held

    monkeypatch.setattr(training, "LOCK_WAIT_S", 0.5)
    out = tmp_path / "run"
    out.mkdir()
    busy = pytest.raises(TrainingError, match=rf"another trainer is writing {out}: pid {os.getpid()} ")
    with held(out / ".trainer", what="the test", timeout_s=1), busy:  # as a live trainer holds it
        train(config(world, out), progress=False)
    assert "waiting for the trainer already writing" in capfd.readouterr().err
    assert checkpoints(out) == [] and not (out / "losses.jsonl").exists()  # the second one wrote nothing
    assert train(config(world, out), progress=False)["steps"] == 6  # free again: trains


def test_a_trainer_whose_launching_process_has_gone_stops_between_steps(world, tmp_path, monkeypatch):
    from pixelsmile.train import PARENT_ENV, parent_gone, parent_token

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    token = parent_token(gone.pid)
    gone.wait()
    assert parent_gone(token) and not parent_gone(parent_token())
    assert parent_gone(f"{os.getpid()}:12.000")  # the same pid, another process's start time
    monkeypatch.setenv(PARENT_ENV, parent_token())
    assert train(config(world, tmp_path / "alive"), progress=False)["steps"] == 6
    monkeypatch.setenv(PARENT_ENV, token)
    with pytest.raises(TrainingError, match=rf"the process that launched this training \(pid {gone.pid}\) has gone; "
                                            "stopped at step 0"):  # fmt: skip
        train(config(world, tmp_path / "orphan"), progress=False)


def test_sigterm_stops_training_between_steps_with_one_clear_error(world, tmp_path):
    """`kill` of a training process died mid-step with a traceback per process; it now stops at
    the next step, keeps its checkpoints and says so (outcome.json too, by the CLI)."""
    recipe = tmp_path / "train.yaml"
    recipe.write_text(json.dumps({**config(world, tmp_path / "run", max_steps=100000, checkpointing_steps=2).__dict__,
                                  "resume": "latest"}))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "pixelsmile.cli", "train", "--config", str(recipe)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        while not checkpoints(tmp_path / "run"):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert "pixelsmile train: error: stopped by SIGTERM at step " in err and "its latest checkpoint kept" in err
    outcome = json.loads((tmp_path / "run" / "outcome.json").read_text())
    assert outcome["status"] == "failed" and outcome["error"].startswith("stopped by SIGTERM at step ")


def test_config_mistakes_are_one_clear_error(world, tmp_path):
    with pytest.raises(TrainingError, match="learning_rat .*did you mean learning_rate"):
        TrainConfig.from_dict({"output_dir": str(tmp_path), "release": world["release"], "learning_rat": 1})
    with pytest.raises(TrainingError, match="exactly one of release"):
        TrainConfig.from_dict({"output_dir": str(tmp_path)})
    with pytest.raises(TrainingError, match="nope.pt does not exist"):
        Trainer(config(world, tmp_path / "x", feature_encoder=str(tmp_path / "nope.pt")))


def test_the_plain_baseline_trains_both_targets_as_independent_samples(world, tmp_path):
    """The ablation sees the same images (both categories of every pair), with no coupling: its own
    noise and level per target, no L_SC, no L_ID."""
    trainer = Trainer(config(world, tmp_path / "plain", symmetric=False))
    batch = next(trainer.batches())
    terms = trainer.losses(batch)
    assert float(terms["contrastive"]) == 0.0 and float(terms["identity"]) == 0.0
    assert torch.isclose(terms["total"], 0.5 * (terms["fm_a"] + terms["fm_b"]))
    twin = dict(batch, target_b=batch["target_a"], category_b=batch["category_a"], alpha_b=batch["alpha_a"])
    trainer.noise.manual_seed(5)
    twin_terms = trainer.losses(twin)
    assert float(twin_terms["fm_a"]) != float(twin_terms["fm_b"])  # one target, two independent noisings


def test_pixelsmile_train_from_a_yaml_config(world, tmp_path, capsys):
    import dataclasses

    import yaml

    from pixelsmile.cli import main

    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(dataclasses.asdict(config(world, tmp_path / "cli", max_steps=2))))
    assert main(["train", "--config", str(cfg)]) == 0
    assert "trained to step 2" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\nrelease: y\nbatchsize: 3\n")
    assert main(["train", "--config", str(bad)]) == 1
    assert "unknown training config key(s): batchsize" in capsys.readouterr().err


@pytest.mark.slow
def test_the_qwen_backbone_trains_a_lora_that_the_pipeline_loads(world, tmp_path):
    from pixelsmile.lora import load_lora
    from pixelsmile.qwen import build_tiny, load_pipeline

    model = build_tiny(tmp_path / "tiny-qwen")
    cfg = config(world, tmp_path / "qwen", backbone="qwen", model_path=str(model), resolution=64, batch_size=2,
                 max_steps=4, checkpointing_steps=2, lora_rank=4, lora_alpha=8, learning_rate=1e-3)  # fmt: skip
    trainer = Trainer(cfg)
    batch = next(trainer.batches())
    first = None
    for _ in range(8):
        trainer.noise.manual_seed(0)
        terms = trainer.train_step(batch)
        first = first or terms
    assert terms["total"] < first["total"] and first["contrastive"] > 0
    weights = trainer.backbone.save_weights(tmp_path / "qwen" / "final")
    pipe = load_pipeline(model)
    load_lora(pipe, weights)
    # Latents and prompt embeddings were encoded once each (at most 3 images and 3 instructions per
    # triplet; fewer when the triplets share a source) and kept on disk: another trainer on the same
    # run folder encodes nothing.
    computed = trainer.backbone.cache.computed
    assert 0 < computed <= 12 and len(list((tmp_path / "qwen" / "encoded").glob("*/*.pt"))) == computed
    again = Trainer(cfg)
    again.noise.manual_seed(0)
    again.losses(batch)
    assert again.backbone.cache.computed == 0
    with pytest.raises(TrainingError, match="does not exist"):
        Trainer(config(world, tmp_path / "q2", backbone="qwen", model_path=str(tmp_path / "nowhere")))


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_train_one_model(world, tmp_path):
    """DDP on 2 CPU processes (gloo): each rank reads its own shards, gradients are averaged through
    the prepared module's forward, so both ranks end with the same weights; rank 0 alone writes."""
    out = tmp_path / "ddp"
    cfg = tmp_path / "ddp.json"
    cfg.write_text(json.dumps(dict(output_dir=str(out), release=world["release"], feature_encoder=world["features"],
                                   identity_encoder=world["faces"], resolution=32, batch_size=2, max_steps=4,
                                   lr_warmup_steps=0, learning_rate=1e-3, checkpointing_steps=2, pixel_channels=16,
                                   pixel_blocks=1)))  # fmt: skip
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", str(Path(__file__).with_name("ddp_worker.py")), str(cfg)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [4, 4]
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]  # each rank its own data
    w0, w1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert [p.name for p in checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert (out / "checkpoint-4" / "trainer_state_1.pt").is_file()
    assert len((out / "losses.jsonl").read_text().splitlines()) == 4  # rank 0 alone logs


def test_a_recipe_reads_numbers_as_yaml_1_2_does(tmp_path):
    """`learning_rate: 1e-3` is a number (PyYAML's YAML 1.1 read it as text and it was refused)."""
    recipe = tmp_path / "train.yaml"
    recipe.write_text(f"output_dir: {tmp_path}\nrelease: {tmp_path}\nlearning_rate: 1e-3\ntau: 5E-2\nmax_steps: 10\n")
    config = TrainConfig.from_yaml(recipe)
    assert config.learning_rate == 0.001 and config.tau == 0.05 and config.max_steps == 10
