"""The process a run lives in: its device, its place in a torchrun process group, its seeds."""
from __future__ import annotations

import os
import random
from typing import Any, Mapping

import numpy as np
import torch

from local.utils.distributed import join_process_group, rank_and_world


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all CUDA devices too); call it before building a model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor (in nested dicts, lists, tuples) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; joins torchrun's process group when there is one."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    join_process_group("cuda" if cuda else "cpu")
    return (*rank_and_world(), dev)
