"""Global mean/variance normalisation of encoder outputs, with training-set statistics.

ESPnet normalises its input features with statistics collected over the training set
(``global_mvn``); this does the same to the frames the encoders hand to the connectors.  A
frozen encoder can put what matters in small deviations around a large offset shared by all
utterances: the tiny random Whisper of mini_lime has per-dimension standard deviations from
0.04 to 1.1 after its final LayerNorm.  Gradient descent on such inputs is ill-conditioned: a
C²SER connector with a linear head, trained for one mini_lime SFT budget (520 steps) on the
cached Whisper frames, classifies 28 % of the training set correctly as they are and 55 %
once they are standardised.  The map is affine, so a connector could learn it: it changes
the conditioning, not what the model can express.

The statistics are computed once, from the encoders' outputs on the training set at the start
of stage 6 (:meth:`FeatureNorm.fit`), and saved with the model; until then it passes frames
through unchanged.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn

from local.models.frames import length_mask, zero_padding

MIN_STD = 1e-5  # a dimension that never moves is centred, not blown up

Features = Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (frames [B, T, D], lengths [B])


class FeatureNorm(nn.Module):
    """Per-dimension mean and standard deviation of each named encoder output, as buffers."""

    def __init__(self, dims: Mapping[str, int]):
        super().__init__()
        self.names = list(dims)
        for name, dim in dims.items():
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))

    def forward(self, name: str, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if name not in self.names or not bool(self.fitted):
            return frames
        mean, std = getattr(self, f"{name}_mean"), getattr(self, f"{name}_std")
        return zero_padding((frames - mean.to(frames.dtype)) / std.to(frames.dtype), lengths)

    @torch.no_grad()
    def fit(self, batches: Iterable[Features]) -> None:
        """Statistics over every valid frame of ``batches`` (summed over DDP ranks when there are several)."""
        sums = {n: torch.zeros(3, getattr(self, f"{n}_mean").numel(), dtype=torch.float64) for n in self.names}
        for feats in batches:
            for name in self.names:
                if name not in feats:
                    continue
                frames, lengths = feats[name]
                valid = frames[length_mask(lengths.to(frames.device), frames.shape[1])].double().cpu()
                sums[name] += torch.stack([torch.full_like(valid[0], len(valid)), valid.sum(0),
                                           (valid ** 2).sum(0)]) if len(valid) else 0
        for name, s in sums.items():
            if dist.is_available() and dist.is_initialized():
                shared = s.cuda() if dist.get_backend() == "nccl" else s
                dist.all_reduce(shared)
                s = shared.cpu()
            count, total, squares = s
            if not count.any():
                raise ValueError(f"feature normalisation: no '{name}' frames to take statistics from")
            mean = total / count
            std = (squares / count - mean ** 2).clamp_min(0).sqrt().clamp_min(MIN_STD)
            getattr(self, f"{name}_mean").copy_(mean)
            getattr(self, f"{name}_std").copy_(std)
        self.fitted.fill_(True)
