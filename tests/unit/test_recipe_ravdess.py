"""egs/ravdess stages 0-1 on a fake RAVDESS of 24 actors: EmoBox's actor folds, calm kept as a class."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from local.data.audio import write_wav
from local.data.kaldi import DataDir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def corpus(tmp_path):
    base = tmp_path / "Audio_Speech_Actors_01-24"
    t = np.arange(24000) / 48000
    for actor in range(1, 25):
        folder = base / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for emotion in ("01", "02", "05"):  # neutral, calm, angry
            tone = 0.3 * np.sin(2 * np.pi * (100 + 4 * actor + 20 * int(emotion)) * t).astype(np.float32)
            write_wav(folder / f"03-01-{emotion}-01-01-01-{actor:02d}.wav", tone, 48000)
    return base


def run(tmp_path: Path, module: str, *overrides: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, "corpus=ravdess", f"data_root={tmp_path / 'data'}",
                           f"dump_root={tmp_path / 'dump'}", "nj=1", *overrides],
                          cwd=ROOT / "egs" / "ravdess", env=env, capture_output=True, text=True, timeout=600)


def test_fold_1_sets_and_the_8_class_set(corpus, tmp_path):
    env = dict(os.environ, RAVDESS=str(corpus), EMOREASON_RECIPE="ravdess")
    for module in ("local.bin.prepare", "local.bin.format"):
        out = run(tmp_path, module, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
    sets = {name: DataDir.load(tmp_path / "data" / name) for name in ("train", "dev", "test")}
    assert set(sets["test"]["utt2spk"].values()) == {"Actor_01", "Actor_11", "Actor_20", "Actor_21"}
    assert set(sets["dev"]["utt2spk"].values()) == {"Actor_04", "Actor_10", "Actor_12", "Actor_14"}
    assert len(set(sets["train"]["utt2spk"].values())) == 16 and len(sets["train"]) == 48
    assert set(sets["test"]["utt2emo"].values()) == {"neutral", "calm", "anger"}  # calm is not merged
    assert not any(d.rejected for d in sets.values())
