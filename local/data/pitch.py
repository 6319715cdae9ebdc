"""YIN pitch tracking in torch, for stage 2's attributes and the audio LLM's pitch features.

One implementation serves both: stage 2 tracks one file at a time in float64
(:class:`local.data.attributes.YinTracker`), the audio LLM tracks a whole batch
in float32 on the encoder's device (:func:`pitch_features`).

Why an audio LLM needs pitch features at all: Whisper's log-mel has 40 Hz
FFT bins and 80 mel bands, too coarse to resolve a voice's F0 (100-250 Hz,
the first few bins); on mini_lime a classifier on each speaker's normalised
mean F0, loudness and rate separates the emotions far better than one on
Whisper's frames.  Kaldi appends pitch features to its MFCCs for the same
reason (``make_mfcc_pitch.sh``); :func:`pitch_features` gives the audio LLM
the same three kinds of number per frame.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: what :func:`pitch_features` returns per frame
PITCH_FEATURES = ("log_f0", "periodicity", "log_energy")


def yin(frames: torch.Tensor, win: int, tau_min: int, tau_max: int, sr: int, threshold: float
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """YIN (de Cheveigné & Kawahara, 2002) on frames [N, >= win + tau_max + 1], vectorised with FFTs.

    Returns (F0 in Hz, periodic?, min of the cumulative-mean-normalised difference over the lags), each [N].
    A frame is periodic when that difference has a trough below ``threshold``; the period is the first
    such trough (the fundamental, not a multiple of the period), refined by a parabola through its
    neighbours.  An all-zero frame has no periodicity at all.
    """
    n, n_lags = frames.shape[0], tau_max + 2
    nfft = 1 << int(math.ceil(math.log2(frames.shape[1] + win)))
    spec = torch.fft.rfft(frames, nfft)
    head = torch.fft.rfft(frames[:, :win], nfft)
    acf = torch.fft.irfft(spec * head.conj(), nfft)[:, :n_lags]  # acf[tau] = sum_{j<win} x[j] x[j+tau]
    cum = F.pad(torch.cumsum(frames ** 2, dim=1), (1, 0))
    energy = cum[:, win:win + n_lags] - cum[:, :n_lags]  # sum_{j<win} x[j+tau]^2
    diff = (energy[:, :1] + energy - 2 * acf).clamp(min=0.0)
    diff[:, 0] = 0.0
    running = torch.cumsum(diff[:, 1:], dim=1) / torch.arange(1, n_lags, dtype=frames.dtype, device=frames.device)
    cmnd = torch.cat([torch.ones_like(diff[:, :1]), diff[:, 1:] / running], dim=1)
    cmnd = torch.where(torch.isfinite(cmnd), cmnd, torch.ones_like(cmnd))

    lags = torch.arange(tau_min, tau_max + 1, device=frames.device)
    mid = cmnd[:, lags]
    trough = (mid <= cmnd[:, lags - 1]) & (mid < cmnd[:, lags + 1])
    below = trough & (mid < threshold)
    periodic = below.any(dim=1)
    tau = lags[below.to(torch.uint8).argmax(dim=1)]
    rows = torch.arange(n, device=frames.device)
    a, b, c = cmnd[rows, tau - 1], cmnd[rows, tau], cmnd[rows, tau + 1]
    denom = a - 2 * b + c
    shift = torch.where(denom > 0, 0.5 * (a - c) / denom.where(denom > 0, torch.ones_like(denom)),
                        torch.zeros_like(denom))
    period = tau.to(frames.dtype) + shift.clamp(-1, 1)
    return sr / period, periodic, mid.amin(dim=1)


def yin_lags(sr: int, f0_min: float, f0_max: float) -> tuple[int, int, int]:
    """(difference window, shortest lag, longest lag) in samples: the window is one period of ``f0_min``."""
    tau_min = max(2, int(sr / f0_max))
    tau_max = int(math.ceil(sr / f0_min))
    return tau_max, tau_min, tau_max


@torch.no_grad()
def pitch_features(wav: torch.Tensor, lengths: torch.Tensor, sr: int, hop: int, n_frames: int,
                   f0_min: float = 50.0, f0_max: float = 550.0, threshold: float = 0.2) -> torch.Tensor:
    """[B, samples] -> [B, n_frames, 3]: log F0, periodicity and log energy per frame, frame t centred on
    sample ``t * hop`` (Whisper's encoder frames: hop 320 at 16 kHz).

    * ``log_f0``: natural log of F0 in Hz, linearly interpolated through unvoiced frames and held at the
      ends (Kaldi interpolates too: a constant such as 0 in unvoiced frames would swamp the speaker's
      mean and variance); an utterance without a voiced frame gets log(f0_min);
    * ``periodicity``: 1 - the lowest normalised YIN difference, in [0, 1] (Kaldi's POV plays this part);
    * ``log_energy``: log mean square of the frame (floored at 1e-10).

    Frames past an utterance's length are zero.
    """
    win, tau_min, tau_max = yin_lags(sr, f0_min, f0_max)
    length = win + tau_max + 1
    lengths = lengths.to(wav.device)
    inside = torch.arange(wav.shape[1], device=wav.device)[None] < lengths[:, None]
    x = F.pad(wav.float() * inside, (length // 2, length + n_frames * hop))  # a batch's padding is silence
    frames = x.unfold(1, length, hop)[:, :n_frames]  # [B, n_frames, length]
    b = frames.shape[0]
    f0, periodic, aperiodicity = yin(frames.reshape(b * n_frames, length), win, tau_min, tau_max, sr, threshold)
    f0, periodic = f0.view(b, n_frames), periodic.view(b, n_frames)
    centre = frames[:, :, length // 2 - hop // 2: length // 2 + hop - hop // 2]
    log_energy = (centre ** 2).mean(dim=-1).clamp(min=1e-10).log()
    valid = torch.arange(n_frames, device=wav.device)[None] < torch.div(
        lengths + hop - 1, hop, rounding_mode="floor")[:, None]
    voiced = periodic & valid
    log_f0 = torch.stack([interpolate(f0[i].log(), voiced[i], math.log(f0_min)) for i in range(b)])
    feats = torch.stack([log_f0, 1.0 - aperiodicity.view(b, n_frames).clamp(0, 1), log_energy], dim=-1)
    return feats * valid[..., None]


def interpolate(values: torch.Tensor, known: torch.Tensor, default: float) -> torch.Tensor:
    """``values`` [T] with the positions not ``known`` filled linearly from their known neighbours (held
    constant past the first and last), or all ``default`` when nothing is known."""
    idx = known.nonzero().squeeze(1)
    if idx.numel() == 0:
        return torch.full_like(values, default)
    t = torch.arange(len(values), device=values.device)
    right = torch.searchsorted(idx, t).clamp(max=len(idx) - 1)
    left = (right - 1).clamp(min=0)
    left = torch.where(idx[right] <= t, right, left)  # exactly on a known position: itself
    x0, x1 = idx[left], idx[right]
    y0, y1 = values[x0], values[x1]
    w = torch.where(x1 > x0, (t - x0).to(values.dtype) / (x1 - x0).clamp(min=1).to(values.dtype),
                    torch.zeros_like(values))
    return y0 + w.clamp(0, 1) * (y1 - y0)
