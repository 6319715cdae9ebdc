"""Pitch features of the audio LLM (local.data.pitch): F0, periodicity and energy per encoder frame."""
from __future__ import annotations

import math

import numpy as np
import torch

from local.data.pitch import PITCH_FEATURES, interpolate, pitch_features

SR, HOP = 16000, 320  # Whisper's encoder frames: 50 Hz


def harmonic(f0: float, seconds: float, amplitude: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    wav = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 6))
    return (amplitude * wav / wav.abs().max()).float()


def frames_of(n_samples: int) -> int:
    return -(-n_samples // HOP)


def test_f0_periodicity_and_shape_of_a_tone():
    wav = harmonic(150.0, 1.0)
    feats = pitch_features(wav[None], torch.tensor([len(wav)]), SR, HOP, 60)
    assert feats.shape == (1, 60, len(PITCH_FEATURES))
    inside = feats[0, 2:48]  # the tone lasts 50 frames
    assert torch.allclose(inside[:, 0].exp(), torch.tensor(150.0), rtol=0.02)
    assert inside[:, 1].min() > 0.8
    assert feats[0, 50:].abs().max() == 0  # past the utterance: zero


def test_an_utterance_gets_the_same_features_alone_and_in_a_batch():
    short, long = harmonic(120.0, 0.5), harmonic(200.0, 1.2)
    batch = torch.zeros(2, len(long))
    batch[0, :len(short)], batch[1] = short, long
    batch[0, len(short):] = 0.5 * torch.randn(len(long) - len(short))  # junk in the padding is ignored
    lengths = torch.tensor([len(short), len(long)])
    together = pitch_features(batch, lengths, SR, HOP, frames_of(len(long)))
    alone = pitch_features(short[None], lengths[:1], SR, HOP, frames_of(len(short)))
    torch.testing.assert_close(together[0, :alone.shape[1]], alone[0], atol=1e-5, rtol=1e-5)
    assert together[0, alone.shape[1]:].abs().max() == 0


def test_unvoiced_gaps_are_interpolated_in_log_f0_and_noise_gets_the_floor():
    gap = torch.zeros(int(0.4 * SR))
    wav = torch.cat([harmonic(120.0, 0.4), gap, harmonic(240.0, 0.4)])
    log_f0 = pitch_features(wav[None], torch.tensor([len(wav)]), SR, HOP, frames_of(len(wav)))[0, :, 0]
    middle = log_f0[24:36]  # inside the silent gap
    assert (middle > math.log(120) - 0.02).all() and (middle < math.log(240) + 0.02).all()
    assert (middle.diff() >= -1e-6).all() and middle[-1] - middle[0] > 0.3  # a glide, not a step
    noise = 0.1 * torch.from_numpy(np.random.default_rng(0).standard_normal(SR).astype(np.float32))
    floor = pitch_features(noise[None], torch.tensor([SR]), SR, HOP, 50, f0_min=50.0)[0, :, 0]
    assert torch.allclose(floor, torch.tensor(math.log(50.0)))


def test_log_energy_follows_the_amplitude():
    wav = harmonic(150.0, 0.5, amplitude=0.1)
    quiet, loud = (pitch_features(w[None], torch.tensor([len(wav)]), SR, HOP, 25) for w in (wav, 2 * wav))
    torch.testing.assert_close(loud[0, 2:22, 2] - quiet[0, 2:22, 2], torch.full((20,), math.log(4.0)),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(loud[0, :, :2], quiet[0, :, :2], atol=1e-4, rtol=0)  # pitch ignores the gain


def test_interpolate_fills_between_known_points_and_holds_the_ends():
    values = torch.tensor([9.0, 1.0, 9.0, 9.0, 4.0, 9.0])
    known = torch.tensor([False, True, False, False, True, False])
    torch.testing.assert_close(interpolate(values, known, -1.0), torch.tensor([1.0, 1.0, 2.0, 3.0, 4.0, 4.0]))
    torch.testing.assert_close(interpolate(values, torch.zeros(6, dtype=torch.bool), -1.0), torch.full((6,), -1.0))
