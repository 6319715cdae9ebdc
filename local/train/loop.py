"""The one training loop of every stage: a stage brings a model and a loss, the trainer does the rest.

A stage writes::

    def step_fn(model, batch):                 # the stage's loss: the only thing it defines
        loss = ...
        return loss, {"acc": acc}              # a scalar tensor and floats to log

    trainer = Trainer(model, step_fn, cfg.trainer, run_config=cfg)
    trainer.fit(train_loader, valid_loader)

The trainer never looks inside a batch (it moves its tensors to the device and
reads ``batch["utts"]`` only to name a bad batch), so the same loop trains
Emotion2Vec-S, the audio-LLM SFT, the distillation and the RL stages.

Choices, and why:

- A *step* is one optimizer update; it consumes ``grad_accum`` batches, each
  loss divided by the number of batches in the step (the last step of an
  epoch may have fewer), so accumulation equals one bigger batch.  Under DDP
  only the last of them synchronises gradients.
- The learning rate is a pure function of the step (:func:`lr_factor`), so the
  schedule holds no state that a resume could get wrong.
- Randomness: every step seeds python, numpy and torch (CPU and CUDA) from
  (seed, rank, step).  A resumed run then draws exactly the random numbers
  the uninterrupted run drew at that step, whatever the data loader or the
  validation consumed in between, and a checkpoint needs no RNG state.
- Checkpoints hold full (unsharded) state dicts, rank 0 writes them, and a
  crash at any moment leaves the previous one intact (:mod:`local.train.checkpoint`).
- A checkpoint is resumed only by a run with the same *fingerprint*: the
  stage's (the config keys it reads and the content digests of its data and
  models, local/bin/stages.py), or, for a trainer used on its own, the digest
  of its whole config; either with the run's length replaced by the schedule
  it gives (warm-up steps, and the total unless the schedule is constant), so
  a constant-rate run extended to more steps resumes.  Otherwise the old run's checkpoints, metrics and
  config are moved to ``exp_dir/superseded/<time>-<fingerprint>/`` and
  training starts from the beginning, saying so: weights trained on other
  targets or under another learning rate must not be saved as this run's.
- A non-finite loss (or grad norm) stops training before the optimizer
  touches the weights and before anything is saved, naming the step and the
  utterances of every rank's batches.
- Under ``torchrun`` (WORLD_SIZE > 1) the trainer joins the process group from
  the environment (NCCL on GPU, gloo on CPU).  It does not shard data: each
  rank's loader yields that rank's batches (ShardLoader does), and the loaders
  of all ranks must yield the same number of batches per epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from tqdm import tqdm

from local.train.checkpoint import FULL, full_state_dict, link_atomic, save_atomic
from local.train.runtime import seed_everything, setup_distributed, to_device
from local.train.trainer_config import TrainerConfig, lr_factor, planned_steps
from local.utils.atomic import write_text_atomic
from local.utils.digest import value_digest
from local.utils.provenance import config_changes, drop_secrets

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, Mapping[str, float]]"]
ValidFn = Callable[[nn.Module, Iterable], Mapping[str, float]]
StateDictFn = Callable[[nn.Module], "dict[str, torch.Tensor]"]

# Trainer keys that change how a run is watched, not what it trains: left out of its default fingerprint;
# and the run's length, which enters it as the learning-rate schedule it gives (see _plan).
WATCHING = ("progress", "log_every", "wandb", "keep_last", "save_every")
LENGTHS = ("max_steps", "max_epochs")


# --- small pieces ---------------------------------------------------------------------

def _scalar(value: float | torch.Tensor) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


class NonFiniteError(RuntimeError):
    """Training produced a NaN/inf loss or gradient norm."""


# --- the trainer ----------------------------------------------------------------------

class Trainer:
    """Trains ``model`` with ``step_fn`` under ``cfg`` (:class:`TrainerConfig`, a dict or a Hydra section).

    ``step_fn(model, batch) -> (loss, logs)`` gets the wrapped model: call it
    (``model(...)``) rather than its ``.module``, or DDP cannot synchronise
    gradients; :attr:`module` is the unwrapped model (e.g. for generation).
    ``run_config`` is the whole run's config, recorded (without secrets) in
    ``exp_dir/config.yaml``, the checkpoints and wandb.  ``state_dict_fn``
    chooses what of the model a checkpoint holds (:func:`full_state_dict`, or
    :func:`trainable_state_dict` for LoRA); a partial one is loaded
    non-strictly.  ``fingerprint`` decides which checkpoints may be resumed (see
    the module docstring).

    Files in ``exp_dir``: ``config.yaml``, ``metrics.jsonl`` (one JSON per log
    or validation event), ``checkpoints/step_N.pt`` (the last ``keep_last``),
    ``last.pt``, ``best.pt`` (best ``best_metric`` so far), ``wandb/``.
    """

    def __init__(self, model: nn.Module, step_fn: StepFn, cfg: TrainerConfig | Mapping | DictConfig, *,
                 run_config: Mapping | DictConfig | None = None, state_dict_fn: StateDictFn = full_state_dict,
                 fingerprint: str | None = None):
        self.cfg = cfg = TrainerConfig.from_config(cfg)
        if cfg.exp_dir is None:
            raise ValueError("trainer.exp_dir is not set")
        if cfg.max_steps is None and cfg.max_epochs is None:
            raise ValueError("set trainer.max_steps, trainer.max_epochs or both")
        self.exp_dir = Path(cfg.exp_dir)
        self.ckpt_dir = self.exp_dir / "checkpoints"
        self.step_fn, self.state_dict_fn = step_fn, state_dict_fn
        self.rank, self.world_size, self.device = setup_distributed(cfg.device)

        self.amp_dtype = None
        if cfg.amp != "none" and self.device.type != "cuda":
            self._info("amp=%s asked for, but autocast runs only on CUDA: training in float32 on %s",
                       cfg.amp, self.device)
        elif cfg.amp != "none":
            if cfg.amp == "fp16" and self.world_size > 1 and cfg.parallel == "fsdp":
                raise ValueError("trainer.amp=fp16 is not supported with FSDP; use bf16")
            self.amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.module = model.to(self.device)
        self.model = self._wrap(self.module)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no parameter with requires_grad")
        self.optimizer = self._optimizer()

        config = OmegaConf.to_container(run_config, resolve=True) if isinstance(run_config, DictConfig) \
            else dict(run_config or {})
        config["trainer"] = dataclasses.asdict(cfg)
        self.config_record = drop_secrets(config)
        # What a checkpoint may be resumed under: the stage's fingerprint (the config keys it reads and the
        # content of its inputs: local/bin/stages.py), or for a trainer used on its own its whole config;
        # _plan adds the schedule.
        self._base_fingerprint = fingerprint or value_digest(
            {**config, "trainer": {k: v for k, v in config["trainer"].items() if k not in WATCHING + LENGTHS}})
        self.fingerprint = self._base_fingerprint

        self.step = self.epoch = self.batches_in_epoch = 0
        self.best: float | None = None
        self.best_step: int | None = None
        self.metrics: dict[str, float] = {}
        self.lr = cfg.lr
        self._saved_step = self._valid_step = None
        self.start_step = 0  # where this process began: > 0 when it resumed a checkpoint
        self._wandb = self._wandb_id = None
        self._window: dict[str, list[float]] = {}
        self._window_steps, self._window_start = 0, time.monotonic()

    # -- setup --

    def _info(self, msg: str, *args) -> None:
        if self.rank == 0:
            log.info(msg, *args)

    def _wrap(self, module: nn.Module) -> nn.Module:
        cfg = self.cfg
        if self.world_size == 1:
            return module
        if cfg.parallel == "ddp":
            return nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        units = [m for m in module.modules() if type(m).__name__ in cfg.fsdp_layers]
        if cfg.fsdp_layers and not units:
            raise ValueError(f"trainer.fsdp_layers: the model has no module of class {cfg.fsdp_layers}")
        self._info("FSDP units: %d modules of class %s", len(units), sorted({type(m).__name__ for m in units}))
        for unit in reversed(units):  # inner units first
            fully_shard(unit, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters.

        With ``no_decay_bias_norm`` the tensors of fewer than 2 dimensions
        (biases, norm scales, scalar gates) get no weight decay: decaying them
        toward 0 only fights the normalisation, it does not regularise.
        """
        cfg = self.cfg
        groups = [{"params": self.params}]
        if cfg.no_decay_bias_norm:
            groups = [g for g in ({"params": [p for p in self.params if p.ndim >= 2]},
                                  {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0})
                      if g["params"]]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)

    def _plan(self, loader: Iterable) -> None:
        """Total steps (for the schedule and the progress bar) and warm-up steps."""
        cfg = self.cfg
        self.total_steps = planned_steps(cfg, loader)
        if self.total_steps is None and (cfg.schedule != "constant" or 0 < cfg.warmup < 1):
            raise ValueError(f"schedule {cfg.schedule!r} / warm-up ratio {cfg.warmup} need the number of steps: "
                             "set trainer.max_steps (the training loader has no len())")
        self.warmup_steps = int(cfg.warmup) if cfg.warmup >= 1 else round(cfg.warmup * (self.total_steps or 0))
        # The length of a run matters to a resume only through the schedule: a constant one extended
        # resumes exactly; a cosine over another number of steps is another run.
        self.fingerprint = value_digest([self._base_fingerprint, cfg.schedule, self.warmup_steps,
                                         None if cfg.schedule == "constant" else self.total_steps])

    # -- checkpoints --

    def _save(self, loader: Iterable, best: bool) -> None:
        model_state = self.state_dict_fn(self.module)
        optim_state = get_optimizer_state_dict(self.module, self.optimizer, options=FULL)
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            path = self.ckpt_dir / f"step_{self.step}.pt"
            save_atomic({
                "model": model_state, "optimizer": optim_state, "scaler": self.scaler.state_dict(),
                "step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                "loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
                "best": {"value": self.best, "step": self.best_step, "metric": self.cfg.best_metric},
                "wandb_id": self._wandb_id, "config": self.config_record, "fingerprint": self.fingerprint,
            }, path)
            link_atomic(path, self.ckpt_dir / "last.pt")
            if best:
                link_atomic(path, self.ckpt_dir / "best.pt")
            if self.cfg.keep_last:
                steps = sorted(int(p.stem.split("_")[1]) for p in self.ckpt_dir.glob("step_*.pt"))
                for old in steps[:-self.cfg.keep_last]:
                    (self.ckpt_dir / f"step_{old}.pt").unlink()
            log.info("saved %s%s", path, " (best)" if best else "")
        self._saved_step = self.step
        if self.world_size > 1:
            dist.barrier()

    def _resume(self, loader: Iterable) -> None:
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            self._wandb_id = uuid.uuid4().hex[:8]
            return
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("fingerprint") != self.fingerprint:
            # Resuming weights trained on other data or under another config would pass them off as this
            # run's: start over, and keep the old run where the user can find it.
            changes = config_changes(ckpt.get("config") or {}, self.config_record)
            moved = self._set_aside(str(ckpt.get("fingerprint") or "unknown"))
            log.warning("%s was written by a run with %s; not resuming it: training from the start "
                        "(the old run is in %s)", path,
                        f"another config ({'; '.join(changes)})" if changes else "other inputs (data, models)",
                        moved)
            self._wandb_id = uuid.uuid4().hex[:8]
            return
        partial = self.state_dict_fn is not full_state_dict
        result = set_model_state_dict(self.module, ckpt["model"],
                                      options=StateDictOptions(full_state_dict=True, strict=not partial))
        if result.unexpected_keys:
            raise RuntimeError(f"{path}: the checkpoint has weights the model does not: "
                               f"{result.unexpected_keys[:5]}")
        set_optimizer_state_dict(self.module, self.optimizer, ckpt["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
        if ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch, self.batches_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batches_in_epoch"]
        self.best, self.best_step = ckpt["best"]["value"], ckpt["best"]["step"]
        self._wandb_id = ckpt["wandb_id"] or uuid.uuid4().hex[:8]
        self._saved_step = self._valid_step = self.start_step = self.step
        if ckpt["loader"] is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(ckpt["loader"])
        elif self.batches_in_epoch:
            log.warning("the training loader cannot restore its position: epoch %d starts over", self.epoch)
            self.batches_in_epoch = 0
        if self.batches_in_epoch and hasattr(loader, "__len__") and self.batches_in_epoch >= len(loader):
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0  # it stopped on an epoch's last batch
        self._info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch,
                   self.batches_in_epoch)

    def _set_aside(self, old_fingerprint: str) -> Path:
        """Move the files of a superseded run (checkpoints, metrics, config) to ``exp_dir/superseded/``."""
        dest = self.exp_dir / "superseded" / f"{time.strftime('%Y%m%d-%H%M%S')}-{old_fingerprint[:8]}"
        if self.world_size > 1:
            dist.barrier()  # every rank has read last.pt before rank 0 moves it
        if self.rank == 0:
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("checkpoints", "metrics.jsonl", "config.yaml", "wandb"):
                if (self.exp_dir / name).exists():
                    os.replace(self.exp_dir / name, dest / name)
        if self.world_size > 1:
            dist.barrier()
        return dest

    # -- logging --

    def _start_logs(self) -> None:
        """config.yaml, metrics.jsonl cut back to the resumed step (a killed run logged past it), wandb."""
        if self.rank != 0:
            return
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.exp_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(self.config_record)))
        metrics = self.exp_dir / "metrics.jsonl"
        if metrics.exists():
            kept = []
            for line in metrics.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= self.step:
                        kept.append(line + "\n")
                except (ValueError, KeyError):
                    continue  # a line cut short by the kill
            write_text_atomic(metrics, "".join(kept))
        if self.cfg.wandb.enabled:
            import wandb

            w = self.cfg.wandb
            self._wandb = wandb.init(project=w.project, name=w.name or self.exp_dir.name, id=self._wandb_id,
                                     resume="allow", dir=str(self.exp_dir),
                                     mode=w.mode or os.environ.get("WANDB_MODE", "offline"),
                                     config=self.config_record)

    def _gather(self, sums: dict[str, list[float]]) -> dict[str, float]:
        """Means over ranks of {name: [sum, count]} (ranks may log different names)."""
        parts = [sums]
        if self.world_size > 1:
            parts = [None] * self.world_size
            dist.all_gather_object(parts, sums)
        total: dict[str, list[float]] = {}
        for part in parts:
            for k, (s, n) in part.items():
                acc = total.setdefault(k, [0.0, 0])
                acc[0], acc[1] = acc[0] + s, acc[1] + n
        return {k: s / n for k, (s, n) in total.items()}

    def _emit(self, metrics: dict[str, float], split: str) -> None:
        self.metrics.update(metrics)
        if self.rank != 0:
            return
        record = {"split": split, "step": self.step, "epoch": self.epoch, **metrics}
        with open(self.exp_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({**metrics, "epoch": self.epoch}, step=self.step)
        total = f"/{self.total_steps}" if self.total_steps else ""
        log.info("step %d%s epoch %d | %s", self.step, total, self.epoch,
                 " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def _log_train(self, bar: tqdm) -> None:
        metrics = self._gather(self._window)
        metrics["lr"] = self.lr
        metrics["sec_per_step"] = (time.monotonic() - self._window_start) / self._window_steps
        self._window, self._window_steps, self._window_start = {}, 0, time.monotonic()
        bar.set_postfix(loss=f"{metrics['loss']:.4g}", lr=f"{self.lr:.3g}")
        self._emit(metrics, "train")

    # -- training --

    @contextlib.contextmanager
    def _gradient_sync(self, sync: bool):
        """Synchronise gradients across ranks only on the last batch of a step."""
        if isinstance(self.model, nn.parallel.DistributedDataParallel) and not sync:
            with self.model.no_sync():
                yield
            return
        if self.world_size > 1 and self.cfg.parallel == "fsdp":
            self.model.set_requires_gradient_sync(sync)
        yield

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_step(self, batches: list) -> None:
        cfg = self.cfg
        seed_everything(int(np.random.SeedSequence([cfg.seed, self.rank, self.step]).generate_state(1)[0]))
        self.lr = cfg.lr * lr_factor(self.step, self.total_steps, self.warmup_steps, cfg.schedule,
                                     cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        losses, logs = [], {}
        for i, batch in enumerate(batches):
            with self._gradient_sync(i == len(batches) - 1):
                with self._autocast():
                    loss, batch_logs = self.step_fn(self.model, to_device(batch, self.device))
                if loss.ndim:
                    raise ValueError(f"step_fn must return a scalar loss, not one of shape {tuple(loss.shape)}")
                self.scaler.scale(loss / len(batches)).backward()
            losses.append(loss.detach().float())
            for k, v in batch_logs.items():
                logs[k] = logs.get(k, 0.0) + _scalar(v) / len(batches)

        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_norm or math.inf)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a sharded norm
            grad_norm = grad_norm.full_tensor()
        loss = torch.stack(losses).mean()
        bad = (~torch.isfinite(loss)).float()
        if self.world_size > 1:
            dist.all_reduce(bad)
        # fp16: an inf gradient is the scaler's business (it skips the step and lowers the scale)
        if bad.item() or (self.amp_dtype != torch.float16 and not torch.isfinite(grad_norm)):
            self._raise_non_finite(batches, loss.item(), grad_norm.item())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        for k, v in {"loss": loss.item(), "grad_norm": grad_norm.item(), **logs}.items():
            acc = self._window.setdefault(k, [0.0, 0])
            acc[0], acc[1] = acc[0] + v, acc[1] + 1
        self._window_steps += 1

    def _raise_non_finite(self, batches: list, loss: float, grad_norm: float) -> None:
        utts = [u for b in batches if isinstance(b, Mapping) for u in b.get("utts", [])]
        if self.world_size > 1:
            every = [None] * self.world_size
            dist.all_gather_object(every, utts)
            utts = [u for part in every for u in part]
        where = f"utterances {utts}" if utts else "batches without 'utts'"
        raise NonFiniteError(f"non-finite training at step {self.step + 1} (epoch {self.epoch}): loss {loss}, "
                             f"grad norm {grad_norm}; {where}. Nothing was saved for this step; "
                             f"the last good checkpoint is {self.ckpt_dir / 'last.pt'}")

    @torch.no_grad()
    def _validate(self, loader: Iterable, valid_fn: ValidFn | None) -> bool:
        """Validate, log ``valid_*``, and say whether ``best_metric`` improved."""
        self.model.eval()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)  # the whole set, every time
        sums: dict[str, list[float]] = {}
        with self._autocast():
            if valid_fn is not None:
                sums = {k: [_scalar(v), 1] for k, v in valid_fn(self.model, loader).items()}
            else:  # the mean of step_fn's loss and logs over the batches
                for batch in loader:
                    loss, logs = self.step_fn(self.model, to_device(batch, self.device))
                    for k, v in {"loss": loss, **logs}.items():
                        acc = sums.setdefault(k, [0.0, 0])
                        acc[0], acc[1] = acc[0] + _scalar(v), acc[1] + 1
        self.model.train()
        metrics = {f"valid_{k}": v for k, v in self._gather(sums).items()}
        self._valid_step = self.step
        self._emit(metrics, "valid")
        if self.cfg.best_metric not in metrics:
            raise KeyError(f"trainer.best_metric {self.cfg.best_metric!r} is not among the validation "
                           f"results {sorted(metrics)}")
        value = metrics[self.cfg.best_metric]
        if self.best is None or (value < self.best if self.cfg.best_mode == "min" else value > self.best):
            self.best, self.best_step = value, self.step
            return True
        return False

    def _after_step(self, loader: Iterable, valid_loader: Iterable | None, valid_fn: ValidFn | None,
                    bar: tqdm) -> None:
        cfg = self.cfg
        bar.update(1)
        if self.step % cfg.log_every == 0:
            self._log_train(bar)
        improved = False
        if valid_loader is not None and cfg.valid_every and self.step % cfg.valid_every == 0:
            improved = self._validate(valid_loader, valid_fn)
        if (cfg.save_every and self.step % cfg.save_every == 0) or improved:
            self._save(loader, best=improved)

    def _done(self) -> bool:
        cfg = self.cfg
        return ((cfg.max_steps is not None and self.step >= cfg.max_steps)
                or (cfg.max_epochs is not None and self.epoch >= cfg.max_epochs))

    def fit(self, train_loader: Iterable, valid_loader: Iterable | None = None,
            valid_fn: ValidFn | None = None) -> dict[str, float]:
        """Train until max_steps/max_epochs, resuming from ``exp_dir/checkpoints/last.pt`` if it exists.

        ``train_loader`` is iterated once per epoch; when it has
        ``state_dict``/``load_state_dict`` its position is checkpointed, and
        ``set_epoch(e)`` is called before a fresh epoch.  ``valid_fn(model,
        valid_loader) -> {name: value}`` (default: the mean of step_fn's loss
        and logs) runs every ``valid_every`` steps and at the end, on every
        rank; its values are averaged over ranks and logged as ``valid_<name>``.
        Returns the last logged train and validation values.
        """
        cfg = self.cfg
        self._plan(train_loader)
        self._resume(train_loader)
        self._start_logs()
        self._info("training %s: %d of %d parameters trainable, %s, world size %d, %s steps, amp %s",
                   self.exp_dir, sum(p.numel() for p in self.params),
                   sum(p.numel() for p in self.module.parameters()), self.device, self.world_size,
                   self.total_steps or "?", self.amp_dtype or "off")
        if self._done():
            self._info("%s is trained already (step %d, epoch %d)", self.exp_dir, self.step, self.epoch)
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.exp_dir.name, unit="step",
                   disable=None if (self.rank == 0 and cfg.progress) else True, dynamic_ncols=True)
        try:
            while not self._done():
                if self.batches_in_epoch == 0 and hasattr(train_loader, "set_epoch"):
                    train_loader.set_epoch(self.epoch)
                batches, empty = [], True
                for batch in train_loader:
                    empty = False
                    self.batches_in_epoch += 1
                    batches.append(batch)
                    if len(batches) == cfg.grad_accum:
                        self._train_step(batches)
                        batches = []
                        self._after_step(train_loader, valid_loader, valid_fn, bar)
                        if self._done():
                            break
                else:
                    if empty:
                        raise RuntimeError(f"the training loader yielded no batch in epoch {self.epoch}")
                    if batches:  # the epoch's remainder: a step of fewer batches
                        self._train_step(batches)
                        self._after_step(train_loader, valid_loader, valid_fn, bar)
                    self.epoch, self.batches_in_epoch = self.epoch + 1, 0
            if self._window_steps:
                self._log_train(bar)
            improved = False
            if valid_loader is not None and self._valid_step != self.step:
                improved = self._validate(valid_loader, valid_fn)
            if self._saved_step != self.step or improved:
                self._save(train_loader, best=improved)
        finally:
            bar.close()
            if self._wandb is not None:
                self._wandb.finish()
                self._wandb = None
        return dict(self.metrics)
