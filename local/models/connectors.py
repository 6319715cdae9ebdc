"""Connectors: encoder frames -> token embeddings of the LLM's width.

Both take and return a padded sequence (frames [B, T, D], lengths [B]) and are
built with ``in_dim`` (the encoder side, known only once the encoder is) and
``out_dim`` (the LLM's hidden size) filled in by :func:`local.models.alm.build_alm`;
the rest comes from ``conf/model/connector/*.yaml``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from local.models.frames import fit_length, length_mask, stack_frames, zero_padding


class TransformerConnector(nn.Module):
    """C²SER's connector: a small Transformer encoder, then a Linear to the LLM width.

    Paper / official code: 4 blocks, 4 heads, FFN 2560, width 1024.  Inputs of
    another width are projected to ``d_model`` first.  Pre-norm blocks with a
    final LayerNorm; no positional encoding is added, the encoder frames
    already carry theirs.  Padded frames are excluded as attention keys.
    """

    def __init__(self, in_dim: int, out_dim: int, d_model: int = 1024, layers: int = 4, heads: int = 4,
                 ffn: int = 2560, dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        self.proj = nn.Linear(in_dim, d_model) if in_dim != d_model else nn.Identity()
        block = nn.TransformerEncoderLayer(d_model, heads, ffn, dropout, activation=activation,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.out = nn.Linear(d_model, out_dim)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = ~length_mask(lengths, frames.shape[1])
        x = self.encoder(self.proj(frames), src_key_padding_mask=pad)
        return self.out(x), lengths


class MLPAdapter(nn.Module):
    """MERaLiON-AudioLLM v1's adapter (AudioLLM-Reasoning §3.2; shared/reasoning_system.md B.2)::

        LayerNorm(d)  ->  concatenate s consecutive frames          [B, T/s, d·s]
        Linear(d·s -> d), SiLU, Dropout                              (MERaLiON's ``mlp_adapter``)
        Linear(d -> 4d), SiLU, Dropout, Linear(4d -> H)              (its ``speech_llm_proj``)

    The paper's "MLP with two hidden layers and SiLU" are the widths d and 4d of the encoder (d), so no
    width is a setting.  MERaLiON applies the LayerNorm (``ln_speech``) in its parent model before the
    adapter; it sits here, on the valid frames, which are then zero-padded.  ``s`` is either given
    (``stack``) or follows from a fixed token budget: ``num_tokens`` out of ``in_frames``
    (Whisper's 1500 frames -> 100 speech tokens, s = 15; 10 emotion tokens, s = 150).  With a budget
    every utterance gets exactly ``num_tokens`` tokens, as with 30 s padding: shorter inputs are
    zero-padded to ``in_frames``.
    """

    def __init__(self, in_dim: int, out_dim: int, stack: int | None = None, num_tokens: int | None = None,
                 in_frames: int | None = None, dropout: float = 0.1):
        super().__init__()
        if (stack is None) == (num_tokens is None):
            raise ValueError("MLPAdapter: give exactly one of stack or num_tokens (with in_frames)")
        if num_tokens is not None:
            if not in_frames or in_frames % num_tokens:
                raise ValueError(f"MLPAdapter: in_frames ({in_frames}) must be a multiple of num_tokens ({num_tokens})")
            stack = in_frames // num_tokens
        self.k, self.num_tokens, self.in_frames = stack, num_tokens, in_frames
        self.norm = nn.LayerNorm(in_dim)
        self.mlp_adapter = nn.Sequential(nn.Linear(stack * in_dim, in_dim), nn.SiLU(), nn.Dropout(dropout))
        self.llm_proj = nn.Sequential(nn.Linear(in_dim, 4 * in_dim), nn.SiLU(), nn.Dropout(dropout),
                                      nn.Linear(4 * in_dim, out_dim))

    def project(self, stacked: torch.Tensor) -> torch.Tensor:
        """Stacked frames [..., d·s] -> LLM embeddings [..., H]."""
        return self.llm_proj(self.mlp_adapter(stacked))

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = zero_padding(self.norm(frames), lengths)
        if self.num_tokens is not None:
            if frames.shape[1] > self.in_frames:
                raise ValueError(f"MLPAdapter: {frames.shape[1]} frames exceed its budget of in_frames={self.in_frames}")
            frames = fit_length(frames, self.in_frames)
            lengths = torch.full_like(lengths, self.in_frames)
        x, lengths = stack_frames(frames, lengths, self.k)
        return self.project(x), lengths
