"""Padded frame sequences: masks and frame stacking, shared by encoders and connectors.

Every sequence in a batch is a pair (frames [B, T, D], lengths [B]).  The
positions past an utterance's length hold whatever the padding produced; the
functions here zero them before they can leak into a valid position, which is
what makes an utterance's output the same in any batch (and the same as from
the feature cache, which stores utterances one by one).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, max_len] bool, True at valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def zero_padding(frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``frames`` with every position at or past its utterance's length set to 0."""
    return frames * length_mask(lengths, frames.shape[1]).unsqueeze(-1).to(frames.dtype)


def stack_frames(frames: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate each run of ``k`` consecutive frames into one: [B, T, D] -> [B, ceil(T/k), k*D].

    The rate drops ``k`` times and nothing is thrown away (a following linear
    layer can learn any pooling, average pooling included).  A last, partial
    run is completed with zeros; lengths become ceil(length / k).
    """
    if k == 1:
        return frames, lengths
    b, t, d = frames.shape
    frames = F.pad(zero_padding(frames, lengths), (0, 0, 0, (-t) % k))
    return frames.reshape(b, -1, k * d), torch.div(lengths + k - 1, k, rounding_mode="floor")


def fit_length(frames: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or zero-pad the time axis of [B, T, D] to ``length``."""
    t = frames.shape[1]
    return frames[:, :length] if t >= length else F.pad(frames, (0, 0, 0, length - t))
