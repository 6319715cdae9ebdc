"""A small fake copy of the C2SER repository's ``Emo-Emilia/`` folder (shared/corpora.md §9):
``Emo-Emilia-ALL.jsonl`` (UTF-8, non-ASCII kept, English texts that start with a space) and ``wav/``.

``items``: [(index, emotion, text)].
"""
from __future__ import annotations

import json
from pathlib import Path

from helpers.tones import tone

ITEMS = [("ZH_B00090_S00350_W000000", "angry", "那就没什么好说的了。"),
         ("EN_B00012_S04567_W000003", "surprised", " Wait, you did what?"),
         ("EN_B00012_S04567_W000004", "disgusted", "That is gross.")]


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
