"""A small fake copy of the C2SER repository's ``Emo-Emilia/`` folder (shared/corpora.md §9):
``Emo-Emilia-ALL.jsonl`` (UTF-8, non-ASCII kept, English texts that start with a space) and ``wav/``.

``items``: [(index, emotion, text)].
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from local.data.audio import write_wav

ITEMS = [("ZH_B00090_S00350_W000000", "angry", "那就没什么好说的了。"),
         ("EN_B00012_S04567_W000003", "surprised", " Wait, you did what?"),
         ("EN_B00012_S04567_W000004", "disgusted", "That is gross.")]


def tone(path: Path, k: int, seconds: float, sr: int = 16000) -> None:
    """A sine of ``seconds``: a pitch stage 2 can measure, ``k`` varies it."""
    t = np.arange(int(seconds * sr)) / sr
    write_wav(path, (0.3 * np.sin(2 * np.pi * (110 + 17 * (k % 20)) * t)).astype(np.float32), sr)


def build(root: Path, items=ITEMS, seconds: float = 0.1) -> Path:
    """``C2SER/Emo-Emilia/`` under ``root``; the repository folder is returned."""
    repo = root / "C2SER"
    (repo / "Emo-Emilia" / "wav").mkdir(parents=True)
    lines = []
    for k, (index, emotion, text) in enumerate(items):
        tone(repo / "Emo-Emilia" / "wav" / f"{index}.wav", k, seconds)
        lines.append(json.dumps({"index": index, "emotion": emotion, "wav": f"./Emo-Emilia/wav/{index}.wav",
                                 "text": text}, ensure_ascii=False))
    (repo / "Emo-Emilia" / "Emo-Emilia-ALL.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return repo
