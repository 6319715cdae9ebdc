"""Emotion2Vec-S pre-training: data2vec 2.0 / emotion2vec self-distillation plus C²SER's category loss.

emotion2vec never released its pre-training code; this module is that
objective, written from data2vec 2.0's design and emotion2vec_base's released
``config.yaml`` (the values in :class:`PretrainConfig`), with the
category-level supervised contrastive loss of C²SER §III-B on top::

    wav ─ student CNN ─ x ──────────────────────────────────────────────┐ (detached)
          x repeated clone_batch times, each copy with its own block mask │
          student encode (masked frames removed)        EMA teacher encode (unmasked)
            │ extra tokens      │ kept frames             top-K FFN outputs, each instance-normed
            │                   ├─ mean over frames = G     over time, averaged = target y [B, T, D]
            │                   └─ back in time order, noise at masked frames ─ conv decoder ─ ŷ
    L_utt = ‖mean(extra tokens) - mean_t(y)‖²/√D
    L_frm = ‖ŷ_t - y_t‖²/√D over masked frames
    L_cate = SupCon(G, emotion labels) over the labelled utterances
    L = L_frm + λ_utt·L_utt + λ_cate·L_cate

Choices, and why:

- The teacher is a full copy of the student, a submodule in eval mode whose
  parameters do not require gradients: the trainer's optimizer never sees it,
  and the trainer's checkpoint (the whole module's state dict) holds it and
  the EMA step counter, so a resume continues the same teacher.
  :meth:`Emotion2VecPretrainer.update_teacher` runs once per optimizer step
  (the stage registers it as an optimizer step hook).
- Targets ignore padding: the instance norm and the time mean of the
  utterance target use the valid frames only, and the decoder zeroes padded
  frames between its convolutions, so a padded batch trains on each
  utterance exactly what it would alone (data2vec 2.0 normalises over the
  padded length).
- Loss reductions are means (over masked frames; over utterances).
  data2vec 2.0 sums its utterance term over the batch (it scales it by the
  number of masked frames before the trainer divides by that number), which
  ties λ_utt to the batch size; with a mean λ_utt does not depend on it.
- Clones of an utterance share its label, so in L_cate they are positives of
  each other: the clones are SupCon's "views".
- ``cate_standardize`` (off by default, as the paper describes L_cate on G
  itself) standardises G over the batch's labelled rows before the cosines.
  Mean-pooled frames of a young model are nearly parallel (cosine ≈ 0.99 for
  any two utterances; the data2vec objective keeps it so, since the decoder's
  layer norms read the small differences), so the cosine softmax is flat and
  L_cate stays at log(N - 1) without learning; standardised, it learns.
- Every random draw (masks, decoder noise, dropout, layer drop) comes from
  torch's global generator, which the trainer seeds per step: a resumed run
  draws what the uninterrupted run drew.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from local.models.emotion2vec_s import AUDIO_PREFIX, Emotion2VecS, map_official_key


@dataclass(frozen=True)
class PretrainConfig:
    """The objective's knobs; defaults are emotion2vec_base's pre-training config and C²SER's weights."""
    mask_prob: float = 0.5          # fraction of frames that start a masked block (before overlaps)
    mask_length: int = 5            # frames per masked block
    clone_batch: int = 8            # masked copies of each utterance per step
    average_top_k: int = 8          # teacher blocks averaged into the target (all when fewer)
    decoder_dim: int = 384
    decoder_kernel: int = 7
    decoder_layers: int = 4
    decoder_groups: int = 16
    decoder_input_dropout: float = 0.1
    mask_noise_std: float = 0.01    # decoder input at masked frames: N(0, std) noise
    lambda_utt: float = 0.1
    lambda_cate: float = 100.0
    temperature: float = 0.07       # SupCon temperature of L_cate (C²SER gives none; 0.07 is SupCon's)
    cate_standardize: bool = False  # standardise G over the batch's labelled rows before L_cate
    ema_decay: float = 0.999        # teacher decay at the first update ...
    ema_end_decay: float = 0.99999  # ... annealed linearly to this ...
    ema_anneal_steps: int = 20000   # ... over this many optimizer steps, then constant

    def __post_init__(self):
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), not {self.mask_prob}")
        if self.mask_length < 1 or self.clone_batch < 1 or self.average_top_k < 1 or self.decoder_layers < 1:
            raise ValueError("mask_length, clone_batch, average_top_k and decoder_layers must be >= 1")
        if self.decoder_dim % self.decoder_groups:
            raise ValueError(f"decoder_dim {self.decoder_dim} is not divisible by decoder_groups "
                             f"{self.decoder_groups}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")
        if not 0 <= self.ema_decay <= self.ema_end_decay <= 1:
            raise ValueError(f"need 0 <= ema_decay ({self.ema_decay}) <= ema_end_decay "
                             f"({self.ema_end_decay}) <= 1")

    @classmethod
    def from_dict(cls, values) -> "PretrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown pre-training keys {unknown}; known: {sorted(known)}")
        return cls(**values)


# --- pieces -------------------------------------------------------------------------------------

def ema_decay(update: int, start: float, end: float, anneal_steps: int) -> float:
    """Teacher decay of the update after ``update`` updates: linear from ``start`` to ``end`` (data2vec 2.0)."""
    if update >= anneal_steps:
        return end
    return end - (end - start) * (1 - update / anneal_steps)


def block_mask(frame_lengths: Tensor, max_len: int, prob: float, length: int) -> Tensor:
    """[B, max_len] bool, True = hidden from the student: blocks of ``length`` frames, the same count per row.

    As fairseq's ``compute_mask_indices`` (static lengths, ``require_same_masks``):
    a row of L valid frames draws int(prob·L/length + U[0,1)) (at least one)
    distinct block starts in [0, L - length], the union of the blocks is
    masked, then every row keeps a random subset of its masked frames of the
    size of the smallest row's count, so the student's sequences keep one
    length.  Padding is never masked, and every row keeps at least one valid frame.
    """
    lengths = frame_lengths.tolist()
    if min(lengths) < 2:
        raise ValueError(f"every utterance needs >= 2 frames to be masked, got frame lengths {lengths}")
    rows = []
    for n in lengths:
        span = min(length, n - 1)
        starts = n - span + 1
        count = min(max(1, int(prob * n / span + float(torch.rand(())))), starts)
        first = torch.randperm(starts)[:count]
        rows.append(torch.unique(first[:, None] + torch.arange(span)))
    target = min(min(len(r) for r in rows), min(lengths) - 1)
    mask = torch.zeros(len(lengths), max_len, dtype=torch.bool)
    for i, row in enumerate(rows):
        mask[i, row[torch.randperm(len(row))[:target]]] = True
    return mask


def instance_norm_frames(x: Tensor, valid: Tensor, eps: float = 1e-5) -> Tensor:
    """Normalise each channel of each utterance over its valid frames (F.instance_norm without padding)."""
    weight = valid[..., None].to(x.dtype)
    count = weight.sum(1, keepdim=True)
    mean = (x * weight).sum(1, keepdim=True) / count
    var = ((x - mean) ** 2 * weight).sum(1, keepdim=True) / count
    return (x - mean) / torch.sqrt(var + eps) * weight


def frame_targets(layer_results: list[Tensor], valid: Tensor, top_k: int) -> Tensor:
    """data2vec 2.0 target [B, T, D]: the mean of the last ``top_k`` layers, each instance-normed over time.

    ``layer_results`` are the teacher blocks' FFN outputs without the extra tokens.
    """
    layers = layer_results[-top_k:]
    return sum(instance_norm_frames(layer.float(), valid) for layer in layers) / len(layers)


def regression_loss(pred: Tensor, target: Tensor) -> Tensor:
    """data2vec 2.0's loss per row: squared error summed over D, divided by √D; the mean over rows."""
    return ((pred.float() - target) ** 2).sum(-1).div(math.sqrt(pred.shape[-1])).mean()


def standardize(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean and unit variance per dimension over the rows (batch norm without affine or running stats).

    Mean-pooled encoder outputs share a large common component (cosine ≈ 0.99
    between any two utterances of a fresh tiny model), so cosine similarities
    barely differ and the contrastive softmax has almost nothing to learn
    from; removing the batch mean first makes the differences the geometry.
    """
    if len(x) < 2:
        return x
    x = x.float()
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)


def supcon_loss(embeddings: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) on cosine similarities.

    ``labels`` [N] are class ids, negative for unlabelled rows, which take no
    part (neither anchor nor contrast).  For an anchor i with positives P(i)
    (same label, not i) and A(i) = every other labelled row::

        L_i = -1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) )

    with z the L2-normalised embeddings; the loss is the mean of L_i over the
    anchors that have a positive, and 0 (still differentiable) when none has.
    """
    keep = labels >= 0
    z = F.normalize(embeddings[keep].to(torch.promote_types(embeddings.dtype, torch.float32)), dim=-1)
    y = labels[keep]
    n = len(y)
    self_pair = torch.eye(n, dtype=torch.bool, device=z.device)
    positive = (y[:, None] == y[None, :]) & ~self_pair
    anchors = positive.any(1)
    if not bool(anchors.any()):
        return embeddings.sum() * 0.0
    logits = (z @ z.T / temperature).masked_fill(self_pair, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    mean_positive = log_prob.masked_fill(~positive, 0.0).sum(1)[anchors] / positive.sum(1)[anchors]
    return -mean_positive.mean()


class DecoderBlock(nn.Module):
    """Grouped conv ("same" length), LayerNorm over channels without affine, GELU (data2vec 2.0 ``Decoder1d``)."""

    def __init__(self, in_dim: int, dim: int, kernel: int, groups: int):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.trim = 1 if kernel % 2 == 0 else 0  # an even kernel makes one frame too many

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.trim:
            x = x[..., :-self.trim]
        x = F.layer_norm(x.transpose(1, 2), x.shape[1:2]).transpose(1, 2)
        return F.gelu(x)


class Decoder1d(nn.Module):
    """data2vec 2.0's light decoder: conv blocks with a residual wherever the width allows, then Linear to D.

    Padded frames are zeroed before every block, so they never leak into the
    valid frames through the convolutions.
    """

    def __init__(self, embed_dim: int, dim: int, kernel: int, layers: int, groups: int):
        super().__init__()
        self.blocks = nn.ModuleList(DecoderBlock(embed_dim if i == 0 else dim, dim, kernel, groups)
                                    for i in range(layers))
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """[B, T, D] → [B, T, D]; ``valid`` [B, T] is False at padded frames."""
        gate = valid[:, None, :].to(x.dtype)
        x = x.transpose(1, 2)
        for block in self.blocks:
            out = block(x * gate)
            x = out + x if out.shape[1] == x.shape[1] else out
        return self.proj(x.transpose(1, 2))


_DECODER_KEY = re.compile(re.escape(AUDIO_PREFIX) + r"decoder\.(?:blocks\.(\d+)\.0|(proj))\.(weight|bias)$")


def official_decoder_state(pretraining_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The decoder tensors of an official checkpoint under :class:`Decoder1d`'s names ({} if it has none)."""
    state = {}
    for key, tensor in pretraining_state.items():
        match = _DECODER_KEY.match(key)
        if match and match[2]:
            state[f"proj.{match[3]}"] = tensor
        elif match:
            state[f"blocks.{match[1]}.conv.{match[3]}"] = tensor
    return state


def decoder_shape(state: dict[str, Tensor], embed_dim: int) -> dict[str, int]:
    """decoder_dim / kernel / layers / groups of a decoder state dict (to rebuild a checkpoint's decoder)."""
    first = state["blocks.0.conv.weight"]  # [dim, embed_dim / groups, kernel]
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    return {"decoder_dim": first.shape[0], "decoder_kernel": first.shape[2], "decoder_layers": layers,
            "decoder_groups": embed_dim // first.shape[1]}


def official_teacher_state(pretraining_state: dict[str, Tensor], student: Emotion2VecS) -> dict[str, Tensor]:
    """The EMA teacher of a data2vec 2.0 checkpoint (its ``_ema`` dict) under our names ({} if absent)."""
    ema = pretraining_state.get("_ema")
    if not isinstance(ema, dict):
        return {}
    own = student.state_dict()
    state = {}
    for key, tensor in ema.items():
        ours = map_official_key(key, student.config.conv_pos_pre_ln)
        if ours is not None and ours in own and own[ours].shape == tensor.shape:
            state[ours] = tensor
    return state


# --- the pre-training model ------------------------------------------------------------------------

class Emotion2VecPretrainer(nn.Module):
    """Student, EMA teacher and decoder; ``forward`` returns the loss of a batch and its parts.

    ``teacher_state``: an official checkpoint's EMA teacher (:func:`official_teacher_state`);
    tensors it lacks are copied from the student, as data2vec 2.0 starts its teacher.
    ``decoder_state``: a checkpoint's decoder (:func:`official_decoder_state`), loaded strictly.
    """

    def __init__(self, student: Emotion2VecS, config: PretrainConfig,
                 teacher_state: dict[str, Tensor] | None = None, decoder_state: dict[str, Tensor] | None = None):
        super().__init__()
        self.config = config
        self.student = student
        self.teacher = copy.deepcopy(student)
        if teacher_state:
            self.teacher.load_state_dict(teacher_state, strict=False)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        dim = student.config.embed_dim
        self.decoder = Decoder1d(dim, config.decoder_dim, config.decoder_kernel, config.decoder_layers,
                                 config.decoder_groups)
        if decoder_state:
            self.decoder.load_state_dict(decoder_state)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> "Emotion2VecPretrainer":
        super().train(mode)
        self.teacher.eval()  # the teacher's targets never see dropout or layer drop
        return self

    @torch.no_grad()
    def update_teacher(self) -> float:
        """One EMA step, teacher ← d·teacher + (1-d)·student, with the annealed decay d; returns d."""
        cfg = self.config
        decay = ema_decay(int(self.ema_updates), cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_steps)
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(decay).add_(s.detach(), alpha=1 - decay)
        self.ema_updates += 1
        return decay

    def forward(self, wav: Tensor, wav_lens: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of a batch: ``wav`` [B, T] 16 kHz, ``wav_lens`` [B], ``labels`` [B] class ids (< 0 = unlabelled)."""
        cfg, student = self.config, self.student
        if student.config.normalize:
            wav = student.normalize_waveform(wav, wav_lens)
        x, frame_lengths = student.local_features(wav, wav_lens)
        batch, length, dim = x.shape
        valid = torch.arange(length, device=x.device)[None, :] < frame_lengths[:, None]
        num_extra = student.config.num_extra_tokens

        with torch.no_grad():
            out = self.teacher.encode(x.detach(), frame_lengths)
            layers = [layer[:, num_extra:] for layer in out.layer_results]
            target = frame_targets(layers, valid, min(cfg.average_top_k, len(layers)))
            utt_target = target.sum(1) / frame_lengths[:, None]

        clones = cfg.clone_batch
        x = x.repeat_interleave(clones, 0)
        lengths = frame_lengths.repeat_interleave(clones)
        valid = valid.repeat_interleave(clones, 0)
        mask = block_mask(lengths.cpu(), length, cfg.mask_prob, cfg.mask_length).to(x.device)
        out = student.encode(x, lengths, mask)
        frames = out.x[:, num_extra:]
        kept_valid = valid.gather(1, out.kept)

        weight = kept_valid[..., None].to(frames.dtype)
        pooled = (frames * weight).sum(1) / weight.sum(1)
        decoder_in = F.dropout(frames, cfg.decoder_input_dropout, self.training)
        noise = torch.randn(x.shape, device=x.device, dtype=frames.dtype) * cfg.mask_noise_std
        full = noise.masked_fill(~mask[..., None], 0.0).scatter(
            1, out.kept[..., None].expand(-1, -1, dim), decoder_in)
        pred = self.decoder(full, valid)

        loss_frm = regression_loss(pred[mask], target.repeat_interleave(clones, 0)[mask])
        loss_utt = regression_loss(out.x[:, :num_extra].mean(1), utt_target.repeat_interleave(clones, 0))
        loss = loss_frm + cfg.lambda_utt * loss_utt
        logs = {"loss_frm": loss_frm.detach(), "loss_utt": loss_utt.detach(),
                "masked": mask.sum() / valid.sum(), "labelled": (labels >= 0).float().mean()}
        if cfg.lambda_cate:
            labels = labels.repeat_interleave(clones)
            if cfg.cate_standardize:
                pooled, labels = standardize(pooled[labels >= 0]), labels[labels >= 0]
            loss_cate = supcon_loss(pooled, labels, cfg.temperature)
            loss = loss + cfg.lambda_cate * loss_cate
            logs["loss_cate"] = loss_cate.detach()
        return loss, logs
