"""Emotion2Vec-S: the emotion2vec / data2vec 2.0 audio encoder, loadable from the official checkpoints.

C²SER's acoustic encoder is emotion2vec (a data2vec 2.0 ``Data2VecMultiModel``
with the AUDIO modality encoder) trained further with a category-level
contrastive loss.  This module is that network, computing what the official
code computes, plus the loader of the released checkpoints (``emotion2vec_base``,
``emotion2vec_plus_*``: ``model.pt`` + ``config.yaml``) and our own save format.

Computation (official module names in brackets)::

    wav [B, T] ─ per-utterance waveform layer norm, when ``normalize`` (as the official inference)
      ─ 7-layer conv feature extractor, LayerNorm mode           [local_encoder]      50 frames/s
      ─ LayerNorm + Linear to D                                  [project_features]
      ─ x + stacked grouped convs (conv, LayerNorm, GELU)        [relative_positional_encoder]
      ─ 10 learned extra tokens prepended                        [extra_tokens]
      ─ LayerNorm, dropout, ``prenet_depth`` blocks               [context_encoder]
      ─ ``depth`` post-LN blocks                                  [blocks]
      ─ final LayerNorm (pre-LN configurations only)             [norm]
      → frames = outputs without the extra tokens; utterance = mean of the valid frames
      → plus models: Linear to 9 emotions on the utterance       [proj]

Every attention layer adds an ALiBi bias, -slope_h·|i-j| between frames and 0
to and from the extra tokens, times a learned per-head scale clamped at 0
[alibi_scale], shared by all layers unless ``learned_alibi_scale_per_layer``.

What comes from fairseq2 (0.8.1) and why: the conv feature extractor is
``fairseq2.models.wav2vec2.Wav2Vec2FeatureExtractor(layer_norm=True, bias=False)``
(conv without bias, LayerNorm over channels in fp32, GELU: exactly fairseq's
``ConvFeatureExtractionModel`` in ``layer_norm`` mode, with the same
output-length rule), and each positional convolution is a
``Wav2Vec2PositionEncoderLayer`` (grouped conv with "same" padding, LayerNorm
without affine, GELU: exactly one official ``relative_positional_encoder`` layer
for the odd kernel sizes every release uses, 95 // 5 = 19).  The rest is plain
torch because fairseq2 has no exact counterpart: its ``Wav2Vec2StackedPositionEncoder``
zeroes padding only before the first layer (padding then leaks into the
last frames), its ALiBi is the causal decoder variant without a learned scale,
its Transformer layers do not return the FFN outputs that data2vec targets
are built from, and extra tokens and data2vec's zero-masking with removal of
masked frames do not exist there.

One deliberate difference from the official code: in a padded batch the
official positional convolutions read the padded frames, so the last ~9
frames of a shorter utterance change with the batch it is in.  Here padded
frames are zeroed before every positional convolution, which makes a padded
batch give, per utterance, exactly what the official code gives for that
utterance alone (the way FunASR's inference runs it, one at a time).

Pre-training (data2vec 2.0 / emotion2vec) uses the pieces separately:

* :meth:`Emotion2VecS.normalize_waveform` (the official dataset normalises
  when ``normalize``), then :meth:`Emotion2VecS.local_features` once per batch:
  the student's CNN output is also the teacher's input (official
  ``ema_local_encoder: false``); ``clone_batch`` is a ``repeat_interleave`` of
  it (and of the frame lengths) before the student's ``encode``.
* :meth:`Emotion2VecS.encode` with a frame ``mask``: masked frames are zeroed
  before the positional convolutions and then removed (the official
  ``remove_masked`` student path); ``kept`` says which frames remain.  The
  teacher (an EMA copy in eval mode) calls ``encode`` without a mask.
* :class:`EncoderOutput` ``layer_results``: the FFN output of every main block,
  extra tokens included (``[:, num_extra_tokens:]`` drops them), from which the
  data2vec targets are averaged; ``x[:, :num_extra_tokens]`` are the extra
  tokens the utterance loss pools.
* Layer drop (``layerdrop``, ``prenet_layerdrop``) draws from torch's global
  RNG in training mode, so DDP ranks can skip different blocks.
"""
from __future__ import annotations

import ast
import json
import logging
import math
import os
import pickle
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from fairseq2.models.wav2vec2.feature_extractor import Wav2Vec2FeatureExtractor
from fairseq2.models.wav2vec2.position_encoder import Wav2Vec2PositionEncoderLayer
from fairseq2.nn import BatchLayout
from torch import Tensor, nn

from local.utils.atomic import write_text_atomic

logger = logging.getLogger(__name__)

#: Output classes of emotion2vec_plus_{seed,base,large} and emotion2vec_base_finetuned, in head order.
PLUS_LABELS = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")

#: The wav2vec 2.0 / data2vec conv stack: (channels, kernel, stride) per layer; 320× downsampling.
OFFICIAL_CONV_SPEC = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2

MODEL_TYPE = "emotion2vec_s"


@dataclass(frozen=True)
class Emotion2VecConfig:
    """Architecture of an emotion2vec model; defaults are ``emotion2vec_base``.

    Field names follow the official ``model_conf`` (and ``modalities.audio``)
    keys where one exists, so :meth:`from_official_yaml` is a plain copy.
    """
    embed_dim: int = 768
    depth: int = 8                       # post-LN blocks after the context encoder
    num_heads: int = 12
    mlp_ratio: float = 4.0
    prenet_depth: int = 4                # context-encoder blocks
    num_extra_tokens: int = 10
    feature_encoder_spec: tuple[tuple[int, int, int], ...] = OFFICIAL_CONV_SPEC
    conv_pos_width: int = 95             # each positional conv has kernel max(3, width // depth)
    conv_pos_depth: int = 5
    conv_pos_groups: int = 16
    conv_pos_pre_ln: bool = False
    layer_norm_first: bool = False       # False: post-LN blocks (every emotion2vec release)
    norm_eps: float = 1e-5
    norm_affine: bool = True
    end_of_block_targets: bool = False   # False: blocks return their FFN output as data2vec target
    learned_alibi_scale: bool = True
    learned_alibi_scale_per_head: bool = True
    learned_alibi_scale_per_layer: bool = False
    alibi_scale: float = 1.0             # initial value of the learned scale
    use_alibi: bool = True
    init_extra_token_zero: bool = True
    normalize: bool = True               # per-utterance waveform layer norm before the CNN
    feature_grad_scale: float = 1.0      # official local_grad_mult
    encoder_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    post_mlp_drop: float = 0.1
    dropout_input: float = 0.0
    layerdrop: float = 0.05
    start_drop_path_rate: float = 0.0
    end_drop_path_rate: float = 0.0
    prenet_dropout: float = 0.1
    prenet_layerdrop: float = 0.05
    prenet_start_drop_path_rate: float = 0.0
    prenet_end_drop_path_rate: float = 0.0
    labels: tuple[str, ...] = ()         # classifier head over the utterance embedding; () = none

    def __post_init__(self):
        spec = tuple(tuple(int(v) for v in layer) for layer in self.feature_encoder_spec)
        object.__setattr__(self, "feature_encoder_spec", spec)
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        if not spec or any(len(layer) != 3 for layer in spec):
            raise ValueError(f"feature_encoder_spec must be (channels, kernel, stride) triples, not {spec}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % self.conv_pos_groups:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by conv_pos_groups {self.conv_pos_groups}")
        if self.conv_pos_depth < 1:
            raise ValueError("conv_pos_depth must be >= 1")
        if self.pos_kernel % 2 == 0:
            raise ValueError(f"positional kernel max(3, {self.conv_pos_width} // {self.conv_pos_depth}) = "
                             f"{self.pos_kernel} is even; only odd kernels are supported (releases use 19)")
        if not 0 < self.feature_grad_scale <= 1:
            raise ValueError(f"feature_grad_scale must be in (0, 1], not {self.feature_grad_scale}")

    @property
    def pos_kernel(self) -> int:
        return max(3, self.conv_pos_width // self.conv_pos_depth)

    @property
    def receptive_field(self) -> int:
        """Fewest samples that give one frame (400 = 25 ms for the official spec)."""
        size = 1
        for _, kernel, stride in reversed(self.feature_encoder_spec):
            size = (size - 1) * stride + kernel
        return size

    @classmethod
    def preset(cls, size: str) -> "Emotion2VecConfig":
        """``base`` (emotion2vec_base), ``large`` (data2vec 2.0 large layout), ``tiny`` (CPU tests)."""
        if size not in PRESETS:
            raise ValueError(f"unknown emotion2vec size '{size}'; choose one of {sorted(PRESETS)}")
        return PRESETS[size]

    @classmethod
    def from_dict(cls, values: dict) -> "Emotion2VecConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown Emotion2VecConfig keys: {unknown}")
        return cls(**values)

    @classmethod
    def from_official_yaml(cls, path: Path | str) -> "Emotion2VecConfig":
        """Read a release's ``config.yaml`` (FunASR ``model_conf`` or fairseq ``model`` section).

        Labels come from ``tokenizer_conf.token_list`` ("生气/angry" → "angry",
        "<unk>" → "unknown"); the loader keeps them only if the checkpoint has a head.
        """
        path = Path(path)
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        conf = doc.get("model_conf") or doc.get("model")
        if not isinstance(conf, dict) or not isinstance(conf.get("modalities", {}).get("audio"), dict):
            raise ValueError(f"{path}: no model_conf.modalities.audio section; not an emotion2vec config")
        audio = conf["modalities"]["audio"]
        if audio.get("extractor_mode", "layer_norm") != "layer_norm":
            raise ValueError(f"{path}: extractor_mode '{audio['extractor_mode']}' is not supported (layer_norm only)")
        if audio.get("learned_alibi", False):
            raise ValueError(f"{path}: learned_alibi (a learned bias table) is not supported")
        heads = conf.get("num_heads", cls.num_heads)
        if audio.get("num_alibi_heads", heads) != heads:
            raise ValueError(f"{path}: num_alibi_heads {audio['num_alibi_heads']} != num_heads {heads} "
                             "is not supported")
        depth = conf.get("depth", cls.depth)
        if audio.get("learned_alibi_scale_per_layer") and audio.get("model_depth", depth) != depth:
            raise ValueError(f"{path}: modalities.audio.model_depth differs from depth")
        values = {name: conf[name] for name in (
            "embed_dim", "depth", "num_heads", "mlp_ratio", "layer_norm_first", "norm_eps", "norm_affine",
            "end_of_block_targets", "encoder_dropout", "attention_dropout", "activation_dropout",
            "post_mlp_drop", "dropout_input", "layerdrop", "start_drop_path_rate", "end_drop_path_rate")
            if conf.get(name) is not None}
        values["normalize"] = bool(conf.get("normalize") or False)  # FunASR reads a missing key as off
        values.update({name: audio[name] for name in (
            "prenet_depth", "num_extra_tokens", "conv_pos_width", "conv_pos_depth", "conv_pos_groups",
            "conv_pos_pre_ln", "learned_alibi_scale", "learned_alibi_scale_per_head",
            "learned_alibi_scale_per_layer", "alibi_scale", "init_extra_token_zero", "prenet_dropout",
            "prenet_layerdrop") if audio.get(name) is not None})
        renamed = {"use_alibi_encoder": "use_alibi", "local_grad_mult": "feature_grad_scale",
                   "start_drop_path_rate": "prenet_start_drop_path_rate",
                   "end_drop_path_rate": "prenet_end_drop_path_rate"}
        values.update({ours: audio[theirs] for theirs, ours in renamed.items() if audio.get(theirs) is not None})
        if "feature_encoder_spec" in audio:
            values["feature_encoder_spec"] = parse_conv_spec(audio["feature_encoder_spec"])
        tokens = (doc.get("tokenizer_conf") or {}).get("token_list")
        if tokens is None and (path.parent / "tokens.txt").is_file():
            tokens = (path.parent / "tokens.txt").read_text(encoding="utf-8").split()
        if tokens:
            values["labels"] = tuple(_label_name(token) for token in tokens)
        return cls(**values)


PRESETS = {
    "base": Emotion2VecConfig(),
    "large": Emotion2VecConfig(embed_dim=1024, depth=16, num_heads=16, prenet_depth=8),
    "tiny": Emotion2VecConfig(embed_dim=64, depth=2, num_heads=2, prenet_depth=1,
                              feature_encoder_spec=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
                              conv_pos_width=38, conv_pos_depth=2, conv_pos_groups=4),
}


def _label_name(token: str) -> str:
    """FunASR's token_list spells classes "中文/english"; "<unk>" is the unknown class."""
    token = str(token)
    if token == "<unk>":
        return "unknown"
    return token.rsplit("/", 1)[-1]


def parse_conv_spec(spec: str | list) -> tuple[tuple[int, int, int], ...]:
    """Evaluate a fairseq ``feature_encoder_spec`` such as "[(512, 10, 5)] + [(512, 3, 2)] * 4"
    without ``eval``: only list/tuple literals of ints, ``+`` and ``*`` are allowed."""
    if not isinstance(spec, str):
        return tuple(tuple(int(v) for v in layer) for layer in spec)

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported element in feature_encoder_spec: {ast.dump(node)}")

    try:
        tree = ast.parse(spec, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"feature_encoder_spec is not an expression: {spec!r}") from e
    return tuple(tuple(layer) for layer in value(tree.body))


def alibi_slopes(num_heads: int) -> list[float]:
    """Per-head ALiBi slopes as data2vec 2.0 computes them (non-powers of two interleave the next power)."""
    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth per sample, rescaled by the keep probability (timm's DropPath)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (official ``AltAttention``).

    Scores are computed in fp32 whatever the autocast dtype, as the official
    code casts them to the fp32 ALiBi bias before the softmax.
    """

    def __init__(self, dim: int, num_heads: int, attention_dropout: float, proj_dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        dtype = torch.promote_types(x.dtype, torch.float32)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).to(dtype).unbind(0)
        with torch.autocast(x.device.type, enabled=False):
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if bias is None else bias.to(dtype),
                dropout_p=self.attention_dropout if self.training else 0.0)
        out = out.to(x.dtype).transpose(1, 2).reshape(batch, length, dim)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """One data2vec 2.0 ``AltBlock``; returns (output, data2vec target of this layer)."""

    def __init__(self, cfg: Emotion2VecConfig, drop_path: float):
        super().__init__()
        dim = cfg.embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.ffn_targets = not cfg.end_of_block_targets
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.attn = Attention(dim, cfg.num_heads, cfg.attention_dropout, cfg.encoder_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.activation_dropout)
        self.post_mlp_dropout = nn.Dropout(cfg.post_mlp_drop)

    def forward(self, x: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.layer_norm_first:
            x = x + _drop_path(self.attn(self.norm1(x), bias), self.drop_path, self.training)
            ffn = self.mlp(self.norm2(x))
            # data2vec 2.0's pre-LN AltBlock adds the FFN output to itself (the attention
            # residual is not carried past the FFN); kept so pre-LN checkpoints load exactly.
            x = ffn + _drop_path(self.post_mlp_dropout(ffn), self.drop_path, self.training)
        else:
            x = self.norm1(x + _drop_path(self.attn(x, bias), self.drop_path, self.training))
            ffn = self.mlp(x)
            x = self.norm2(x + _drop_path(self.post_mlp_dropout(ffn), self.drop_path, self.training))
        return x, (ffn if self.ffn_targets else x)


@dataclass
class EncoderOutput:
    """What :meth:`Emotion2VecS.encode` returns.

    ``x``: [B, N + T_kept, D], the ``N`` extra tokens first.  ``padding_mask``:
    [B, N + T_kept], True at padded frames, or None when nothing is padded.
    ``layer_results``: per main block (not the context encoder) its data2vec
    target, the FFN output before the residual ([B, N + T_kept, D]; blocks
    skipped by layerdrop in training are absent).  ``kept``: [B, T_kept] frame
    indices left after masking, in time order (None without a mask).
    """
    x: Tensor
    padding_mask: Tensor | None
    layer_results: list[Tensor]
    kept: Tensor | None


class Emotion2VecS(nn.Module):
    """The emotion2vec network; see the module docstring for the computation."""

    def __init__(self, config: Emotion2VecConfig):
        super().__init__()
        self.config = cfg = config
        dim = cfg.embed_dim
        conv_dim = cfg.feature_encoder_spec[-1][0]
        self.feature_extractor = Wav2Vec2FeatureExtractor(
            cfg.feature_encoder_spec, bias=False, layer_norm=True, grad_scale=cfg.feature_grad_scale)
        self.feature_norm = nn.LayerNorm(conv_dim)
        self.feature_proj = nn.Linear(conv_dim, dim)
        self.pos_pre_norm = nn.LayerNorm(dim) if cfg.conv_pos_pre_ln else None
        self.pos_layers = nn.ModuleList(
            Wav2Vec2PositionEncoderLayer(dim, cfg.pos_kernel, cfg.conv_pos_groups)
            for _ in range(cfg.conv_pos_depth))
        self.extra_tokens = nn.Parameter(torch.zeros(1, cfg.num_extra_tokens, dim))
        self.alibi_scale = None
        if cfg.use_alibi:
            shape = (cfg.prenet_depth + cfg.depth if cfg.learned_alibi_scale_per_layer else 1, 1,
                     cfg.num_heads if cfg.learned_alibi_scale_per_head else 1, 1, 1)
            self.alibi_scale = nn.Parameter(torch.full(shape, float(cfg.alibi_scale)),
                                            requires_grad=cfg.learned_alibi_scale)
            self.register_buffer("slopes", torch.tensor(alibi_slopes(cfg.num_heads)), persistent=False)
        self.context_norm = None if cfg.layer_norm_first else nn.LayerNorm(
            dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.context_dropout = nn.Dropout(cfg.prenet_dropout)
        # float32 as torch.linspace made them, but on no device: a model built on meta must not read a tensor
        rates = np.linspace(cfg.prenet_start_drop_path_rate, cfg.prenet_end_drop_path_rate,
                            cfg.prenet_depth, dtype=np.float32)
        self.context_blocks = nn.ModuleList(Block(cfg, float(r)) for r in rates)
        self.input_dropout = nn.Dropout(cfg.dropout_input)
        rates = np.linspace(cfg.start_drop_path_rate, cfg.end_drop_path_rate, cfg.depth, dtype=np.float32)
        self.blocks = nn.ModuleList(Block(cfg, float(r)) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine) \
            if cfg.layer_norm_first else None
        self.head = nn.Linear(dim, len(cfg.labels)) if cfg.labels else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """data2vec 2.0's initialisation, for pre-training from scratch.

        BERT init (normal 0.02, zero bias) for the Transformer's linear layers,
        PyTorch's default for the feature projection (data2vec resets it), Kaiming
        for the CNN (fairseq2 already does), first extra token zero and the rest
        N(0, 1) (``init_extra_token_zero``).
        """
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and name != "feature_proj":
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.extra_tokens.zero_()
            first = 1 if self.config.init_extra_token_zero else 0
            self.extra_tokens[:, first:].normal_()

    # --- pieces used by pre-training -----------------------------------------

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Frames the CNN makes from ``lengths`` samples (the official output-length rule)."""
        lengths = lengths.long()
        for _, kernel, stride in self.config.feature_encoder_spec:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def normalize_waveform(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Layer norm of each utterance over its unpadded samples (no affine, eps 1e-5), the
        official ``F.layer_norm(wav, wav.shape)`` applied one utterance at a time; padding stays 0."""
        lengths = _full_lengths(wav, lengths)
        out = torch.zeros_like(wav)
        for row, length in enumerate(lengths.tolist()):
            out[row, :length] = F.layer_norm(wav[row, :length], (length,))
        return out

    def local_features(self, wav: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """CNN + ``project_features``: ([B, T', D], frame lengths [B]).  The waveform is used as given."""
        lengths = _full_lengths(wav, lengths)
        too_short = (lengths < self.config.receptive_field).nonzero().flatten().tolist()
        if too_short:
            raise ValueError(f"batch rows {too_short} are shorter than the feature extractor's "
                             f"receptive field ({self.config.receptive_field} samples)")
        feats, _ = self.feature_extractor(wav, BatchLayout.of(wav, lengths.tolist()))
        return self.feature_proj(self.feature_norm(feats)), self.frame_lengths(lengths)

    def encode(self, x: Tensor, frame_lengths: Tensor | None = None, mask: Tensor | None = None) -> EncoderOutput:
        """Positional convs, extra tokens, context encoder and blocks on local features ``x`` [B, T, D].

        ``mask`` ([B, T] bool, True = hidden from the student, the same count in
        every row) zeroes those frames before the positional convolutions and
        removes them from the sequence, as data2vec 2.0's student forward does.
        """
        batch, length, _ = x.shape
        lengths = _full_lengths(x, frame_lengths)
        valid = torch.arange(length, device=x.device)[None, :] < lengths[:, None]
        x = x + self._relative_positions(x, valid, mask)
        kept = None
        if mask is not None:
            kept_counts = (~mask).sum(1)
            if (kept_counts != kept_counts[0]).any():
                raise ValueError(f"every row must mask the same number of frames, kept {kept_counts.tolist()}")
            kept = (~mask).nonzero()[:, 1].view(batch, -1)
            x = x.gather(1, kept[..., None].expand(-1, -1, x.shape[-1]))
            valid = valid.gather(1, kept)
        padding = None if bool(valid.all()) else ~valid
        positions = kept if kept is not None else torch.arange(length, device=x.device)[None, :]
        alibi = self._alibi(positions) if self.alibi_scale is not None else None
        num_extra = self.config.num_extra_tokens
        x = torch.cat([self.extra_tokens.expand(batch, -1, -1).to(x.dtype), x], dim=1)
        if padding is not None:
            padding = F.pad(padding, (num_extra, 0), value=False)

        if self.context_norm is not None:
            x = self.context_norm(x)
        x = self.context_dropout(x)
        for i, block in enumerate(self.context_blocks):
            if self._keep_layer(self.config.prenet_layerdrop):
                x, _ = block(x, self._bias(alibi, padding, i))
        x = self.input_dropout(x)
        layer_results = []
        for i, block in enumerate(self.blocks):
            if self._keep_layer(self.config.layerdrop):
                x, target = block(x, self._bias(alibi, padding, self.config.prenet_depth + i))
                layer_results.append(target)
        if self.norm is not None:
            x = self.norm(x)
        return EncoderOutput(x=x, padding_mask=padding, layer_results=layer_results, kept=kept)

    def _relative_positions(self, x: Tensor, valid: Tensor, mask: Tensor | None) -> Tensor:
        keep = valid if mask is None else valid & ~mask
        h = x * keep[..., None].to(x.dtype)
        if self.pos_pre_norm is not None:
            h = self.pos_pre_norm(h)
        gate = valid[:, None, :].to(x.dtype)
        h = h.transpose(1, 2)
        for layer in self.pos_layers:
            h = layer(h * gate)
        return h.transpose(1, 2)

    def _alibi(self, positions: Tensor) -> Tensor:
        """Unscaled ALiBi bias [B or 1, H, N + T, N + T]; zero to and from the extra tokens."""
        distance = (positions[:, :, None] - positions[:, None, :]).abs().to(self.slopes.dtype)
        bias = -distance[:, None] * self.slopes[None, :, None, None]
        num_extra = self.config.num_extra_tokens
        return F.pad(bias, (num_extra, 0, num_extra, 0))

    def _bias(self, alibi: Tensor | None, padding: Tensor | None, layer: int) -> Tensor | None:
        """Additive attention bias of one layer: scaled ALiBi plus -inf on padded keys."""
        bias = None
        if alibi is not None:
            scale = self.alibi_scale[layer if self.alibi_scale.shape[0] > 1 else 0].clamp_min(0)
            bias = alibi * scale
        if padding is not None:
            key_mask = torch.zeros(padding.shape, device=padding.device).masked_fill(padding, float("-inf"))
            key_mask = key_mask[:, None, None, :]
            bias = key_mask if bias is None else bias + key_mask
        return bias

    def _keep_layer(self, layerdrop: float) -> bool:
        return not self.training or layerdrop == 0 or float(torch.rand(())) > layerdrop

    # --- inference ------------------------------------------------------------

    def extract(self, wav: Tensor, lengths: Tensor | None = None) -> dict[str, Tensor]:
        """Frame and utterance embeddings of a padded batch of 16 kHz waveforms.

        Returns ``frames`` [B, T', D] (extra tokens removed, padded frames 0),
        ``utterance`` [B, D] (mean of the valid frames), ``frame_lengths`` [B],
        and with a head ``logits``/``probs`` [B, len(labels)] (classes named
        "unuse*" get probability 0, as FunASR does).
        """
        lengths = _full_lengths(wav, lengths)
        if self.config.normalize:
            wav = self.normalize_waveform(wav, lengths)
        x, frame_lengths = self.local_features(wav, lengths)
        out = self.encode(x, frame_lengths)
        frames = out.x[:, self.config.num_extra_tokens:]
        valid = torch.arange(frames.shape[1], device=frames.device)[None, :] < frame_lengths[:, None]
        frames = frames * valid[..., None].to(frames.dtype)
        utterance = frames.sum(1) / frame_lengths[:, None].to(frames.dtype)
        result = {"frames": frames, "utterance": utterance, "frame_lengths": frame_lengths}
        if self.head is not None:
            logits = self.head(utterance)
            unused = torch.tensor([label.startswith("unuse") for label in self.config.labels],
                                  device=logits.device)
            result["logits"] = logits
            result["probs"] = logits.float().masked_fill(unused, float("-inf")).softmax(-1)
        return result

    # --- our own save format --------------------------------------------------

    def save_pretrained(self, directory: Path | str, state_dict: dict[str, Tensor] | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``directory``; the weights are
        ``state_dict`` when given (a whole one gathered from FSDP shards), else the model's own."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in (state_dict or self.state_dict()).items()}
        tmp = directory / ".model.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"model_type": MODEL_TYPE})
        os.replace(tmp, directory / "model.safetensors")
        write_text_atomic(directory / "config.json",
                          json.dumps({"model_type": MODEL_TYPE, **asdict(self.config)}, indent=2, ensure_ascii=False))

    @classmethod
    def from_pretrained(cls, directory: Path | str, map_location: str | torch.device = "cpu") -> "Emotion2VecS":
        """Load what :meth:`save_pretrained` wrote (``model.pt`` holding a state dict also works)."""
        directory = Path(directory)
        config = _read_our_config(directory / "config.json")
        model = cls(config)
        if (directory / "model.safetensors").is_file():
            from safetensors.torch import load_file
            state = load_file(str(directory / "model.safetensors"), device=str(map_location))
        elif (directory / "model.pt").is_file():
            state = torch.load(directory / "model.pt", map_location=map_location, weights_only=True)
        else:
            raise FileNotFoundError(f"{directory}: neither model.safetensors nor model.pt")
        model.load_state_dict(state)
        return model


def _full_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    if lengths is None:
        return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    lengths = lengths.to(device=x.device, dtype=torch.long)
    if lengths.shape != (x.shape[0],) or bool((lengths > x.shape[1]).any()) or bool((lengths < 1).any()):
        raise ValueError(f"lengths {lengths.tolist()} do not fit a batch of shape {tuple(x.shape)}")
    return lengths


def _read_our_config(path: Path) -> Emotion2VecConfig:
    values = json.loads(path.read_text(encoding="utf-8"))
    if values.pop("model_type", None) != MODEL_TYPE:
        raise ValueError(f"{path}: not an {MODEL_TYPE} config (model_type is missing or different)")
    try:
        return Emotion2VecConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


# --- official checkpoints -----------------------------------------------------

AUDIO_PREFIX = "modality_encoders.AUDIO."
_AUDIO = re.escape(AUDIO_PREFIX)

#: Official key (regex) → our key; the first rule that matches wins.  Block internals
#: (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2) keep their official names.
_KEY_RULES = [
    (_AUDIO + r"local_encoder\.conv_layers\.(\d+)\.0\.weight$", lambda m: f"feature_extractor.layers.{m[1]}.conv.weight"),
    (_AUDIO + r"local_encoder\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$",
     lambda m: f"feature_extractor.layers.{m[1]}.layer_norm.{m[2]}"),
    (_AUDIO + r"project_features\.1\.(weight|bias)$", lambda m: f"feature_norm.{m[1]}"),
    (_AUDIO + r"project_features\.2\.(weight|bias)$", lambda m: f"feature_proj.{m[1]}"),
    (_AUDIO + r"extra_tokens$", lambda m: "extra_tokens"),
    (_AUDIO + r"alibi_scale$", lambda m: "alibi_scale"),
    (_AUDIO + r"context_encoder\.norm\.(weight|bias)$", lambda m: f"context_norm.{m[1]}"),
    (_AUDIO + r"context_encoder\.blocks\.(.+)$", lambda m: f"context_blocks.{m[1]}"),
    (r"blocks\.(.+)$", lambda m: f"blocks.{m[1]}"),
    (r"norm\.(weight|bias)$", lambda m: f"norm.{m[1]}"),
    (r"proj\.(weight|bias)$", lambda m: f"head.{m[1]}"),
]
# The positional convs sit at relative_positional_encoder.{1..n}.0 (index 0 is a transpose),
# or one level deeper behind the LayerNorm at index 0 when conv_pos_pre_ln.
_POS_PLAIN = (_AUDIO + r"relative_positional_encoder\.(\d+)\.0\.(weight|bias)$",
              lambda m: f"pos_layers.{int(m[1]) - 1}.conv.{m[2]}")
_POS_PRE_LN = [
    (_AUDIO + r"relative_positional_encoder\.0\.(weight|bias)$", lambda m: f"pos_pre_norm.{m[1]}"),
    (_AUDIO + r"relative_positional_encoder\.1\.(\d+)\.0\.(weight|bias)$",
     lambda m: f"pos_layers.{int(m[1]) - 1}.conv.{m[2]}"),
]

#: Checkpoint entries only pre-training uses: the EMA teacher and the data2vec decoders.
PRETRAINING_ONLY = re.compile(r"^(_ema|ema\.|decoder\.|shared_decoder\.|recon_proj\.|" + _AUDIO + r"decoder\.)")


@dataclass
class LoadReport:
    """How an official checkpoint mapped onto the model; keys are named, not counted.

    ``missing``: our parameters the checkpoint lacks (left at initialisation).
    ``unexpected``: checkpoint keys (official names) we have no place for.
    ``ignored``: pre-training-only checkpoint keys (EMA teacher, decoders).
    ``pretraining_state``: those ignored tensors, for continued pre-training.
    """
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pretraining_state: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.loaded)} tensors loaded"]
        for title, keys in (("missing (left at init)", self.missing), ("unexpected", self.unexpected),
                            ("ignored (pre-training only)", self.ignored)):
            if keys:
                lines.append(f"{title}: {len(keys)}: " + ", ".join(keys))
        lines.extend(self.notes)
        return "\n".join(lines)


def unwrap_state_dict(checkpoint) -> dict[str, Tensor]:
    """The tensor dict inside a checkpoint (``model`` / ``state_dict`` / ``model_state_dict``), ``module.`` stripped."""
    state = checkpoint
    while isinstance(state, dict):
        inner = next((state[k] for k in ("model", "state_dict", "model_state_dict")
                      if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not state:
        raise ValueError("checkpoint holds no state dict (looked under model / state_dict / model_state_dict)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def map_official_key(key: str, pos_pre_ln: bool = False) -> str | None:
    """Our name for an official emotion2vec key, or None if it has no counterpart."""
    rules = (_POS_PRE_LN if pos_pre_ln else [_POS_PLAIN]) + _KEY_RULES
    for pattern, name in rules:
        match = re.match(pattern, key)
        if match:
            return name(match)
    return None


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        logger.warning("%s holds pickled Python objects besides tensors (e.g. a fairseq cfg); loading it "
                       "with weights_only=False, which runs code from the file: use only files you trust", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def _resolve(path: Path, size: str | None) -> tuple[Path, Emotion2VecConfig]:
    """(checkpoint file, config) of a release dir or a bare .pt file."""
    if path.is_dir():
        candidates = [path / "model.pt"] if (path / "model.pt").is_file() else sorted(path.glob("*.pt"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"{path}: expected model.pt (or exactly one *.pt), found "
                                    f"{[c.name for c in candidates]}")
        checkpoint, config_dir = candidates[0], path
    elif path.is_file():
        checkpoint, config_dir = path, path.parent
    else:
        raise FileNotFoundError(f"no emotion2vec checkpoint at {path}")
    if size is not None:
        return checkpoint, Emotion2VecConfig.preset(size)
    if (config_dir / "config.yaml").is_file():
        return checkpoint, Emotion2VecConfig.from_official_yaml(config_dir / "config.yaml")
    raise FileNotFoundError(f"{path}: no config.yaml next to the checkpoint; pass size= one of {sorted(PRESETS)}")


def load_emotion2vec(path: Path | str, size: str | None = None, strict: bool = False
                     ) -> tuple[Emotion2VecS, LoadReport]:
    """Build and load an emotion2vec model from an official release or our own format.

    ``path``: a release dir (``model.pt`` + ``config.yaml``, as on ModelScope /
    Hugging Face), a ``.pt`` file (with ``size`` or a ``config.yaml`` beside
    it), or a dir written by :meth:`Emotion2VecS.save_pretrained`.  A head is
    built only when the checkpoint has ``proj`` (the plus / finetuned models);
    its labels come from the config's token list, else :data:`PLUS_LABELS`.
    Missing and unexpected keys are logged by name and, with ``strict``, raise.
    """
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        model = Emotion2VecS.from_pretrained(path)
        return model, LoadReport(source=str(path), loaded=sorted(model.state_dict()))
    checkpoint, config = _resolve(path, size)
    state = unwrap_state_dict(_torch_load(checkpoint))
    report = LoadReport(source=str(checkpoint))

    mapped: dict[str, Tensor] = {}
    official_name: dict[str, str] = {}
    for key, tensor in state.items():
        if PRETRAINING_ONLY.match(key):
            report.ignored.append(key)
            report.pretraining_state[key] = tensor
            continue
        ours = map_official_key(key, config.conv_pos_pre_ln)
        if ours is None:
            report.unexpected.append(key)
        else:
            mapped[ours], official_name[ours] = tensor, key
    config = _reconcile_head(config, mapped, report)
    model = Emotion2VecS(config)
    own = model.state_dict()
    if "alibi_scale" in mapped and mapped["alibi_scale"].dim() == 4:  # pre-per-layer checkpoints
        mapped["alibi_scale"] = mapped["alibi_scale"].unsqueeze(0)
    for ours in [k for k in mapped if k not in own]:
        report.unexpected.append(official_name[ours])
        del mapped[ours]
    report.loaded = sorted(official_name[k] for k in mapped)
    wrong = [f"{official_name[k]}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in mapped.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{checkpoint}: tensor shapes do not match the config (wrong size?): " + "; ".join(wrong))
    report.missing = sorted(set(own) - set(mapped))
    model.load_state_dict(mapped, strict=False)
    if not any(k.startswith(AUDIO_PREFIX + "decoder.") for k in report.ignored):
        report.notes.append("no pre-training decoder in the checkpoint (a fine-tuned release): "
                            "continued pre-training starts a fresh decoder")
    if report.missing or report.unexpected:
        logger.warning("%s", report.summary())
        if strict:
            raise ValueError(report.summary())
    else:
        logger.info("%s", report.summary())
    return model, report


def _reconcile_head(config: Emotion2VecConfig, mapped: dict[str, Tensor], report: LoadReport) -> Emotion2VecConfig:
    """The head's size comes from the checkpoint; its label names from the config if they fit."""
    if "head.weight" not in mapped:
        if config.labels:
            report.notes.append(f"the config lists {len(config.labels)} labels but the checkpoint has "
                                "no proj head: loaded without a head")
        return replace(config, labels=())
    classes = mapped["head.weight"].shape[0]
    if len(config.labels) == classes:
        return config
    if classes == len(PLUS_LABELS):
        return replace(config, labels=PLUS_LABELS)
    raise ValueError(f"{report.source}: the head has {classes} classes but the config names "
                     f"{len(config.labels)} labels; give the config.yaml with its token_list")


def build_e2v(path: str | None = None, size: str = "tiny", init_seed: int = 0) -> Emotion2VecS:
    """The acoustic encoder of the audio LLM (``conf/model/e2v/*.yaml``'s ``_target_``).

    ``path``: stage 5's ``exp/e2vs/model``, an official release or ``.pt``; null
    builds a seeded random ``size`` model (tests; the untrained baseline).
    """
    if path:
        model, report = load_emotion2vec(path, size=size)
        logger.info("Emotion2Vec-S from %s: %s", path, report.summary())
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = Emotion2VecS(Emotion2VecConfig.preset(size))
        model.reset_parameters()
    return model
