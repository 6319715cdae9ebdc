"""The trainer (local/train/loop.py) on a tiny MLP regression with a resumable loader."""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from torch import nn

from local.train.checkpoint import load_weights, trainable_state_dict
from local.train.loop import NonFiniteError, Trainer
from local.train.trainer_config import TrainerConfig, lr_factor


def make_data(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


class ToyLoader:
    """Resumable like ShardLoader: a seeded shuffle per epoch, batches of the given sizes,
    ``for`` goes on from the position and moves to the next epoch at the end.
    ``rank``/``world`` take the rank's slice of each (global) batch."""

    def __init__(self, x, y, sizes, shuffle=True, rank=0, world=1):
        self.x, self.y, self.sizes, self.shuffle, self.rank, self.world = x, y, sizes, shuffle, rank, world
        self.epoch = self.pos = 0

    def batches(self) -> list[dict]:
        order = np.random.default_rng(self.epoch).permutation(len(self.x)) if self.shuffle else np.arange(len(self.x))
        out, start = [], 0
        for size in self.sizes:
            part = size // self.world
            idx = order[start:start + size][self.rank * part:(self.rank + 1) * part]
            start += size
            out.append({"x": self.x[idx], "y": self.y[idx], "utts": [f"utt{i:03d}" for i in idx]})
        return out

    def __len__(self):
        return len(self.sizes)

    def set_epoch(self, epoch):
        self.epoch, self.pos = epoch, 0

    def __iter__(self):
        if self.pos >= len(self):
            self.set_epoch(self.epoch + 1)
        batches = self.batches()
        while self.pos < len(batches):
            self.pos += 1
            yield batches[self.pos - 1]
        self.set_epoch(self.epoch + 1)

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = state["epoch"], state["pos"]


def make_model(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))


def mse_step(model, batch):
    pred = model(batch["x"])
    return nn.functional.mse_loss(pred, batch["y"]), {"mae": (pred - batch["y"]).abs().mean()}


def config(exp_dir, **overrides) -> dict:
    return {"exp_dir": str(exp_dir), "lr": 1e-2, "schedule": "constant", "log_every": 1, "save_every": None,
            "keep_last": None, "progress": False, "max_epochs": None, **overrides}


def records(exp_dir, split="train") -> list[dict]:
    lines = (Path(exp_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=tol, rtol=0, msg=k)


# --- training, schedule, accumulation -------------------------------------------------

def test_loss_goes_down_with_validation_and_files(tmp_path, caplog):
    x, y = make_data()
    vx, vy = make_data(16, seed=1)
    cfg = config(tmp_path, max_epochs=10, lr=3e-2, schedule="cosine", warmup=5, log_every=6, valid_every=30,
                 save_every=30, amp="bf16", progress=True)
    with caplog.at_level(logging.INFO, logger="local.train.loop"):
        out = Trainer(make_model(), mse_step, cfg).fit(ToyLoader(x, y, [8] * 6),
                                                       ToyLoader(vx, vy, [8, 8], shuffle=False))
    assert "autocast runs only on CUDA" in caplog.text
    train = records(tmp_path)
    assert [r["step"] for r in train] == list(range(6, 61, 6))
    assert train[-1]["epoch"] == 9 and set(train[-1]) >= {"loss", "lr", "grad_norm", "sec_per_step", "mae"}
    assert train[-1]["loss"] < train[0]["loss"] / 5
    valid = records(tmp_path, "valid")
    assert [r["step"] for r in valid] == [30, 60] and valid[1]["valid_loss"] < valid[0]["valid_loss"]
    assert out["valid_loss"] == valid[-1]["valid_loss"] and out["loss"] == train[-1]["loss"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best.pt", "last.pt", "step_30.pt", "step_60.pt"]
    assert OmegaConf.load(tmp_path / "config.yaml").trainer.lr == 3e-2


@pytest.mark.parametrize("schedule,at_step_7", [("linear", 0.775), ("cosine", 0.1 + 0.45 * (1 + math.sqrt(0.5)))])
def test_lr_schedule_follows_formula(tmp_path, schedule, at_step_7):
    # 16 steps, warm-up 0.25 of them = 4 steps, then decay to 0.1 of the peak over 12 steps
    assert [lr_factor(s, 16, 4, schedule, 0.1) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(7, 16, 4, schedule, 0.1) == pytest.approx(at_step_7)
    assert lr_factor(16, 16, 4, schedule, 0.1) == pytest.approx(0.1)

    def formula(s):
        if s < 4:
            return (s + 1) / 4
        p = (s - 4) / 12
        return 0.1 + 0.9 * ((1 - p) if schedule == "linear" else (1 + math.cos(math.pi * p)) / 2)

    x, y = make_data()
    Trainer(make_model(), mse_step, config(tmp_path, max_steps=16, schedule=schedule, warmup=0.25,
                                           min_lr_ratio=0.1)).fit(ToyLoader(x, y, [8] * 6))
    assert [r["lr"] for r in records(tmp_path)] == pytest.approx([1e-2 * formula(s) for s in range(16)], abs=1e-12)


def test_grad_accumulation_equals_bigger_batch(tmp_path):
    # an epoch of 12 samples: 3 batches of 4 with grad_accum 2 (the last step has one batch)
    # against batches of 8 and 4; a large eps makes AdamW's update scale with the gradient
    x, y = make_data(12)
    runs = {}
    for name, sizes, accum in (("small", [4, 4, 4], 2), ("big", [8, 4], 1)):
        trainer = Trainer(make_model(), mse_step, config(tmp_path / name, max_epochs=2, grad_accum=accum, eps=1.0,
                                                         weight_decay=0.1, clip_norm=None))
        trainer.fit(ToyLoader(x, y, sizes, shuffle=False))
        runs[name] = (params(trainer.module), records(tmp_path / name))
    (p_small, r_small), (p_big, r_big) = runs["small"], runs["big"]
    assert len(r_small) == len(r_big) == 4
    for key in ("loss", "grad_norm", "mae"):  # float32 sums in another order: equal to rounding
        assert [r[key] for r in r_small] == pytest.approx([r[key] for r in r_big], rel=1e-6)
    assert_same(p_small, p_big, 1e-6)
    assert not torch.equal(p_small["0.weight"], make_model().state_dict()["0.weight"])


# --- checkpoints ----------------------------------------------------------------------

@pytest.mark.parametrize("mode,best_step", [("min", 2), ("max", 5)])
def test_checkpoints_keep_last_best_and_atomic_save(tmp_path, monkeypatch, mode, best_step):
    x, y = make_data()
    score = {1: 3.0, 2: 1.0, 3: 2.0, 4: 1.5, 5: 4.0}
    cfg = config(tmp_path, max_steps=5, save_every=1, keep_last=2, valid_every=1, best_metric="valid_score",
                 best_mode=mode, schedule="constant")  # constant: the longer run below resumes this one
    trainer = Trainer(make_model(), mse_step, cfg)
    trainer.fit(ToyLoader(x, y, [8] * 6), valid_loader=[],
                valid_fn=lambda model, loader: {"score": score[trainer.step]})
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt", "step_4.pt", "step_5.pt"]
    assert os.path.samefile(ckpts / "last.pt", ckpts / "step_5.pt")
    best = torch.load(ckpts / "best.pt", weights_only=True)
    assert best["step"] == best_step and best["best"]["value"] == score[best_step]
    assert load_weights(ckpts / "last.pt", make_model())["step"] == 5

    def crash_while_writing(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_while_writing)
    with pytest.raises(OSError, match="disk full"):
        longer = Trainer(make_model(), mse_step, {**cfg, "max_steps": 7})
        longer.fit(ToyLoader(x, y, [8] * 6), valid_loader=[], valid_fn=lambda model, loader: {"score": 0.0})
    monkeypatch.undo()
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt", "step_4.pt", "step_5.pt"]
    model = make_model()
    assert load_weights(ckpts / "last.pt", model)["step"] == 5
    assert_same(params(model), params(trainer.module), 0)


def test_a_checkpoint_of_another_config_or_inputs_is_set_aside_not_resumed(tmp_path, caplog):
    """A yaml edited (or the targets regenerated) and the stage re-run must not save the old weights as the
    new model: the trainer starts over, says why by key, and moves the old run aside instead of deleting it."""
    x, y = make_data()

    def train(lr, fingerprint=None, max_steps=3):
        trainer = Trainer(make_model(), mse_step, config(tmp_path, max_steps=max_steps, save_every=1, lr=lr),
                          run_config={"rl": {"lr": lr}}, fingerprint=fingerprint)
        trainer.fit(ToyLoader(x, y, [8] * 6))
        return trainer

    first = train(0.1)
    with caplog.at_level("WARNING", logger="local.train.loop"):
        again = train(0.1)
    assert "not resuming" not in caplog.text and records(tmp_path)[-1]["step"] == 3  # same config: nothing to do
    assert_same(params(again.module), params(first.module), 0)

    with caplog.at_level("WARNING", logger="local.train.loop"):
        fresh = train(0.05)
    assert "another config (rl.lr: 0.1 -> 0.05; trainer.lr: 0.1 -> 0.05)" in caplog.text
    assert "not resuming it: training from the start" in caplog.text
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3]  # a new run, not steps 4.. of the old one
    (old,) = (tmp_path / "superseded").iterdir()
    assert [r["lr"] for r in records(old)][0] == pytest.approx(0.1) and (old / "checkpoints" / "last.pt").is_file()
    ref = Trainer(make_model(), mse_step, config(tmp_path / "ref", max_steps=3, save_every=1, lr=0.05),
                  run_config={"rl": {"lr": 0.05}})
    ref.fit(ToyLoader(x, y, [8] * 6))
    assert_same(params(fresh.module), params(ref.module), 0)  # exactly a run from scratch

    caplog.clear()  # same config, other inputs: the stage's fingerprint differs
    with caplog.at_level("WARNING", logger="local.train.loop"):
        train(0.05, fingerprint="targets-v2")
    assert "other inputs (data, models)" in caplog.text and len(list((tmp_path / "superseded").iterdir())) == 2


@pytest.mark.parametrize("how", ["stop", "crash", "trainable_only"])
def test_resume_ends_like_an_uninterrupted_run(tmp_path, how):
    """Resume after a clean stop at an epoch's end (max_steps 4 of 10), or after a crash at
    step 8 with the last checkpoint at step 6 (metrics of step 7 were logged and must go)."""
    x, y = make_data(16)
    if how == "stop":  # max_steps changes between the runs: the schedule must not depend on it
        cfg = config(tmp_path / "run", max_steps=10, schedule="constant", warmup=3, save_every=100)
    else:
        cfg = config(tmp_path / "run", max_steps=10, schedule="cosine", warmup=2, save_every=3)
    kwargs = {}
    if how == "trainable_only":
        kwargs["state_dict_fn"] = trainable_state_dict

    def build():
        model = make_model(dropout=0.3)  # dropout: the random stream must continue exactly
        if how == "trainable_only":
            model[0].requires_grad_(False)
        return model

    def run(exp_dir, step_fn=mse_step, **overrides):
        loader = ToyLoader(x, y, [4] * 4)
        trainer = Trainer(build(), step_fn, {**cfg, "exp_dir": str(exp_dir), **overrides}, **kwargs)
        trainer.fit(loader)
        return trainer, loader

    ref, ref_loader = run(tmp_path / "ref")
    if how == "stop":
        run(tmp_path / "run", max_steps=4)
        assert torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["loader"] == {"epoch": 0, "pos": 4}
    else:
        calls = []

        def killed_at_step_8(model, batch):
            calls.append(1)
            if len(calls) == 8:
                raise KeyboardInterrupt
            return mse_step(model, batch)

        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "run", step_fn=killed_at_step_8)
        assert [r["step"] for r in records(tmp_path / "run")] == list(range(1, 8))
        last = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
        assert last["step"] == 6 and last["loader"] == {"epoch": 1, "pos": 2}
        if how == "trainable_only":
            assert sorted(last["model"]) == ["3.bias", "3.weight"]
    resumed, loader = run(tmp_path / "run")

    got, want = records(tmp_path / "run"), records(tmp_path / "ref")
    assert [r["step"] for r in got] == list(range(1, 11))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-6)
    assert_same(params(resumed.module), params(ref.module), 1e-6)
    assert loader.state_dict() == ref_loader.state_dict() == {"epoch": 2, "pos": 2}


@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_non_finite_step_stops_with_step_and_batch_ids(tmp_path, bad):
    x, y = make_data()
    calls = []

    def bad_at_step_3(model, batch):
        calls.append(1)
        loss, logs = mse_step(model, batch)
        if len(calls) == 3 and bad == "loss":
            loss = loss * float("nan")
        elif len(calls) == 3:  # a finite loss whose gradient is not: d sqrt(u)/du at u = 0
            loss = loss + torch.sqrt(model[0].weight.sum() * 0)
        return loss, logs

    third = ToyLoader(x, y, [8] * 6).batches()[2]["utts"]
    trainer = Trainer(make_model(), bad_at_step_3, config(tmp_path, max_steps=5, save_every=1))
    with pytest.raises(NonFiniteError, match="at step 3 ") as err:
        trainer.fit(ToyLoader(x, y, [8] * 6))
    assert str(third) in str(err.value)
    assert ("loss nan" in str(err.value)) == (bad == "loss") and "grad norm nan" in str(err.value)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.pt", "step_1.pt", "step_2.pt"]
    model = make_model()
    assert load_weights(ckpts / "last.pt", model)["step"] == 2
    assert all(torch.isfinite(p).all() for p in trainer.module.parameters())  # the bad step did not update


# --- distributed ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_worker(rank: int, port: int, root: str) -> None:
    """Each rank trains on its half of every global batch of 8: DDP for 6 steps; FSDP for 3, then resumed to 6."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    x, y = make_data()
    for parallel, stops in (("ddp", [6]), ("fsdp", [3, 6])):
        for max_steps in stops:
            # constant: a run extended from 3 to 6 steps resumes (a cosine over 6 steps would be another run)
            cfg = config(Path(root) / parallel, max_steps=max_steps, parallel=parallel, schedule="constant", warmup=2,
                         save_every=3)
            Trainer(make_model(), mse_step, cfg).fit(ToyLoader(x, y, [8] * 6, rank=rank, world=2))


def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    x, y = make_data()
    one = Trainer(make_model(), mse_step, config(tmp_path / "one", max_steps=6, schedule="constant", warmup=2,
                                                 save_every=3))
    one.fit(ToyLoader(x, y, [8] * 6))
    # fork: a spawned child would spend ~10 s importing torch again on this 2-core machine
    mp.start_processes(_two_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    want = [r["loss"] for r in records(tmp_path / "one")]
    for parallel in ("ddp", "fsdp"):  # one record per step: only rank 0 writes
        assert [r["loss"] for r in records(tmp_path / parallel)] == pytest.approx(want, abs=1e-5)
        model = make_model()
        assert load_weights(tmp_path / parallel / "checkpoints/last.pt", model)["step"] == 6
        assert_same(params(model), params(one.module), 1e-5)


# --- configs and secrets --------------------------------------------------------------

def test_secrets_stay_out_of_config_metrics_checkpoints_and_wandb(tmp_path, monkeypatch):
    class FakeWandb(types.ModuleType):
        def __init__(self):
            super().__init__("wandb")
            self.inits, self.logged = [], []

        def init(self, **kwargs):
            self.inits.append(kwargs)
            return self

        def log(self, data, step):
            self.logged.append((step, data))

        def finish(self):
            pass

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_config = OmegaConf.create({"api_key": "sk-xyz", "seed": 0,
                                   "teacher": {"HF_TOKEN": "sk-xyz", "max_new_tokens": 7, "model": "gpt"},
                                   "servers": [{"password": "sk-xyz", "host": "h"}], "client_secret": "sk-xyz"})
    x, y = make_data()
    cfg = config(tmp_path, max_steps=3, wandb={"enabled": True, "project": "p"})
    Trainer(make_model(), mse_step, cfg, run_config=run_config).fit(ToyLoader(x, y, [8] * 6))

    written = (tmp_path / "config.yaml").read_text()
    ckpt = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    for text in (written, (tmp_path / "metrics.jsonl").read_text(), str(ckpt["config"]), str(fake.inits)):
        assert "sk-xyz" not in text
    assert OmegaConf.load(tmp_path / "config.yaml").teacher == {"max_new_tokens": 7, "model": "gpt"}
    (init,) = fake.inits
    assert init["mode"] == "offline" and init["project"] == "p" and init["config"]["servers"] == [{"host": "h"}]
    assert [step for step, _ in fake.logged] == [1, 2, 3]


def test_trainer_configs_compose_and_unknown_keys_fail():
    from local.utils.hydra import compose

    group = "trainer" if "trainer" in compose([]) else "+trainer"
    expected = {"cpu": ("none", "ddp"), "gpu": ("bf16", "ddp"), "ddp": ("bf16", "ddp"), "fsdp": ("bf16", "fsdp")}
    for name, (amp, parallel) in expected.items():
        for device in ("cpu", "cuda"):  # the run's device (run.sh: from --ngpu), whichever trainer config
            cfg = TrainerConfig.from_config(compose([f"{group}={name}", "seed=3", f"device={device}"]).trainer)
            assert (cfg.device, cfg.amp, cfg.parallel, cfg.seed, cfg.lr) == (device, amp, parallel, 3, 1e-4)
        assert TrainerConfig.from_config(compose([f"{group}={name}"]).trainer).device == "cpu"  # never a guess
    with pytest.raises(ValueError, match="lr_rate"):
        TrainerConfig.from_config({"exp_dir": "x", "lr_rate": 1})
    with pytest.raises(ValueError, match="schedule"):
        TrainerConfig.from_config({"exp_dir": "x", "schedule": "exponential"})
