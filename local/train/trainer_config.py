"""What a training run is: the trainer's settings and the learning-rate schedule they give.

Apart from the loop (:mod:`local.train.loop`) because stages read these before a trainer exists:
SFT sizes its linear schedule with :func:`planned_steps`, and tests check the schedule as a
pure function.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from omegaconf import DictConfig, OmegaConf


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "emoreason"
    name: str | None = None      # run name; None: the exp_dir's name
    mode: str | None = None      # offline | online | disabled; None: $WANDB_MODE, else offline


@dataclass
class TrainerConfig:
    """Every knob of the loop; ``conf/trainer/cpu.yaml`` documents each one."""

    exp_dir: str | None = None
    max_steps: int | None = None
    max_epochs: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    no_decay_bias_norm: bool = True
    warmup: float = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    clip_norm: float | None = 1.0
    amp: str = "none"
    device: str = "auto"
    parallel: str = "ddp"
    fsdp_layers: list[str] = field(default_factory=list)
    find_unused_parameters: bool = False
    seed: int = 0
    log_every: int = 10
    valid_every: int | None = None
    save_every: int | None = 1000
    keep_last: int | None = 3
    best_metric: str = "valid_loss"
    best_mode: str = "min"
    progress: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        choices = {"schedule": ("constant", "linear", "cosine"), "amp": ("none", "bf16", "fp16"),
                   "device": ("auto", "cpu", "cuda"), "parallel": ("ddp", "fsdp"), "best_mode": ("min", "max")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"trainer.{name} must be one of {allowed}, not {getattr(self, name)!r}")
        if self.grad_accum < 1:
            raise ValueError(f"trainer.grad_accum must be >= 1, not {self.grad_accum}")
        if self.warmup < 0:
            raise ValueError(f"trainer.warmup must be >= 0, not {self.warmup}")
        self.betas = tuple(self.betas)
        self.fsdp_layers = list(self.fsdp_layers)

    @classmethod
    def from_config(cls, cfg: TrainerConfig | Mapping | DictConfig) -> TrainerConfig:
        """From a Hydra section or a dict; an unknown key is an error (a typo would otherwise be ignored)."""
        if isinstance(cfg, cls):
            return cfg
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg = dict(cfg)
        for klass, values, prefix in ((cls, cfg, "trainer"), (WandbConfig, dict(cfg.get("wandb") or {}),
                                                              "trainer.wandb")):
            unknown = sorted(set(values) - {f.name for f in dataclasses.fields(klass)})
            if unknown:
                raise ValueError(f"unknown {prefix} key(s) {unknown}; known: "
                                 f"{sorted(f.name for f in dataclasses.fields(klass))}")
        cfg["wandb"] = WandbConfig(**dict(cfg.get("wandb") or {}))
        return cls(**cfg)


def lr_factor(step: int, total: int | None, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    Warm-up: (step + 1) / warmup, so the first update is not wasted at lr 0.
    Then, with p = (step - warmup) / (total - warmup) clipped to [0, 1]:
    constant 1; linear 1 - p; cosine (1 + cos(pi p)) / 2; the last two scaled
    into [min_ratio, 1].
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return min_ratio + (1.0 - min_ratio) * shape


def planned_steps(cfg: TrainerConfig, loader: Iterable) -> int | None:
    """Optimizer steps a run takes: the fewer of max_steps and max_epochs' worth (None when neither is known)."""
    totals = [cfg.max_steps] if cfg.max_steps is not None else []
    if cfg.max_epochs is not None and hasattr(loader, "__len__"):
        totals.append(cfg.max_epochs * math.ceil(len(loader) / cfg.grad_accum))
    return min(totals) if totals else None
