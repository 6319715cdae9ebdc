"""Whisper's encoder as the semantic front end of an audio LLM (C²SER, AudioLLM-Reasoning).

Whisper was trained on 30 s windows: every input is zero-padded to 30 s (3000
log-mel frames, 1500 encoder frames) and the encoder attends over all of it,
padding included.  Two ways to run it, chosen by ``padding``:

``"30s"`` (faithful)
    exactly what Whisper saw in training; every utterance yields 1500 frames
    and all of them count as valid (Whisper's decoder reads all 1500, and so
    does the MERaLiON adapter, which cuts them into a fixed number of tokens).
``"batch"`` (fast)
    the batch is padded only to its longest utterance (plus the STFT window),
    the positional embeddings are truncated to that length, and attention skips
    the padded frames; an utterance's frames then depend on itself alone, so
    batching and the feature cache give the same result.  A 3 s utterance costs
    a tenth of the 30 s version.  Whisper never saw inputs this short in
    training; fine-tuning (or the connector) adapts to it.

The log-mel spectrogram is computed here in torch, batched and on the
encoder's device, and matches ``WhisperFeatureExtractor`` (tests compare them):
Hann window, n_fft 400, hop 160, the last STFT frame dropped, log10 clamped at
1e-10, floored at the utterance's max - 8, then (x + 4) / 4.  In ``"batch"``
mode the signal is followed by at least n_fft zeros, so the STFT's reflect
padding sees only zeros, as in the 30 s version, and every frame that touches
the signal is kept, so the per-utterance max is the same too.

Before the connector, frames can be downsampled ``downsample`` times by frame
concatenation (C²SER: x4, 50 Hz -> 12.5 Hz).  Concatenation rather than average
pooling: it is lossless and the connector's first linear layer can learn any
weighting of the 4 frames, average pooling included; MERaLiON's adapter
reduces the rate the same way.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from local.data.pitch import PITCH_FEATURES, pitch_features
from local.models.frames import length_mask, stack_frames, zero_padding

PADDING_MODES = ("30s", "batch")


class WhisperFrontend(nn.Module):
    """Waveforms -> Whisper encoder frames (:meth:`encode`) -> rate-reduced frames (:meth:`reduce`).

    :meth:`encode` is what a frozen-encoder cache stores (it has no
    configuration-dependent post-processing); :meth:`reduce` is parameter-free.
    """

    def __init__(self, encoder: WhisperEncoder, feature_extractor: WhisperFeatureExtractor,
                 padding: str = "batch", downsample: int = 4, pitch: bool = False):
        super().__init__()
        if padding not in PADDING_MODES:
            raise ValueError(f"whisper padding must be one of {PADDING_MODES}, got '{padding}'")
        if downsample < 1:
            raise ValueError(f"whisper downsample must be >= 1, got {downsample}")
        fe = feature_extractor
        if fe.feature_size != encoder.config.num_mel_bins:
            raise ValueError(f"feature extractor gives {fe.feature_size} mel bins, "
                             f"the encoder wants {encoder.config.num_mel_bins}")
        self.encoder = encoder
        self.padding = padding
        self.downsample = downsample
        self.pitch = pitch
        self.n_fft, self.hop, self.n_samples = fe.n_fft, fe.hop_length, fe.n_samples
        self.sampling_rate = fe.sampling_rate
        # [n_mels, n_freq]
        self.register_buffer("mel_filters", torch.tensor(fe.mel_filters.T, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    @classmethod
    def build(cls, name_or_path: str | None = None, config: dict | None = None, padding: str = "batch",
              downsample: int = 4, freeze: bool = True, dtype: str = "float32", init_seed: int = 0,
              pitch: bool = False, gradient_checkpointing: bool = False) -> "WhisperFrontend":
        """From a checkpoint (HF id or ``save_pretrained`` dir) or, with ``name_or_path`` None, a random
        encoder of the ``config`` architecture (seeded, so every stage builds the same one)."""
        torch_dtype = getattr(torch, dtype)
        if name_or_path:
            # WhisperModel strips the "model." prefix of WhisperForConditionalGeneration checkpoints;
            # WhisperEncoder.from_pretrained would silently miss the "encoder." one.
            encoder = WhisperModel.from_pretrained(name_or_path, dtype=torch_dtype).encoder
            fe = WhisperFeatureExtractor.from_pretrained(name_or_path)
        else:
            if not config:
                raise ValueError("whisper: give name_or_path (a checkpoint) or config (an architecture)")
            wc = WhisperConfig(**config)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                encoder = WhisperEncoder(wc).to(torch_dtype)
            fe = WhisperFeatureExtractor(feature_size=wc.num_mel_bins)
        if gradient_checkpointing and not freeze:  # a trained encoder keeps each layer's input only
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        frontend = cls(encoder, fe, padding=padding, downsample=downsample, pitch=pitch)
        frontend.requires_grad_(not freeze)
        return frontend

    @property
    def dim(self) -> int:
        """Width of :meth:`encode`'s frames."""
        return self.encoder.config.d_model + (len(PITCH_FEATURES) if self.pitch else 0)

    @property
    def out_dim(self) -> int:
        """Width of :meth:`reduce`'s frames."""
        return self.dim * self.downsample

    @property
    def frame_rate(self) -> float:
        """Frames per second after :meth:`reduce`."""
        return self.sampling_rate / self.hop / 2 / self.downsample

    def log_mel(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, samples] -> (log-mel [B, n_mels, M], valid mel frames [B]); utterances past 30 s are cut."""
        lengths = lengths.clamp(max=self.n_samples)
        wav = zero_padding(wav.float().unsqueeze(-1), lengths).squeeze(-1)
        if self.padding == "30s":
            n = self.n_samples
        else:
            frames = math.ceil((int(lengths.max()) + self.n_fft) / self.hop)
            n = min((frames + frames % 2) * self.hop, self.n_samples)  # even: conv2 halves it exactly
        wav = wav[:, :n] if wav.shape[1] >= n else F.pad(wav, (0, n - wav.shape[1]))
        # .float(): a model cast to bf16 casts these buffers too; the spectrogram stays float32.
        stft = torch.stft(wav, self.n_fft, self.hop, window=self.window.float(), return_complex=True)
        power = stft[..., :-1].abs() ** 2
        log_spec = torch.clamp(self.mel_filters.float() @ power, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
        mel_lengths = torch.div(lengths + self.hop - 1, self.hop, rounding_mode="floor")
        return log_spec, mel_lengths

    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, samples] at 16 kHz -> (encoder frames [B, T, :attr:`dim`] at 50 Hz, frame lengths [B]);
        with ``pitch``, each frame ends with the pitch features of its 20 ms (local.data.pitch)."""
        enc = self.encoder
        mel, mel_lengths = self.log_mel(wav, lengths)
        x = F.gelu(enc.conv1(mel.to(enc.conv1.weight.dtype)))
        x = F.gelu(enc.conv2(x)).transpose(1, 2)
        t = x.shape[1]
        x = x + enc.embed_positions.weight[:t]
        x = F.dropout(x, p=enc.dropout, training=self.training)
        if self.padding == "30s":
            frame_lengths = torch.full_like(lengths, t)
            mask = None
        else:
            frame_lengths = torch.div(mel_lengths + 1, 2, rounding_mode="floor")
            keep = length_mask(frame_lengths, t)[:, None, None, :]
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(
                ~keep, torch.finfo(x.dtype).min).expand(-1, 1, t, t)
        for layer in enc.layers:
            x = layer(x, mask, layer_head_mask=None)[0]
        x = enc.layer_norm(x)
        if self.pitch:
            lengths = lengths.clamp(max=self.n_samples)
            pitch = pitch_features(wav, lengths, self.sampling_rate, 2 * self.hop, t)
            x = torch.cat([x, pitch.to(x.dtype)], dim=-1)
        return zero_padding(x, frame_lengths), frame_lengths

    def reduce(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder frames -> frames at ``frame_rate`` (``downsample`` consecutive frames concatenated)."""
        return stack_frames(frames, lengths, self.downsample)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reduce(*self.encode(wav, lengths))
