"""The WeNet Transformer encoder blocks C²SER's release is made of (its Whisper encoder and its connector).

Written from the official code (``zxzhao0/C2SER`` @ 9316974, ``wenet/transformer/*``) so the released
weights compute what they computed there: pre-LN blocks with LayerNorm eps 1e-5, attention ``q·kᵀ/√d_k``
with the softmax in float32, WeNet's erf GELU, Whisper's positional table added unscaled, the connector's
sinusoids added to ``x·√d``.  transformers' ``WhisperEncoder`` is the same maths but insists on 3000 mel
frames and uses another GELU, so it cannot stand in.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Activation(nn.Module):
    """ReLU, or WeNet's ``New_gelu4npu`` (swish.py:29-34) written out as it is there."""

    def __init__(self, kind: str):
        super().__init__()
        if kind not in ("gelu", "relu"):
            raise ValueError(f"unsupported WeNet activation '{kind}' (gelu or relu)")
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))) if self.kind == "gelu" else F.relu(x)


class _Attention(nn.Module):
    """WeNet ``MultiHeadedAttention``: scores / sqrt(d_k), softmax in float32.  No mask: one
    unpadded utterance, where WeNet's all-true mask changes nothing."""

    def __init__(self, dim: int, heads: int, key_bias: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.d_k = heads, dim // heads
        self.linear_q, self.linear_k = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=key_bias)
        self.linear_v, self.linear_out = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (lin(x).view(b, t, self.heads, self.d_k).transpose(1, 2)
                   for lin in (self.linear_q, self.linear_k, self.linear_v))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        attn = torch.softmax(scores.float(), dim=-1).type_as(v)
        return self.linear_out(torch.matmul(attn, v).transpose(1, 2).reshape(b, t, -1))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, units: int, activation: str):
        super().__init__()
        self.w_1, self.activation, self.w_2 = nn.Linear(dim, units), _Activation(activation), nn.Linear(units, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.activation(self.w_1(x)))


class _Layer(nn.Module):
    """Pre-LN WeNet ``TransformerEncoderLayer`` (LayerNorm eps 1e-5)."""

    def __init__(self, dim: int, heads: int, units: int, key_bias: bool, activation: str):
        super().__init__()
        self.self_attn = _Attention(dim, heads, key_bias)
        self.feed_forward = _FeedForward(dim, units, activation)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-5), nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.norm1(x))
        return x + self.feed_forward(self.norm2(x))


class _PositionalEncoding(nn.Module):
    """``x * xscale + pe[:T]``: Whisper's table with scale 1 (``abs_pos_whisper``), the
    ESPnet one with sqrt(d) (``abs_pos``, embedding.py:46,77)."""

    def __init__(self, length: int, dim: int, whisper: bool):
        super().__init__()
        self.xscale = 1.0 if whisper else math.sqrt(dim)
        self.register_buffer("pe", (whisper_table if whisper else espnet_table)(length, dim)[None])

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"{x.shape[1]} frames exceed the positional table ({self.pe.shape[1]})")
        return x * self.xscale + self.pe[:, :x.shape[1]].to(x.dtype)


def whisper_table(length: int, dim: int) -> Tensor:
    """openai-whisper's sinusoids (embedding.py:157-162)."""
    increment = math.log(10000) / (dim // 2 - 1)
    scaled = torch.arange(length)[:, None] * torch.exp(-increment * torch.arange(dim // 2))[None]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def espnet_table(length: int, dim: int) -> Tensor:
    """Interleaved sin/cos (embedding.py:50-57)."""
    pe = torch.zeros(length, dim)
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
    return pe


class _Input(nn.Module):
    """``conv1d2`` (Whisper's two convs, k3, stride 1 then 2, padding 1: 50 frames/s, subsampling.py:134-139)
    or ``linear`` (Linear + LayerNorm + Dropout, subsampling.py:85-89), then the positional encoding."""

    def __init__(self, conv: bool, idim: int, dim: int, pe_len: int):
        super().__init__()
        if conv:
            self.conv = nn.Sequential(nn.Conv1d(idim, dim, 3, padding=1), _Activation("gelu"),
                                      nn.Conv1d(dim, dim, 3, stride=2, padding=1), _Activation("gelu"))
        else:
            self.out = nn.Sequential(nn.Linear(idim, dim), nn.LayerNorm(dim, eps=1e-5), nn.Dropout(0.1))
        self.pos_enc = _PositionalEncoding(pe_len, dim, whisper=conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.pos_enc(self.conv(x.transpose(1, 2)).transpose(1, 2) if hasattr(self, "conv") else self.out(x))


class WenetEncoder(nn.Module):
    """WeNet ``TransformerEncoder`` with ``normalize_before`` (the only layout the release uses)."""

    def __init__(self, conv_input: bool, idim: int, dim: int, heads: int, units: int, blocks: int,
                 key_bias: bool, activation: str, pe_len: int):
        super().__init__()
        self.embed = _Input(conv_input, idim, dim, pe_len)
        self.encoders = nn.ModuleList(_Layer(dim, heads, units, key_bias, activation) for _ in range(blocks))
        self.after_norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        for layer in self.encoders:
            x = layer(x)
        return self.after_norm(x)


class Downsample4(nn.Module):
    """``GxlConv1dSubsampling4`` (downsampler.py:39-77): left-padded convs, 50 -> 12.5 Hz."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.ConstantPad1d((2, 0), 0.0), nn.Conv1d(dim, dim, 3, 1), nn.GELU(),
            nn.ConstantPad1d((2, 0), 0.0), nn.Conv1d(dim, dim, 3, 2), nn.GELU(),
            nn.ConstantPad1d((2, 0), 0.0), nn.Conv1d(dim, dim, 3, 2), nn.GELU())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)
