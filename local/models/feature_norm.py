"""Mean/variance normalisation of encoder outputs: global (training-set) or per speaker.

ESPnet normalises its input features with statistics collected over the training set
(``global_mvn``); Kaldi normalises them per speaker (``compute-cmvn-stats --spk2utt``,
``apply-cmvn --utt2spk``).  This does either to the frames the encoders hand to the connectors.

Global.  A frozen encoder can put what matters in small deviations around a large offset shared
by all utterances: the tiny random Whisper of mini_lime has per-dimension standard deviations from
0.04 to 1.1 after its final LayerNorm.  Gradient descent on such inputs is ill-conditioned, and
standardised they train faster (egs/mini_lime/RESULTS.md measures it).  The statistics are computed once, from the encoders' outputs on the
training set at the start of stage 6 (:meth:`FeatureNorm.fit`), and saved with the model.

Per speaker.  Emotion is a departure from the speaker's own way of speaking: a high voice is
not an excited one.  With each speaker's outputs standardised by that speaker's statistics, what
is left is how an utterance differs from the speaker's others (the stage-2 attribute bins, by
contrast, are corpus-wide: this normalisation removes the register they measure).  On mini_lime's
unseen speakers it matters (egs/mini_lime/RESULTS.md).  The statistics belong to the data, not the model: a stage
takes them from every utterance of each speaker in the sets it reads (:meth:`FeatureNorm.fit_speakers`,
keyed by ``utt2spk``), before it trains or decodes; they are not saved.  An utterance whose speaker
has fewer than :data:`MIN_SPEAKER_UTTS` utterances there (a data dir without ``utt2spk`` has one
per "speaker") falls back to the global statistics: what a handful of utterances share is as much
their emotion as their speaker.  The method assumes each speaker's utterances span several
emotions, as in an emotional corpus; on one speaker who is angry throughout, anger is the norm.

Until fitted the module passes frames through unchanged.
"""
from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from local.models.frames import length_mask, zero_padding

log = logging.getLogger(__name__)

MIN_STD = 1e-5          # a dimension that never moves is centred, not blown up
MIN_SPEAKER_UTTS = 5    # fewer utterances of a speaker: the global statistics are used for them
MODES = ("global", "speaker")

Features = Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (frames [B, T, D], lengths [B])


def _moments(frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[3, D] float64: the number of valid frames, their sum and their sum of squares."""
    valid = frames[length_mask(lengths.to(frames.device), frames.shape[1])].double().cpu()
    return torch.stack([torch.full((frames.shape[-1],), float(len(valid)), dtype=torch.float64),
                        valid.sum(0), (valid ** 2).sum(0)])


def _mean_std(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    count, total, squares = moments
    mean = total / count
    return mean.float(), (squares / count - mean ** 2).clamp_min(0).sqrt().clamp_min(MIN_STD).float()


class FeatureNorm(nn.Module):
    """Per-dimension mean and standard deviation of each named encoder output (buffers), and in
    ``speaker`` mode a table of each speaker's (not saved)."""

    def __init__(self, dims: Mapping[str, int], mode: str = "global"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"feature normalisation mode must be one of {MODES}, got '{mode}'")
        self.names, self.mode = list(dims), mode
        for name, dim in dims.items():
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))
        self.speakers: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._warned = False  # one warning per table about speakers without statistics

    def forward(self, name: str, frames: torch.Tensor, lengths: torch.Tensor,
                speakers: Sequence[str | None] | None = None) -> torch.Tensor:
        if name not in self.names or not bool(self.fitted):
            return frames
        mean, std = getattr(self, f"{name}_mean"), getattr(self, f"{name}_std")
        if self.mode == "speaker" and speakers is not None:
            rows = [self._speaker_stats(s, name, mean, std) for s in speakers]
            mean, std = (torch.stack([r[i] for r in rows])[:, None] for i in (0, 1))
        return zero_padding((frames - mean.to(frames)) / std.to(frames), lengths)

    def _speaker_stats(self, speaker: str | None, name: str, mean: torch.Tensor, std: torch.Tensor):
        stats = self.speakers.get(speaker) if speaker is not None else None
        if stats is None:
            if not self._warned:
                self._warned = True
                log.warning("feature normalisation: no statistics of speaker %r (fewer than %d utterances, or "
                            "not fitted): the global statistics are used for it (and any other such speaker, "
                            "not logged)", speaker, MIN_SPEAKER_UTTS)
            return mean, std
        return stats[name][0].to(mean.device), stats[name][1].to(mean.device)

    @torch.no_grad()
    def fit(self, batches: Iterable[Features]) -> None:
        """Global statistics over every valid frame of ``batches`` (summed over DDP ranks when there are several)."""
        sums = {n: torch.zeros(3, getattr(self, f"{n}_mean").numel(), dtype=torch.float64) for n in self.names}
        for feats in batches:
            for name in self.names:
                if name in feats:
                    sums[name] += _moments(*feats[name])
        for name, s in sums.items():
            if dist.is_available() and dist.is_initialized():
                shared = s.cuda() if dist.get_backend() == "nccl" else s
                dist.all_reduce(shared)
                s = shared.cpu()
            if not s[0].any():
                raise ValueError(f"feature normalisation: no '{name}' frames to take statistics from")
            mean, std = _mean_std(s)
            getattr(self, f"{name}_mean").copy_(mean)
            getattr(self, f"{name}_std").copy_(std)
        self.fitted.fill_(True)

    @torch.no_grad()
    def fit_speakers(self, batches: Iterable[tuple[Features, Sequence[str]]]) -> None:
        """Each speaker's statistics over ``batches`` of (features, speaker per row): the new table (a
        speaker's utterances in every set a stage reads make its statistics)."""
        sums: dict[str, dict[str, torch.Tensor]] = {}
        utts: dict[str, int] = {}
        for feats, speakers in batches:
            if speakers is None:
                raise ValueError("per-speaker normalisation: a batch does not say its utterances' speakers "
                                 "(meta 'spk', from utt2spk)")
            for i, spk in enumerate(speakers):
                utts[spk] = utts.get(spk, 0) + 1
                acc = sums.setdefault(spk, {})
                for name in self.names:
                    frames, lengths = feats[name]
                    m = _moments(frames[i:i + 1], lengths[i:i + 1])
                    acc[name] = acc[name] + m if name in acc else m
        kept = [s for s, n in utts.items() if n >= MIN_SPEAKER_UTTS]
        self.speakers = {spk: {name: _mean_std(m) for name, m in sums[spk].items()} for spk in kept}
        self._warned = False
        log.info("feature normalisation: statistics of %d speakers (%d with fewer than %d utterances use the "
                 "global ones)", len(kept), len(utts) - len(kept), MIN_SPEAKER_UTTS)
