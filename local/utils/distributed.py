"""What a process of a torchrun job needs to agree on with the others, usable from any layer.

Outside a process group every helper is a no-op, so code that calls them runs unchanged in one process.
torch is imported only where a process group can exist: ``local.bin.stamp`` (run.sh's up-to-date check)
reaches this module and must start in a fraction of a second.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch


def join_process_group(device: str) -> None:
    """Under torchrun (WORLD_SIZE > 1), join its process group (NCCL on CUDA, gloo on the CPU) unless joined;
    elsewhere nothing.  Every stage's entry point does this first (local.utils.hydra.entry_point)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    if dist.get_rank() != 0:  # one copy of the log: the other ranks say only what goes wrong
        logging.getLogger().setLevel(logging.WARNING)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    dist = sys.modules.get("torch.distributed")  # never imported: no process group
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first, the others after it: a file the block writes once (a tokenizer, a feature
    cache) is written by one process and then found by the rest, instead of raced for by all of them."""
    rank, world = rank_and_world()
    if world > 1 and rank != 0:
        sys.modules["torch.distributed"].barrier()
    yield
    if world > 1 and rank == 0:
        sys.modules["torch.distributed"].barrier()


def global_mean(mean: "torch.Tensor", count: "int | torch.Tensor") -> "torch.Tensor":
    """A rank's mean over its ``count`` items, rescaled so that DDP's average of the ranks' gradients is the
    gradient of the mean over every rank's items.

    A token-level loss is a mean over the target tokens of the batch; split over ranks, the halves hold
    different numbers of tokens, and the average of their means is not the mean of the whole batch.  With
    this the loss, the gradient and so the training are those of one process on the whole global batch.
    """
    rank, world = rank_and_world()
    if world == 1:
        return mean
    import torch
    import torch.distributed as dist

    total = torch.as_tensor(count, dtype=torch.float64, device=mean.device).clone()
    if dist.get_backend() == "nccl" and total.device.type != "cuda":
        total = total.cuda()
    dist.all_reduce(total)
    return mean * (float(count) * world / float(total.item()))


def on_main_process(write) -> None:
    """Call ``write()`` on rank 0 only, and let no rank go on before it is done: a model dir or a summary is
    written once, and whatever runs next on any rank finds it whole."""
    rank, world = rank_and_world()
    if rank == 0:
        write()
    if world > 1:
        sys.modules["torch.distributed"].barrier()
