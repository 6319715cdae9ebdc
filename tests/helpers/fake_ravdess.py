"""A small fake copy of RAVDESS' speech zip (shared/corpora.md §6), nested as EmoBox keeps it
(``downloads/ravdess/audio/Audio_Speech_Actors_01-24/Actor_NN/03-01-EE-II-SS-RR-NN.wav``, 48 kHz), with a
macOS junk file.

``files``: ``Actor_NN/<file name without .wav>`` of each wav to write.
"""
from __future__ import annotations

from pathlib import Path

from helpers.tones import tone

FILES = ["Actor_01/03-01-01-01-01-01-01", "Actor_01/03-01-02-02-02-01-01", "Actor_02/03-01-08-01-01-02-02",
         "Actor_02/03-02-03-01-01-01-02"]  # the last is a song
NESTED = Path("ravdess") / "audio" / "Audio_Speech_Actors_01-24"


def build(root: Path, files=FILES, seconds: float = 0.1) -> Path:
    """``root/downloads/ravdess/audio/Audio_Speech_Actors_01-24/``; ``root/downloads`` is returned."""
    base = root / "downloads" / NESTED
    for k, name in enumerate(files):
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        tone(base / f"{name}.wav", k, seconds, sr=48000)  # RAVDESS is 48 kHz
    first = Path(files[0])
    (base / first.parent / f"._{first.name}.wav").write_bytes(b"junk")
    return root / "downloads"
