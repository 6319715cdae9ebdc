"""Checkpoint files: what of a model they hold, and writing them so that a kill never corrupts one.

Full (unsharded) state dicts come from :mod:`torch.distributed.checkpoint.state_dict`: one code
path for one process, DDP and FSDP.  A file is written under a temp name and renamed; ``last.pt``
and ``best.pt`` are hard links swapped in by rename, so a crash at any moment leaves the previous
checkpoint intact.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model, gathered to CPU (collective under FSDP: every rank calls it)."""
    return get_model_state_dict(module, options=FULL)


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters being trained, e.g. LoRA and a connector next to a frozen 7B LM.

    Frozen weights and buffers are not saved: on resume they come from the model
    as the stage built it (the pretrained checkpoint), so the checkpoint stays
    small.  Do not use it when frozen tensors change in training (an EMA teacher).
    """
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()
            for name, p in module.named_parameters() if p.requires_grad}


def load_weights(path: Path | str, model: nn.Module, strict: bool = True) -> dict:
    """Put a trainer checkpoint's weights into a plain model (for decoding); returns step/epoch/best."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"], strict=strict)
    return {k: ckpt[k] for k in ("step", "epoch", "best")}


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save under a temp name, synced to disk, then renamed: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def link_atomic(src: Path, dst: Path) -> None:
    """Make ``dst`` name the same file as ``src``: a hard link (a copy where links fail), swapped in."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
