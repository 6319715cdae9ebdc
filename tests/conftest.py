"""Shared fixtures: tiny data dirs written the way stage 0 would write them."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from local.data.audio import write_wav
from local.data.kaldi import DataDir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def make_data_dir(root: Path, n_spk: int = 2, n_utt: int = 3, sr: int = 16000,
                  labels=("anger", "sadness", "neutral")) -> Path:
    """A valid data dir of short tones: n_spk speakers × n_utt utterances."""
    data = DataDir({name: {} for name in ("wav.scp", "utt2spk", "text", "utt2emo", "utt2dist", "utt2lang")})
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for s in range(n_spk):
        for u in range(n_utt):
            spk, utt = f"spk{s}", f"spk{s}-utt{u}"
            t = np.arange(int(sr * (0.5 + 0.1 * u))) / sr
            wav = 0.3 * np.sin(2 * np.pi * (120 + 40 * u) * t) + 0.01 * rng.standard_normal(len(t))
            path = root / "wav" / f"{utt}.wav"
            write_wav(path, wav.astype(np.float32), sr)
            label = labels[u % len(labels)]
            data["wav.scp"][utt] = str(path)
            data["utt2spk"][utt] = spk
            data["text"][utt] = f"sentence number {u}"
            data["utt2emo"][utt] = label
            data["utt2dist"][utt] = f"{label}:1.0000"
            data["utt2lang"][utt] = "en"
    data.save(root / "data")
    return root / "data"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return make_data_dir(tmp_path)
