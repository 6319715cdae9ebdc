"""A small fake copy of RAVDESS' speech zip (shared/corpora.md §6), nested as EmoBox keeps it
(``downloads/ravdess/audio/Audio_Speech_Actors_01-24/Actor_NN/03-01-EE-II-SS-RR-NN.wav``, 48 kHz), with a
macOS junk file.

``files``: ``Actor_NN/<file name without .wav>`` of each wav to write.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from local.data.audio import write_wav

FILES = ["Actor_01/03-01-01-01-01-01-01", "Actor_01/03-01-02-02-02-01-01", "Actor_02/03-01-08-01-01-02-02",
         "Actor_02/03-02-03-01-01-01-02"]  # the last is a song
NESTED = Path("ravdess") / "audio" / "Audio_Speech_Actors_01-24"


def tone(path: Path, k: int, seconds: float, sr: int = 48000) -> None:
    """A sine of ``seconds``: a pitch stage 2 can measure, ``k`` varies it."""
    t = np.arange(int(seconds * sr)) / sr
    write_wav(path, (0.3 * np.sin(2 * np.pi * (110 + 17 * (k % 20)) * t)).astype(np.float32), sr)


def build(root: Path, files=FILES, seconds: float = 0.1) -> Path:
    """``root/downloads/ravdess/audio/Audio_Speech_Actors_01-24/``; ``root/downloads`` is returned."""
    base = root / "downloads" / NESTED
    for k, name in enumerate(files):
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        tone(base / f"{name}.wav", k, seconds)
    first = Path(files[0])
    (base / first.parent / f"._{first.name}.wav").write_bytes(b"junk")
    return root / "downloads"
